"""OpenStack Swift as the object store: one container per job, or a prefix in a shared container.

This is the ``swift`` entry in :data:`dask_whisk.store.BACKENDS`. The client side
(:class:`SwiftJobStore`, on :class:`SwiftAccount`, which the ``swift://`` filesystem shares) uses
python-swiftclient, one Connection per thread (they are not thread-safe), with bounded retries
and re-authentication when a token expires. Objects above the
segment size are written as static large objects (SLO), which Swift reassembles on GET.

Activations get no credentials: :meth:`SwiftJobStore.worker_access` hands them signed TempURLs or
the job's current token, and :func:`open_worker_store` opens the standard-library activation side
in :mod:`dask_whisk.store.swift_worker`. python-swiftclient is imported only inside the functions
that use it, so an activation loading this module needs none of it.
"""
from __future__ import annotations

import json
import random
import secrets
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any

from . import (JOB_PREFIX, Buffer, JobStore, ObjectMissing, StoreError, check_range,
               job_age_seconds)
from .swift_settings import SwiftConfigError, SwiftSettings, resolve_settings, scrub_url
from .swift_worker import (MANIFEST_TYPE, SEGMENTS_DIR, RangeReader, SwiftWorkerStore,
                           ThreadConnections, byte_slices, byte_views, check_name, parse_manifest)

#: how a user accepts handing activations the job's token (read, write, delete: the whole account)
TOKEN_OPT_IN = "whisk.swift.worker-auth: token"
#: what to do when no TempURL key is available
SET_A_KEY = ("set one with `swift post -m Temp-URL-Key:<secret>` (X-Account-Meta-Temp-URL-Key), "
             "or whisk.swift.tempurl: container to let dask-whisk set a key on the container, or "
             f"{TOKEN_OPT_IN} to hand activations your token instead")
#: objects per bulk-delete request (Swift's default maximum is 10,000)
BULK_DELETE_BATCH = 1000


def _parts_reader(views: list[memoryview], start: int, stop: int) -> RangeReader:
    """A range of byte views (a value's buffers, never joined)."""
    return RangeReader(lambda begin, end: b"".join(byte_slices(views, begin, end)), start, stop)


def open_worker_store(access: dict[str, Any]) -> SwiftWorkerStore:
    """Open the activation side from the descriptor made by :meth:`SwiftJobStore.worker_access`."""
    if access.get("mode") not in ("tempurl", "token"):
        raise StoreError("Malformed Swift access descriptor: mode must be 'tempurl' or 'token'")
    return SwiftWorkerStore(access)


class SwiftAccount(ThreadConnections):
    """A Swift account reached with the user's settings: authenticated connections (one per
    thread), failures turned into :class:`StoreError`, the cluster's capabilities, listings, bulk
    deletes and prefix-based TempURL signatures. The job store and the ``swift://`` filesystem
    (:mod:`dask_whisk.store.swiftfs`) are both built on it."""

    def __init__(self, settings: SwiftSettings):
        """Authenticate now (bad settings fail here, clearly) and read the cluster's /info."""
        super().__init__()
        self.settings = settings
        conn = self._connect_checked()
        self.storage_url: str = conn.url
        self._capabilities = self._capabilities_of(conn)
        self._digest = self._choose_digest()

    # connections and errors -----------------------------------------------------------------------

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._keep(self.settings.connection())
        return conn

    def _connect_checked(self):
        """Authenticate now, so bad settings fail before any activation, with a clear message."""
        from swiftclient import ClientException

        conn = self._conn()
        where = scrub_url(self.settings.auth_url or self.settings.storage_url or "")
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

    def _capabilities_of(self, conn: Any, attempts: int = 6) -> dict[str, Any]:
        """GET /info, retried on 5xx and broken connections (swiftclient does not retry it)."""
        from swiftclient import ClientException

        for attempt in range(attempts):
            try:
                return conn.get_capabilities()
            except ClientException as exc:
                if (exc.http_status or 500) < 500 or attempt == attempts - 1:
                    return self._call("GET /info", "", conn.get_capabilities)
            except OSError:
                if attempt == attempts - 1:
                    raise StoreError(f"Swift GET /info failed: cannot reach {scrub_url(conn.url)}") from None
            time.sleep(random.uniform(0.5, 1.0) * min(2.0, 0.1 * 2 ** attempt))
        raise AssertionError("unreachable")

    def _call(self, what: str, name: str, fn, *args, **kwargs):
        """Run a swiftclient call (which retries itself) and turn failures into StoreErrors."""
        from swiftclient import ClientException

        try:
            return fn(*args, **kwargs)
        except ClientException as exc:
            if exc.http_status == 404 and (missing := self._missing(what, name)) is not None:
                raise missing from None
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

    def _missing(self, what: str, name: str) -> StoreError | None:
        """The error for a 404 answer to ``what`` (None: report it as a failure)."""
        return ObjectMissing(f"Swift {what} {name!r}: not found")

    # TempURLs -------------------------------------------------------------------------------------

    def account_tempurl_key(self) -> str | None:
        """The account's TempURL key (``X-Account-Meta-Temp-URL-Key`` or its ``-2``), if set."""
        account = self._call("HEAD account", "", self._conn().head_account)
        return account.get("x-account-meta-temp-url-key") or \
            account.get("x-account-meta-temp-url-key-2")

    def container_tempurl_key(self, container: str) -> str | None:
        """The TempURL key set on ``container`` (``X-Container-Meta-Temp-URL-Key``), if any."""
        headers = self._call("HEAD container", container, self._conn().head_container, container)
        return headers.get("x-container-meta-temp-url-key") or \
            headers.get("x-container-meta-temp-url-key-2")

    def _choose_digest(self) -> str:
        allowed = self._capabilities.get("tempurl", {}).get("allowed_digests", ["sha1"])
        return next((d for d in ("sha256", "sha512", "sha1") if d in allowed), "sha256")

    def sign(self, container: str, prefix: str, method: str, expires: int, key: str) -> str:
        """A prefix-based TempURL signature: ``method`` on every object of ``container`` whose
        name starts with ``prefix``, until ``expires`` (Unix time)."""
        from swiftclient.utils import generate_temp_url

        account_path = urllib.parse.urlsplit(self.storage_url).path.rstrip("/")
        url = generate_temp_url(f"{account_path}/{container}/{prefix}", expires, key, method,
                                absolute=True, prefix=True, digest=self._digest)
        return urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["temp_url_sig"][0]

    # segmented (static large) objects -------------------------------------------------------------

    def check_segments(self, name: str, count: int) -> None:
        """Refuse to write ``name`` as ``count`` segments where Swift could not join them."""
        if "slo" not in self._capabilities:
            raise StoreError(f"{name!r} exceeds whisk.swift.segment-size and this Swift has no "
                             "SLO support: raise the segment size (Swift takes up to 5 GiB)")
        limit = self._capabilities["slo"].get("max_manifest_segments", 1000)
        if count > limit:
            raise StoreError(f"{name!r} needs {count} segments, over Swift's limit of {limit}: "
                             "raise whisk.swift.segment-size")

    def put_segment(self, name: str, container: str, segment: str, reader: Any,
                    size: int) -> dict[str, Any]:
        """Write one segment of ``name`` from a seekable ``reader``; its SLO manifest entry."""
        etag = self._call("PUT segment of", name, self._conn().put_object, container, segment,
                          reader, content_length=size, chunk_size=1 << 20)
        return {"path": f"/{container}/{segment}", "etag": etag, "size_bytes": size}

    def put_manifest(self, name: str, container: str, obj: str, segments: list[dict],
                     content_type: str = "application/octet-stream") -> None:
        """Write the SLO manifest that joins ``segments`` into object ``obj``."""
        self._call("PUT manifest of", name, self._conn().put_object, container, obj,
                   json.dumps(segments), query_string="multipart-manifest=put",
                   content_type=content_type)

    # listing and bulk delete ----------------------------------------------------------------------

    def listing(self, container: str, prefix: str = "", delimiter: str | None = None) -> list[dict]:
        """Every entry of ``container`` under ``prefix``, page after page (Swift answers at most
        10,000 per request); raises :class:`ObjectMissing` if the container does not exist."""
        _, entries = self._call("GET container", container, self._conn().get_container, container,
                                prefix=prefix or None, delimiter=delimiter, full_listing=True)
        return entries

    def bulk_delete(self, container: str, objects: list[str]) -> None:
        """Delete objects of ``container`` in bulk requests; objects already gone are fine."""
        if not objects:
            return
        conn = self._conn()
        if "bulk_delete" not in self._capabilities:
            for obj in objects:
                try:
                    conn.delete_object(container, obj)
                except Exception as exc:
                    if getattr(exc, "http_status", None) != 404:
                        raise StoreError(f"Swift DELETE of {obj!r} failed: "
                                         f"{getattr(exc, 'http_status', None)}") from None
            return
        limit = min(BULK_DELETE_BATCH,
                    self._capabilities["bulk_delete"].get("max_deletes_per_request", 10000))
        for i in range(0, len(objects), limit):
            body = "\n".join(urllib.parse.quote(f"/{container}/{o}")
                             for o in objects[i:i + limit]).encode()
            _, reply = self._call("bulk delete in", container, conn.post_account,
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
                raise StoreError(f"Swift bulk delete in {container!r} failed: "
                                 f"{result.get('Response Status')} {detail}".rstrip())


class SwiftJobStore(SwiftAccount, JobStore):
    """The client's handle on a job's Swift namespace (a container, or a prefix in one)."""

    def __init__(self, job_id: str, settings: SwiftSettings, create: bool = True):
        """Authenticate; with ``create``, also make the job's container and choose worker access."""
        self.job_id = job_id
        self.own_container = settings.container is None
        self.container = job_id if self.own_container else settings.container
        self.namespace = "" if self.own_container else f"{job_id}/"
        age = job_age_seconds(job_id)
        self.started = time.time() - (age if age is not None and age >= 0 else 0.0)
        self._segmented: set[str] = set()
        #: when each job token was first seen (monotonic), to replace old ones in time
        self._token_born: dict[str, float] = {}
        super().__init__(settings)
        conn = self._conn()
        self._tempurl_key: str | None = None
        if create:
            if self.own_container:
                self._call("PUT container", "", conn.put_container, self.container)
            try:
                self._tempurl_key = self._choose_tempurl_key(conn)
            except SwiftConfigError:
                if self.own_container:  # refused before any activation: leave nothing behind
                    self._call("DELETE container", "", conn.delete_container, self.container)
                raise

    def _missing(self, what: str, name: str) -> StoreError | None:
        if what.startswith(("GET object", "HEAD object")):
            return ObjectMissing(f"Object {name!r} is not in Swift job namespace {self.job_id}")
        return super()._missing(what, name) if what == "GET container" else None

    def _object(self, name: str) -> str:
        return self.namespace + check_name(name)

    def _segments(self, name: str) -> str:
        """The prefix under which the segments of object ``name`` are stored."""
        return f"{self.namespace}{SEGMENTS_DIR}{name}/"

    # TempURLs -------------------------------------------------------------------------------------

    def _choose_tempurl_key(self, conn) -> str | None:
        """The key that signs worker URLs, or None when the user asked for the job token.

        Never falls back to the token on its own: that would hand every activation read, write
        and delete on the whole account, so a Swift without TempURLs refuses the job instead.
        """
        if self.settings.worker_auth == "token":
            return None
        mode = self.settings.tempurl
        if "tempurl" not in self._capabilities:
            raise SwiftConfigError(
                "This Swift has no tempurl middleware, so activations could only be handed your "
                f"token: add tempurl to the proxy pipeline, or set {TOKEN_OPT_IN} to accept that")
        if mode in ("auto", "account"):
            key = self.account_tempurl_key()
            if key:
                return key
            if mode == "account":
                raise SwiftConfigError(f"The Swift account has no TempURL key: {SET_A_KEY}")
        key = self.container_tempurl_key(self.container)
        if key:
            return key
        if mode == "auto" and not self.own_container:  # the user's container: not ours to change
            raise SwiftConfigError(f"Neither the Swift account nor the shared container "
                                   f"{self.container!r} has a TempURL key: {SET_A_KEY}")
        key = secrets.token_urlsafe(32)
        self._call("POST container", self.container, conn.post_container, self.container,
                   {"X-Container-Meta-Temp-URL-Key": key})
        return key

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

    def _sign(self, method: str, prefix: str, expires: int) -> str:
        """A prefix-based TempURL signature: ``method`` on every object whose name starts so."""
        return self.sign(self.container, prefix, method, expires, self._tempurl_key)

    def worker_access(self, read: Iterable[str], write: Iterable[str]) -> dict[str, Any]:
        """Grants by name prefix: one prefix-based TempURL signature per prefix and method (plus
        one for the prefix's segments), so a grant's size does not grow with a unit's width."""
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
        for grants, method, prefixes in ((get, "GET", read), (put, "PUT", write)):
            for prefix in prefixes:
                grants[prefix] = self._sign(method, self.namespace + prefix, expires)
                grants[SEGMENTS_DIR + prefix] = self._sign(
                    method, f"{self.namespace}{SEGMENTS_DIR}{prefix}", expires)
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
        for segment, size in parse_manifest(data, self._segments(name), name):
            _, chunk = self._call("GET object", name, conn.get_object, self.container, segment)
            if len(chunk) != size:
                raise StoreError(f"A segment of {name!r} has {len(chunk)} bytes, expected {size}")
            parts.append(chunk)
        return b"".join(parts)

    def get_range(self, name: str, start: int, stop: int) -> Buffer:
        conn = self._conn()
        headers, data = self._call("GET object", name, conn.get_object, self.container,
                                   self._object(name), headers={"Range": f"bytes={start}-{stop - 1}"})
        if headers.get("content-type", "").split(";")[0] == MANIFEST_TYPE:  # a range of the manifest
            return check_range(memoryview(self.get(name))[start:stop], name, start, stop)
        return check_range(data, name, start, stop)

    def put(self, name: str, parts: Sequence[Buffer]) -> int:
        obj = self._object(name)
        views = byte_views(parts)
        total = sum(v.nbytes for v in views)
        size = self.settings.segment_size
        conn = self._conn()
        if total <= size:
            self._call("PUT object", name, conn.put_object, self.container, obj,
                       _parts_reader(views, 0, total), content_length=total,
                       content_type="application/octet-stream", chunk_size=1 << 20)
            return total
        self.check_segments(name, -(-total // size))
        prefix = f"{self._segments(name)}{secrets.token_hex(6)}/"
        manifest = []
        for index, start in enumerate(range(0, total, size)):
            stop = min(start + size, total)
            manifest.append(self.put_segment(name, self.container, f"{prefix}{index:08d}",
                                             _parts_reader(views, start, stop), stop - start))
        self.put_manifest(name, self.container, obj, manifest)
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
        """Delete the objects and all their segments, whoever wrote them.

        The client knows the segmented objects it wrote or read, not those an activation wrote
        (it never reads intermediates), nor segments left by a write that failed before its
        manifest: one listing of the job's segment directory finds them all.
        """
        names = list(names)
        if not names:
            return
        objects = [self._object(n) for n in names]
        wanted = set(names)
        segmented = sorted(wanted & (self._segment_owners() | self._segmented))
        for name in segmented:
            objects += self._list(self._segments(name))
        self._bulk_delete(objects)
        self._segmented.difference_update(wanted)

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

    # listing and bulk delete ----------------------------------------------------------------------

    def _list(self, prefix: str) -> list[str]:
        try:
            return [entry["name"] for entry in self.listing(self.container, prefix)]
        except ObjectMissing:
            return []

    def _segment_owners(self) -> set[str]:
        """Names of the objects that have segments stored now (one delimited listing)."""
        prefix = f"{self.namespace}{SEGMENTS_DIR}"
        try:
            listing = self.listing(self.container, prefix, delimiter="/")
        except ObjectMissing:
            return set()
        return {entry["subdir"][len(prefix):].rstrip("/") for entry in listing if "subdir" in entry}

    def _bulk_delete(self, objects: list[str]) -> None:
        self.bulk_delete(self.container, objects)


def open_job_store(job_id: str, **options: Any) -> SwiftJobStore:
    """Authenticate, create the job's container (unless one is configured) and pick worker access.

    ``options`` override dask config ``whisk.swift.*`` and the environment (see
    :func:`resolve_settings`); a missing or rejected setting raises :class:`SwiftConfigError`.
    """
    return SwiftJobStore(job_id, resolve_settings(**options))


def job_namespaces(settings: SwiftSettings) -> list[str]:
    """Job ids that have a namespace in Swift: per-job containers, or prefixes of the container."""
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
