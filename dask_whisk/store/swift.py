"""OpenStack Swift as the object store: one container per job, or a prefix in a shared container.

Client side (:class:`SwiftJobStore`) uses python-swiftclient, one Connection per thread (they are
not thread-safe), with bounded retries and re-authentication when a token expires. Objects above
the segment size are written as static large objects (SLO), which Swift reassembles on GET.

Activations get no credentials: the access descriptor holds signed TempURLs (one signature per
object and method, expiring with the job) or, when the account offers no TempURL key, the job's
current token. The activation side (:class:`SwiftWorkerStore`) needs only the standard library.
TempURLs cannot create SLO manifests (the tempurl middleware drops ``multipart-manifest`` and
refuses manifest headers), so an activation writes an output above the segment size as segments
under a per-object prefix (granted by a prefix-scoped TempURL) plus a small JSON manifest object
of content type :data:`MANIFEST_TYPE`; both sides' ``get`` follow either kind of manifest.
"""
from __future__ import annotations

import dataclasses
import http.client
import json
import os
import random
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from . import Buffer, JobStore, ObjectMissing, StoreError, WorkerStore, job_age_seconds

#: content type of a manifest an activation writes for an object stored as segments
MANIFEST_TYPE = "application/x-dask-whisk-segments"
#: all segments of object ``name`` live under ``<namespace>.segments/<name>/``
SEGMENTS_DIR = ".segments/"
#: Swift refuses single objects above 5 GiB
MAX_OBJECT_SIZE = 5 * 1024**3
#: HTTP statuses worth retrying: timeouts, rate limits and server-side trouble
RETRY_STATUSES = frozenset({408, 429, 498, 500, 502, 503, 504})
TEMPURL_MODES = ("auto", "account", "container", "off")
#: objects per bulk-delete request (Swift's default maximum is 10,000)
BULK_DELETE_BATCH = 1000

#: dask config key under ``whisk.swift`` -> (environment variables, in order, that may set it)
_SOURCES: dict[str, tuple[str, ...]] = {
    "auth-url": ("ST_AUTH", "OS_AUTH_URL"),
    "user": ("ST_USER", "OS_USERNAME"),
    "key": ("ST_KEY", "OS_PASSWORD"),
    "auth-version": ("ST_AUTH_VERSION", "OS_IDENTITY_API_VERSION"),
    "project-name": ("OS_PROJECT_NAME", "OS_TENANT_NAME"),
    "user-domain-name": ("OS_USER_DOMAIN_NAME",),
    "project-domain-name": ("OS_PROJECT_DOMAIN_NAME",),
    "region-name": ("OS_REGION_NAME",),
    "storage-url": ("OS_STORAGE_URL",),
    "token": ("OS_AUTH_TOKEN",),
    "container": (),
    "segment-size": (),
    "retries": (),
    "backoff": (),
    "timeout": (),
    "max-job-duration": (),
    "token-refresh": (),
    "tempurl": (),
}
_DEFAULTS: dict[str, Any] = {
    "segment-size": 1024**3,
    "retries": 5,
    "backoff": 0.5,
    "timeout": 60.0,
    "max-job-duration": 6 * 3600,
    "token-refresh": 900,
    "tempurl": "auto",
}


class SwiftConfigError(StoreError, ValueError):
    """The Swift settings are missing, inconsistent or rejected by the server."""


@dataclasses.dataclass(frozen=True)
class SwiftSettings:
    """Resolved Swift settings: where to authenticate, how, and how to lay out and move data."""

    auth_url: str | None = None
    user: str | None = None
    key: str | None = dataclasses.field(default=None, repr=False)
    auth_version: str = "1"
    os_options: dict[str, str] = dataclasses.field(default_factory=dict)
    storage_url: str | None = None
    token: str | None = dataclasses.field(default=None, repr=False)
    container: str | None = None
    segment_size: int = _DEFAULTS["segment-size"]
    retries: int = _DEFAULTS["retries"]
    backoff: float = _DEFAULTS["backoff"]
    timeout: float = _DEFAULTS["timeout"]
    max_job_duration: float = _DEFAULTS["max-job-duration"]
    #: seconds after which a job token is replaced before handing it to an activation
    token_refresh: float = _DEFAULTS["token-refresh"]
    tempurl: str = _DEFAULTS["tempurl"]

    def connection(self):
        """A new python-swiftclient Connection with these settings (one per thread)."""
        import swiftclient
        import swiftclient.client

        # swiftclient's request log shows the first 16 characters of tokens and keys by default
        swiftclient.client.logger_settings["reveal_sensitive_prefix"] = 0
        common = dict(retries=self.retries, starting_backoff=self.backoff,
                      max_backoff=max(self.backoff * 16, 1.0), timeout=self.timeout)
        if self.auth_url:
            return swiftclient.Connection(
                authurl=self.auth_url, user=self.user, key=self.key,
                auth_version=self.auth_version, os_options=dict(self.os_options),
                preauthurl=self.storage_url, **common,
            )
        return swiftclient.Connection(preauthurl=self.storage_url, preauthtoken=self.token, **common)


def resolve_settings(**options: Any) -> SwiftSettings:
    """Settings from keyword arguments, else dask config ``whisk.swift.*``, else the environment.

    Keyword arguments use underscores (``auth_url``) or the config spelling (``auth-url``).
    Raises :class:`SwiftConfigError` naming what to set; secrets are never echoed.
    """
    given = {name.replace("_", "-"): value for name, value in options.items() if value is not None}
    unknown = sorted(set(given) - set(_SOURCES))
    if unknown:
        raise SwiftConfigError(f"Unknown Swift option(s) {unknown}; valid: {sorted(_SOURCES)}")
    try:
        import dask.config

        configured = dask.config.get("whisk.swift", default=None) or {}
    except ImportError:
        configured = {}
    environ = {name: next((os.environ[e] for e in env_names if os.environ.get(e)), None)
               for name, env_names in _SOURCES.items()}
    layers = [given, configured, environ]
    raw: dict[str, Any] = {}
    for name in _SOURCES:
        value = next((layer[name] for layer in layers if layer.get(name) not in (None, "")), None)
        raw[name] = _DEFAULTS.get(name) if value is None else value
    # the first layer naming an endpoint decides how to authenticate: a token given as an
    # argument is not mixed with an auth URL from the environment, nor the other way round
    deciding = next((layer for layer in layers
                     if any(layer.get(k) for k in ("auth-url", "storage-url", "token"))), {})
    if deciding.get("auth-url"):
        if not (deciding.get("storage-url") or deciding.get("token")):
            raw["storage-url"] = raw["token"] = None
    elif deciding:
        raw["auth-url"] = None
    return _validate(raw)


def _validate(raw: dict[str, Any]) -> SwiftSettings:
    how = ("set ST_AUTH, ST_USER and ST_KEY (v1 auth); or OS_AUTH_URL, OS_USERNAME, OS_PASSWORD, "
           "OS_PROJECT_NAME, OS_USER_DOMAIN_NAME and OS_PROJECT_DOMAIN_NAME (Keystone v3); or "
           "OS_STORAGE_URL and OS_AUTH_TOKEN (pre-authenticated); or the same as dask config keys "
           "whisk.swift.auth-url, user, key, project-name, ..., storage-url, token")
    auth_url, storage_url, token = raw["auth-url"], raw["storage-url"], raw["token"]
    if not auth_url and not (storage_url and token):
        if storage_url or token:
            missing = "OS_AUTH_TOKEN (whisk.swift.token)" if storage_url else \
                "OS_STORAGE_URL (whisk.swift.storage-url)"
            raise SwiftConfigError(f"Swift is pre-authenticated only half-way: set {missing} too")
        raise SwiftConfigError(f"Swift is not configured: {how}")
    for name in ("auth-url", "storage-url"):
        url = raw[name]
        if url and urllib.parse.urlsplit(str(url)).scheme not in ("http", "https"):
            raise SwiftConfigError(f"whisk.swift.{name} must be an http(s) URL, got {_scrub(url)!r}")
    version = str(raw["auth-version"] or "")
    os_options: dict[str, str] = {}
    if auth_url:
        if not version:
            path = urllib.parse.urlsplit(auth_url).path.rstrip("/")
            version = "3" if path.endswith("/v3") or raw["project-name"] else "1"
        version = {"1.0": "1", "v1": "1", "3.0": "3", "v3": "3"}.get(version, version)
        if version not in ("1", "3"):
            raise SwiftConfigError(f"Unsupported Swift auth version {version!r}: use 1 or 3")
        user_var, key_var = ("ST_USER", "ST_KEY") if version == "1" else ("OS_USERNAME", "OS_PASSWORD")
        for name, var in (("user", user_var), ("key", key_var)):
            if not raw[name]:
                raise SwiftConfigError(f"Swift auth URL is set but no {name}: set {var} "
                                       f"(or dask config whisk.swift.{name})")
        if version == "3":
            if not raw["project-name"]:
                raise SwiftConfigError("Keystone v3 auth needs a project: set OS_PROJECT_NAME "
                                       "(or whisk.swift.project-name)")
            os_options = {
                "project_name": raw["project-name"],
                "user_domain_name": raw["user-domain-name"] or "Default",
                "project_domain_name": raw["project-domain-name"] or "Default",
            }
            if raw["region-name"]:
                os_options["region_name"] = raw["region-name"]
    try:
        segment_size = int(raw["segment-size"])
        retries = int(raw["retries"])
        backoff, timeout = float(raw["backoff"]), float(raw["timeout"])
        max_job = float(raw["max-job-duration"])
        token_refresh = float(raw["token-refresh"])
    except (TypeError, ValueError) as exc:
        raise SwiftConfigError(f"Invalid number in whisk.swift settings: {exc}") from None
    if not 0 < segment_size <= MAX_OBJECT_SIZE:
        raise SwiftConfigError(f"whisk.swift.segment-size must be between 1 byte and 5 GiB, "
                               f"got {segment_size}")
    if retries < 0 or backoff < 0 or timeout <= 0 or max_job <= 0 or token_refresh <= 0:
        raise SwiftConfigError("whisk.swift.retries and backoff must be >= 0, timeout, "
                               "max-job-duration and token-refresh > 0")
    if raw["tempurl"] not in TEMPURL_MODES:
        raise SwiftConfigError(f"whisk.swift.tempurl must be one of {TEMPURL_MODES}, "
                               f"got {raw['tempurl']!r}")
    container = raw["container"]
    if container is not None and (not container or "/" in container):
        raise SwiftConfigError(f"whisk.swift.container must be a container name without '/', "
                               f"got {container!r}")
    return SwiftSettings(
        auth_url=auth_url, user=raw["user"], key=raw["key"], auth_version=version or "1",
        os_options=os_options, storage_url=storage_url, token=token, container=container,
        segment_size=segment_size, retries=retries, backoff=backoff, timeout=timeout,
        max_job_duration=max_job, token_refresh=token_refresh, tempurl=raw["tempurl"],
    )


def _scrub(url: str) -> str:
    """A URL without query string or user info: signatures and tokens never reach a message."""
    parts = urllib.parse.urlsplit(str(url))
    host = parts.hostname or ""
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_name(name: str) -> str:
    """Validate an object name: non-empty, no '/', no leading '.' (reserved for segments)."""
    if not name or "/" in name or name.startswith(".") or len(name.encode()) > 512:
        raise ValueError(f"Invalid object name {name!r}: use 1-512 bytes, no '/', no leading '.'")
    return name


# --- byte views, shared by both sides ------------------------------------------------------------

def _byte_views(parts: Sequence[Buffer]) -> list[memoryview]:
    """Each part as a flat unsigned-byte view (so lengths are byte counts), copying nothing."""
    views = []
    for part in parts:
        view = memoryview(part)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if view.nbytes:
            views.append(view)
    return views


def _slice(views: list[memoryview], start: int, stop: int) -> Iterator[memoryview]:
    """The views covering bytes [start, stop) of their concatenation, as zero-copy slices."""
    offset = 0
    for view in views:
        end = offset + view.nbytes
        if end > start and offset < stop:
            yield view[max(start - offset, 0):min(stop, end) - offset]
        offset = end
        if offset >= stop:
            return


class _PartsReader:
    """A seekable file over a range of byte views: swiftclient streams it and rewinds on retry."""

    def __init__(self, views: list[memoryview], start: int, stop: int):
        self._views, self._start, self._stop = views, start, stop
        self._pos = start

    def read(self, size: int = -1) -> bytes:
        end = self._stop if size is None or size < 0 else min(self._stop, self._pos + size)
        chunk = b"".join(_slice(self._views, self._pos, end))
        self._pos = end
        return chunk

    def tell(self) -> int:
        return self._pos - self._start

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = self._start + offset if whence == 0 else self._pos + offset
        return self.tell()


# --- activation side: standard library only ------------------------------------------------------

class SwiftWorkerStore(WorkerStore):
    """An activation's reads and writes, over signed TempURLs or a job token, with retries."""

    def __init__(self, access: dict[str, Any]):
        self._access = access
        self._base = access["url"].rstrip("/") + "/"   # .../v1/AUTH_x/container/ (+ namespace)
        split = urllib.parse.urlsplit(self._base)
        self._scheme, self._netloc, self._base_path = split.scheme, split.netloc, split.path
        self._namespace = access.get("namespace", "")
        self._segment_size = int(access["segment_size"])
        self._retries = int(access.get("retries", 5))
        self._backoff = float(access.get("backoff", 0.5))
        self._timeout = float(access.get("timeout", 60))
        self._local = threading.local()

    # URLs and headers ---------------------------------------------------------------------------

    def _target(self, method: str, name: str, segment: str | None = None) -> tuple[str, dict]:
        """Request path (with signature query for TempURLs) and auth headers for one object."""
        if segment is None:
            path = self._base_path + urllib.parse.quote(name)
        else:
            path = self._container_path() + urllib.parse.quote(segment)
        if self._access["mode"] == "token":
            return path, {"X-Auth-Token": self._access["token"]}
        grants = self._access["get" if method == "GET" else "put"]
        key = name if segment is None else SEGMENTS_DIR + name
        sig = grants.get(key)
        if sig is None:
            verb = "read" if method == "GET" else "write"
            raise StoreError(f"This activation was not granted {verb} access to {name!r}")
        query = {"temp_url_sig": sig, "temp_url_expires": self._access["expires"]}
        if segment is not None:
            query["temp_url_prefix"] = self._segment_prefix(name)
        return f"{path}?{urllib.parse.urlencode(query)}", {}

    def _container_path(self) -> str:
        """Path of the container, ending in '/' (the namespace is part of object names)."""
        ns = urllib.parse.quote(self._namespace)
        return self._base_path[: len(self._base_path) - len(ns)] if ns else self._base_path

    def _segment_prefix(self, name: str) -> str:
        return f"{self._namespace}{SEGMENTS_DIR}{name}/"

    # HTTP -----------------------------------------------------------------------------------------

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            conn = self._local.conn = cls(self._netloc, timeout=self._timeout)
        return conn

    def _drop_conn(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _request(self, method: str, name: str, *, segment: str | None = None,
                 body: list[memoryview] | None = None, size: int = 0,
                 content_type: str = "application/octet-stream") -> tuple[int, dict, Any]:
        """One request with bounded retries; returns status, headers and the body (GET) or None."""
        path, headers = self._target(method, name, segment)
        what = f"{method} of {name!r}" if segment is None else f"{method} of a segment of {name!r}"
        delay = self._backoff
        for attempt in range(self._retries + 1):
            try:
                conn = self._conn()
                conn.putrequest(method, path, skip_accept_encoding=True)
                for header, value in headers.items():
                    conn.putheader(header, value)
                if method == "PUT":
                    conn.putheader("Content-Length", str(size))
                    conn.putheader("Content-Type", content_type)
                conn.endheaders()
                for view in body or ():
                    conn.send(view)
                resp = conn.getresponse()
                status = resp.status
                data = _read_body(resp) if method == "GET" and status == 200 else resp.read()
                if resp.will_close:
                    self._drop_conn()
            except (OSError, http.client.HTTPException) as exc:
                self._drop_conn()
                if attempt == self._retries:
                    raise StoreError(f"Swift {what} failed after {attempt + 1} attempts: "
                                     f"{type(exc).__name__}") from None
            else:
                if status not in RETRY_STATUSES:
                    return status, {k.lower(): v for k, v in resp.getheaders()}, data
                if attempt == self._retries:
                    raise StoreError(f"Swift {what} failed after {attempt + 1} attempts: "
                                     f"HTTP {status}")
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")

    def _check(self, status: int, name: str, method: str) -> None:
        if status == 404 and method == "GET":
            raise ObjectMissing(f"Object {name!r} is not in the job's Swift namespace")
        if status == 401:
            why = ("the signed URL expired or its signature is invalid"
                   if self._access["mode"] == "tempurl" else "the job token expired or was revoked")
            raise StoreError(f"Swift refused {method} of {name!r}: {why}")
        if status >= 300:
            raise StoreError(f"Swift {method} of {name!r} failed: HTTP {status}")

    # the interface --------------------------------------------------------------------------------

    def get(self, name: str) -> Buffer:
        status, headers, data = self._request("GET", check_name(name))
        self._check(status, name, "GET")
        if headers.get("content-type", "").split(";")[0] != MANIFEST_TYPE:
            return data
        segments = _parse_manifest(data, self._segment_prefix(name), name)
        out = bytearray(sum(size for _, size in segments))
        offset = 0
        for segment, size in segments:
            status, _, chunk = self._request("GET", name, segment=segment)
            self._check(status, name, "GET")
            if len(chunk) != size:
                raise StoreError(f"A segment of {name!r} has {len(chunk)} bytes, expected {size}")
            out[offset:offset + size] = chunk
            offset += size
        return out

    def put(self, name: str, parts: Sequence[Buffer]) -> int:
        views = _byte_views(parts)
        total = sum(v.nbytes for v in views)
        check_name(name)
        if total <= self._segment_size:
            status, _, _ = self._request("PUT", name, body=views, size=total)
            self._check(status, name, "PUT")
            return total
        prefix = self._segment_prefix(name) + secrets.token_hex(6) + "/"
        segments = []
        for index, start in enumerate(range(0, total, self._segment_size)):
            stop = min(start + self._segment_size, total)
            segment = f"{prefix}{index:08d}"
            status, _, _ = self._request("PUT", name, segment=segment,
                                         body=list(_slice(views, start, stop)), size=stop - start)
            self._check(status, name, "PUT")
            segments.append([segment, stop - start])
        manifest = json.dumps({"version": 1, "segments": segments}).encode()
        status, _, _ = self._request("PUT", name, body=[memoryview(manifest)], size=len(manifest),
                                     content_type=MANIFEST_TYPE)
        self._check(status, name, "PUT")
        return total


def _read_body(resp: http.client.HTTPResponse) -> Buffer:
    """The whole response body, read straight into one buffer when its length is known."""
    length = resp.getheader("Content-Length")
    if length is None:
        return resp.read()
    out = bytearray(int(length))
    view, got = memoryview(out), 0
    while got < len(out):
        n = resp.readinto(view[got:])
        if not n:
            raise http.client.IncompleteRead(bytes(view[:got]), len(out) - got)
        got += n
    return out


def _parse_manifest(data: Buffer, prefix: str, name: str) -> list[tuple[str, int]]:
    """Segments (object name in container, size) of an activation-written manifest."""
    try:
        manifest = json.loads(bytes(data))
        segments = [(str(s), int(n)) for s, n in manifest["segments"]]
    except (ValueError, KeyError, TypeError):
        raise StoreError(f"Object {name!r} has a malformed segment manifest") from None
    if any(not s.startswith(prefix) for s, _ in segments):
        raise StoreError(f"Object {name!r} has a manifest pointing outside its segment prefix")
    return segments


def open_worker_store(access: dict[str, Any]) -> SwiftWorkerStore:
    """Open the activation side from the descriptor made by :meth:`SwiftJobStore.worker_access`."""
    if access.get("mode") not in ("tempurl", "token"):
        raise StoreError("Malformed Swift access descriptor: mode must be 'tempurl' or 'token'")
    return SwiftWorkerStore(access)


# --- client side ---------------------------------------------------------------------------------

class SwiftJobStore(JobStore):
    """The client's handle on a job's Swift namespace (a container, or a prefix in one)."""

    def __init__(self, job_id: str, settings: SwiftSettings, create: bool = True):
        """Authenticate; with ``create``, also make the job's container and choose worker access."""
        self.job_id = job_id
        self.settings = settings
        self.own_container = settings.container is None
        self.container = job_id if self.own_container else settings.container
        self.namespace = "" if self.own_container else f"{job_id}/"
        age = job_age_seconds(job_id)
        self.started = time.time() - (age if age is not None and age >= 0 else 0.0)
        self._local = threading.local()
        self._conns: list[Any] = []
        self._lock = threading.Lock()
        self._segmented: set[str] = set()
        #: when each job token was first seen (monotonic), to replace old ones in time
        self._token_born: dict[str, float] = {}
        conn = self._connect_checked()
        self.storage_url = conn.url
        self._capabilities = self._call("GET /info", "", conn.get_capabilities)
        self._tempurl_key: str | None = None
        self._digest = self._choose_digest()
        if create:
            if self.own_container:
                self._call("PUT container", "", conn.put_container, self.container)
            self._tempurl_key = self._choose_tempurl_key(conn)

    # connections and errors -----------------------------------------------------------------------

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.settings.connection()
            with self._lock:
                self._conns.append(conn)
        return conn

    def _connect_checked(self):
        """Authenticate now, so bad settings fail before any activation, with a clear message."""
        from swiftclient import ClientException

        conn = self._conn()
        where = _scrub(self.settings.auth_url or self.settings.storage_url or "")
        try:
            conn.head_account()  # authenticates first; transient failures are retried
        except ClientException as exc:
            status = exc.http_status
            if status in (401, 403):
                what = (f"the credentials of user {self.settings.user!r}" if self.settings.auth_url
                        else "the token in OS_AUTH_TOKEN (whisk.swift.token)")
                raise SwiftConfigError(f"Swift at {where} rejected {what} (HTTP {status}): check "
                                       "the Swift settings") from None
            text = str(exc)
            if "keystoneclient" in text:
                raise SwiftConfigError("Keystone v3 auth needs python-keystoneclient: pip install "
                                       "python-keystoneclient, or use v1 auth") from None
            # Keystone failures come without a status; map them to fixed texts (never echo them)
            if status is None and text.startswith("Unauthorized"):
                raise SwiftConfigError(
                    f"Keystone at {where} rejected the credentials of user "
                    f"{self.settings.user!r}: check OS_USERNAME, OS_PASSWORD, OS_PROJECT_NAME "
                    "and the domain names") from None
            if status is None and text.startswith("Endpoint for"):
                raise SwiftConfigError(
                    f"Keystone at {where} lists no object-store endpoint for this project: set "
                    "OS_REGION_NAME, or check the project's catalog") from None
            if status is None and "Unable to establish connection" in text:
                raise SwiftConfigError(f"Cannot reach Keystone at {where}: is it running, and "
                                       "is OS_AUTH_URL right?") from None
            raise SwiftConfigError(f"Swift at {where} failed to authenticate: "
                                   f"{status or 'no HTTP status'}") from None
        except Exception as exc:  # connection refused, DNS, TLS: nothing secret in the type
            raise SwiftConfigError(f"Cannot reach Swift at {where} ({type(exc).__name__}): is it "
                                   "running, and is the URL right?") from None
        return conn

    def _call(self, what: str, name: str, fn, *args, **kwargs):
        """Run a swiftclient call (which retries itself) and turn failures into StoreErrors."""
        from swiftclient import ClientException

        try:
            return fn(*args, **kwargs)
        except ClientException as exc:
            if exc.http_status == 404 and what.startswith(("GET object", "HEAD object")):
                raise ObjectMissing(f"Object {name!r} is not in Swift job namespace "
                                    f"{self.job_id}") from None
            if exc.http_status == 401 and not self.settings.auth_url:
                raise StoreError(f"Swift refused {what} {name!r}: the token in OS_AUTH_TOKEN "
                                 "(whisk.swift.token) expired or was revoked, and without "
                                 "credentials it cannot be renewed; set a fresh token, or "
                                 "ST_AUTH/OS_AUTH_URL and credentials") from None
            raise StoreError(f"Swift {what} {name!r} failed: HTTP {exc.http_status} "
                             f"{exc.http_reason or ''}".rstrip()) from None
        except (OSError, ConnectionError) as exc:
            raise StoreError(f"Swift {what} {name!r} failed: {type(exc).__name__}") from None
        except Exception as exc:
            if type(exc).__module__.startswith(("requests", "urllib3")):
                raise StoreError(f"Swift {what} {name!r} failed: {type(exc).__name__}") from None
            raise

    def _object(self, name: str) -> str:
        return self.namespace + check_name(name)

    def _segments(self, name: str) -> str:
        """The prefix under which the segments of object ``name`` are stored."""
        return f"{self.namespace}{SEGMENTS_DIR}{name}/"

    # TempURLs -------------------------------------------------------------------------------------

    def _choose_tempurl_key(self, conn) -> str | None:
        """The key that signs worker URLs, or None to grant the job token instead."""
        mode = self.settings.tempurl
        if mode == "off":
            return None
        if "tempurl" not in self._capabilities:
            if mode == "auto":
                return None
            raise SwiftConfigError("This Swift has no tempurl middleware: set whisk.swift.tempurl "
                                   "to 'off' (workers then get the job token)")
        if mode in ("auto", "account"):
            account = self._call("HEAD account", "", conn.head_account)
            key = account.get("x-account-meta-temp-url-key") or \
                account.get("x-account-meta-temp-url-key-2")
            if key or mode == "account":
                if not key:
                    raise SwiftConfigError("The Swift account has no TempURL key: set "
                                           "X-Account-Meta-Temp-URL-Key, or whisk.swift.tempurl "
                                           "to 'container' or 'off'")
                return key
            if not self.own_container:
                return None
        container = self._call("HEAD container", self.container, conn.head_container,
                               self.container)
        key = container.get("x-container-meta-temp-url-key")
        if not key:
            key = secrets.token_urlsafe(32)
            self._call("POST container", self.container, conn.post_container, self.container,
                       {"X-Container-Meta-Temp-URL-Key": key})
        return key

    def _choose_digest(self) -> str:
        allowed = self._capabilities.get("tempurl", {}).get("allowed_digests", ["sha1"])
        return next((d for d in ("sha256", "sha512", "sha1") if d in allowed), "sha256")

    def _fresh_token(self) -> str:
        """A token that works now and is at most ``token-refresh`` seconds old (if renewable).

        A HEAD renews an expired token (swiftclient re-authenticates on 401); an old one is
        replaced, so an activation is never handed a token about to expire under it.
        """
        conn = self._conn()
        self._call("HEAD account", "", conn.head_account)
        now = time.monotonic()
        with self._lock:
            born = self._token_born.setdefault(conn.token, now)
        if self.settings.auth_url and now - born > self.settings.token_refresh:
            conn.url = conn.token = None
            self._call("HEAD account", "", conn.head_account)
            with self._lock:
                self._token_born[conn.token] = time.monotonic()
        return conn.token

    def _expires(self) -> int:
        expires = int(self.started + self.settings.max_job_duration)
        if expires <= time.time():
            raise StoreError(f"Job {self.job_id} has run longer than whisk.swift.max-job-duration "
                             f"({self.settings.max_job_duration:.0f} s): raise it")
        return expires

    def _sign(self, method: str, obj: str, expires: int, prefix: bool = False) -> str:
        from swiftclient.utils import generate_temp_url

        account_path = urllib.parse.urlsplit(self.storage_url).path.rstrip("/")
        url = generate_temp_url(f"{account_path}/{self.container}/{obj}", expires,
                                self._tempurl_key, method, absolute=True, prefix=prefix,
                                digest=self._digest)
        return urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["temp_url_sig"][0]

    def worker_access(self, read: Iterable[str], write: Iterable[str]) -> dict[str, Any]:
        access: dict[str, Any] = {
            "kind": "swift",
            "url": f"{self.storage_url.rstrip('/')}/{urllib.parse.quote(self.container)}/"
                   f"{urllib.parse.quote(self.namespace)}",
            "namespace": self.namespace,
            "segment_size": self.settings.segment_size,
            "retries": self.settings.retries,
            "backoff": self.settings.backoff,
            "timeout": self.settings.timeout,
        }
        if self._tempurl_key is None:
            return {**access, "mode": "token", "token": self._fresh_token()}
        expires = self._expires()
        get, put = {}, {}
        for grants, method, names in ((get, "GET", read), (put, "PUT", write)):
            for name in names:
                grants[name] = self._sign(method, self._object(name), expires)
                grants[SEGMENTS_DIR + name] = self._sign(method, self._segments(name), expires,
                                                         prefix=True)
        return {**access, "mode": "tempurl", "expires": expires, "get": get, "put": put}

    # data -----------------------------------------------------------------------------------------

    def get(self, name: str) -> bytes:
        conn = self._conn()
        headers, data = self._call("GET object", name, conn.get_object, self.container,
                                   self._object(name))
        if headers.get("x-static-large-object") == "True":
            self._segmented.add(name)
        if headers.get("content-type", "").split(";")[0] != MANIFEST_TYPE:
            return data
        self._segmented.add(name)
        parts = []
        for segment, size in _parse_manifest(data, self._segments(name), name):
            _, chunk = self._call("GET object", name, conn.get_object, self.container, segment)
            if len(chunk) != size:
                raise StoreError(f"A segment of {name!r} has {len(chunk)} bytes, expected {size}")
            parts.append(chunk)
        return b"".join(parts)

    def put(self, name: str, parts: Sequence[Buffer]) -> int:
        obj = self._object(name)
        views = _byte_views(parts)
        total = sum(v.nbytes for v in views)
        size = self.settings.segment_size
        conn = self._conn()
        if total <= size:
            self._call("PUT object", name, conn.put_object, self.container, obj,
                       _PartsReader(views, 0, total), content_length=total,
                       content_type="application/octet-stream", chunk_size=1 << 20)
            return total
        count = -(-total // size)
        limit = self._capabilities.get("slo", {}).get("max_manifest_segments", 1000)
        if "slo" not in self._capabilities:
            raise StoreError(f"Object {name!r} ({total} bytes) exceeds whisk.swift.segment-size "
                             "and this Swift has no SLO support: raise the segment size")
        if count > limit:
            raise StoreError(f"Object {name!r} ({total} bytes) needs {count} segments, over "
                             f"Swift's limit of {limit}: raise whisk.swift.segment-size")
        prefix = f"{self._segments(name)}{secrets.token_hex(6)}/"
        manifest = []
        for index, start in enumerate(range(0, total, size)):
            stop = min(start + size, total)
            segment = f"{prefix}{index:08d}"
            etag = self._call("PUT segment of", name, conn.put_object, self.container, segment,
                              _PartsReader(views, start, stop), content_length=stop - start,
                              chunk_size=1 << 20)
            manifest.append({"path": f"/{self.container}/{segment}", "etag": etag,
                             "size_bytes": stop - start})
        self._call("PUT manifest of", name, conn.put_object, self.container, obj,
                   json.dumps(manifest), query_string="multipart-manifest=put",
                   content_type="application/octet-stream")
        self._segmented.add(name)
        return total

    def exists(self, name: str) -> bool:
        try:
            self._call("HEAD object", name, self._conn().head_object, self.container,
                       self._object(name))
        except ObjectMissing:
            return False
        return True

    def delete(self, names: Iterable[str]) -> None:
        names = list(names)
        objects = [self._object(n) for n in names]
        segmented = [n for n in names if n in self._segmented]
        for name in segmented:
            objects += self._list(self._segments(name))
            self._segmented.discard(name)
        self._bulk_delete(objects)

    def destroy(self) -> None:
        for attempt in range(5):
            self._bulk_delete(self._list(self.namespace))
            if not self.own_container:
                if not self._list(self.namespace):
                    return
                continue
            try:
                self._conn().delete_container(self.container)
                return
            except Exception as exc:
                status = getattr(exc, "http_status", None)
                if status == 404:
                    return
                if status != 409:  # 409: listing lagged behind the deletes; list again
                    raise StoreError(f"Swift DELETE container {self.container!r} failed: "
                                     f"HTTP {status}") from None
            time.sleep(0.2 * (attempt + 1))
        raise StoreError(f"Swift job namespace {self.job_id} still has objects after 5 rounds "
                         "of deletes")

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    # listing and bulk delete ----------------------------------------------------------------------

    def _list(self, prefix: str) -> list[str]:
        try:
            _, listing = self._conn().get_container(self.container, prefix=prefix or None,
                                                    full_listing=True)
        except Exception as exc:
            if getattr(exc, "http_status", None) == 404:
                return []
            raise StoreError(f"Swift listing of {self.container!r} failed: "
                             f"{getattr(exc, 'http_status', None) or type(exc).__name__}") from None
        return [entry["name"] for entry in listing]

    def _bulk_delete(self, objects: list[str]) -> None:
        """Delete objects of the container in bulk requests; objects already gone are fine."""
        if not objects:
            return
        conn = self._conn()
        if "bulk_delete" not in self._capabilities:
            for obj in objects:
                try:
                    conn.delete_object(self.container, obj)
                except Exception as exc:
                    if getattr(exc, "http_status", None) != 404:
                        raise StoreError(f"Swift DELETE of {obj!r} failed: "
                                         f"{getattr(exc, 'http_status', None)}") from None
            return
        limit = min(BULK_DELETE_BATCH,
                    self._capabilities["bulk_delete"].get("max_deletes_per_request", 10000))
        for i in range(0, len(objects), limit):
            body = "\n".join(urllib.parse.quote(f"/{self.container}/{o}")
                             for o in objects[i:i + limit]).encode()
            _, reply = self._call("bulk delete in", self.container, conn.post_account,
                                  headers={"Content-Type": "text/plain",
                                           "Accept": "application/json"},
                                  query_string="bulk-delete", data=body)
            try:
                result = json.loads(reply)
            except ValueError:
                raise StoreError("Swift bulk delete answered with no JSON status") from None
            failed = [(path, status) for path, status in result.get("Errors", [])
                      if not str(status).startswith("404")]
            if failed or not str(result.get("Response Status", "")).startswith(("2", "404")):
                detail = "; ".join(f"{path}: {status}" for path, status in failed[:3])
                raise StoreError(f"Swift bulk delete in {self.container!r} failed: "
                                 f"{result.get('Response Status')} {detail}".rstrip())


def open_job_store(job_id: str, **options: Any) -> SwiftJobStore:
    """Authenticate, create the job's container (unless one is configured) and pick worker access.

    ``options`` override dask config ``whisk.swift.*`` and the environment (see
    :func:`resolve_settings`); a missing or rejected setting raises :class:`SwiftConfigError`.
    """
    return SwiftJobStore(job_id, resolve_settings(**options))


def job_namespaces(settings: SwiftSettings) -> list[str]:
    """Job ids that have a namespace in Swift: per-job containers, or prefixes of the container."""
    from . import JOB_PREFIX

    probe = SwiftJobStore(f"{JOB_PREFIX}listing", settings, create=False)
    try:
        conn = probe._conn()
        if settings.container is None:
            _, containers = probe._call("GET account", "", conn.get_account, prefix=JOB_PREFIX,
                                        full_listing=True)
            return [c["name"] for c in containers]
        _, listing = probe._call("GET container", settings.container, conn.get_container,
                                 settings.container, prefix=JOB_PREFIX, delimiter="/",
                                 full_listing=True)
        return [entry["subdir"].rstrip("/") for entry in listing if "subdir" in entry]
    finally:
        probe.close()
