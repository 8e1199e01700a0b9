"""The activation side of the Swift store: standard library only, no credentials.

An activation reads and writes through prefix-based TempURLs (one signature per granted name
prefix and method, expiring with the job) or, only when the user opted in with
``whisk.swift.worker-auth: token``, the job's current token.
TempURLs cannot create SLO manifests (the tempurl middleware drops ``multipart-manifest`` and
refuses manifest headers), so an activation writes an output above the segment size as segments
under a per-object prefix (granted by a prefix-scoped TempURL) plus a small JSON manifest object
of content type :data:`MANIFEST_TYPE`. The naming, manifest and byte-view helpers here are shared
with the client side (:mod:`dask_whisk.store.swift`), whose ``get`` follows either kind of manifest;
the retried requests (:class:`SwiftHTTP`) with the ``swift://`` filesystem's grants in activations.
"""
from __future__ import annotations

import http.client
import json
import random
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from . import Buffer, ObjectMissing, StoreError, WorkerStore, check_range

#: content type of a manifest an activation writes for an object stored as segments
MANIFEST_TYPE = "application/x-dask-whisk-segments"
#: all segments of object ``name`` live under ``<namespace>.segments/<name>/``
SEGMENTS_DIR = ".segments/"
#: HTTP statuses worth retrying: timeouts, rate limits and server-side trouble
RETRY_STATUSES = frozenset({408, 429, 498, 500, 502, 503, 504})


def check_name(name: str) -> str:
    """Validate an object name: non-empty, no '/', no leading '.' (reserved for segments)."""
    if not name or "/" in name or name.startswith(".") or len(name.encode()) > 512:
        raise ValueError(f"Invalid object name {name!r}: use 1-512 bytes, no '/', no leading '.'")
    return name


def byte_views(parts: Sequence[Buffer]) -> list[memoryview]:
    """Each part as a flat unsigned-byte view (so lengths are byte counts), copying nothing."""
    views = []
    for part in parts:
        view = memoryview(part)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if view.nbytes:
            views.append(view)
    return views


def byte_slices(views: list[memoryview], start: int, stop: int) -> Iterator[memoryview]:
    """The views covering bytes [start, stop) of their concatenation, as zero-copy slices."""
    offset = 0
    for view in views:
        end = offset + view.nbytes
        if end > start and offset < stop:
            yield view[max(start - offset, 0):min(stop, end) - offset]
        offset = end
        if offset >= stop:
            return


class RangeReader:
    """A seekable reader of bytes [start, stop) of a source that ``read(start, end)`` returns
    bytes of: swiftclient streams it and rewinds it on each retry."""

    def __init__(self, read: Callable[[int, int], bytes], start: int, stop: int):
        self._read, self._start, self._stop, self._pos = read, start, stop, start

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left when negative) from the current position."""
        end = self._stop if size is None or size < 0 else min(self._stop, self._pos + size)
        chunk = self._read(self._pos, end)
        self._pos += len(chunk)
        return chunk

    def tell(self) -> int:
        """The position, relative to the range's start."""
        return self._pos - self._start

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move to ``offset`` from the range's start (``whence`` 0) or from here (1)."""
        self._pos = self._start + offset if whence == 0 else self._pos + offset
        return self.tell()


class ThreadConnections:
    """Connections kept one per thread (neither http.client's nor swiftclient's are
    thread-safe), all closed together by :meth:`close`."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._conns: list[Any] = []
        self._lock = threading.Lock()

    def _keep(self, conn: Any) -> Any:
        """``conn`` as this thread's connection, closed with the others."""
        self._local.conn = conn
        with self._lock:
            self._conns.append(conn)
        return conn

    def close(self) -> None:
        """Close the connections of every thread (when no request is under way)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()


class SwiftHTTP(ThreadConnections):
    """HTTP/1.1 requests to one Swift endpoint with bounded, jittered retries of transient
    failures (resets, 5xx, 408, 429); one connection per thread. Shared by the job store's
    activation side and the ``swift://`` filesystem inside activations."""

    def __init__(self, url: str, options: dict[str, Any]):
        """``url``: any URL of the endpoint; ``options``: ``retries``, ``backoff``, ``timeout``."""
        super().__init__()
        split = urllib.parse.urlsplit(url)
        self._scheme, self._netloc = split.scheme, split.netloc
        self._retries = int(options.get("retries", 5))
        self._backoff = float(options.get("backoff", 0.5))
        self._timeout = float(options.get("timeout", 60))

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            conn = self._keep(cls(self._netloc, timeout=self._timeout))
        return conn

    def _drop_conn(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(self, method: str, path: str, headers: dict[str, str], *, what: str,
                body: Sequence[Any] | None = None, size: int = 0,
                content_type: str = "application/octet-stream",
                byte_range: tuple[int, int] | None = None) -> tuple[int, dict, Any]:
        """``method`` on ``path`` (with its query); returns status, lower-cased headers and the
        body (read whole for a successful GET). ``body`` parts are byte views or seekable files
        (rewound before each attempt); ``what`` names the request in errors."""
        if byte_range is not None:
            headers = {**headers, "Range": f"bytes={byte_range[0]}-{byte_range[1] - 1}"}
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
                for part in body or ():
                    if hasattr(part, "seek"):
                        part.seek(0)
                    conn.send(part)
                resp = conn.getresponse()
                status = resp.status
                data = _read_body(resp) if method == "GET" and status in (200, 206) else resp.read()
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


class SwiftWorkerStore(WorkerStore):
    """An activation's reads and writes, over signed TempURLs or a job token, with retries."""

    def __init__(self, access: dict[str, Any]):
        self._access = access
        self._base = access["url"].rstrip("/") + "/"   # .../v1/AUTH_x/container/ (+ namespace)
        self._base_path = urllib.parse.urlsplit(self._base).path
        self._namespace = access.get("namespace", "")
        self._segment_size = int(access["segment_size"])
        self._http = SwiftHTTP(self._base, access)

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
        prefix = _granted_prefix(grants, name)
        if prefix is None:
            verb = "read" if method == "GET" else "write"
            raise StoreError(f"This activation was not granted {verb} access to {name!r}")
        if segment is None:
            sig, signed = grants[prefix], self._namespace + prefix
        else:
            sig, signed = grants[SEGMENTS_DIR + prefix], f"{self._namespace}{SEGMENTS_DIR}{prefix}"
        query = {"temp_url_sig": sig, "temp_url_expires": self._access["expires"],
                 "temp_url_prefix": signed}
        return f"{path}?{urllib.parse.urlencode(query)}", {}

    def _container_path(self) -> str:
        """Path of the container, ending in '/' (the namespace is part of object names)."""
        ns = urllib.parse.quote(self._namespace)
        return self._base_path[: len(self._base_path) - len(ns)] if ns else self._base_path

    def _segment_prefix(self, name: str) -> str:
        return f"{self._namespace}{SEGMENTS_DIR}{name}/"

    def _request(self, method: str, name: str, *, segment: str | None = None,
                 body: list[memoryview] | None = None, size: int = 0,
                 content_type: str = "application/octet-stream",
                 byte_range: tuple[int, int] | None = None) -> tuple[int, dict, Any]:
        """One request with bounded retries; returns status, headers and the body (GET) or None."""
        path, headers = self._target(method, name, segment)
        what = f"{method} of {name!r}" if segment is None else f"{method} of a segment of {name!r}"
        return self._http.request(method, path, headers, what=what, body=body, size=size,
                                  content_type=content_type, byte_range=byte_range)

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
        segments = parse_manifest(data, self._segment_prefix(name), name)
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

    def get_range(self, name: str, start: int, stop: int) -> Buffer:
        status, headers, data = self._request("GET", check_name(name), byte_range=(start, stop))
        self._check(status, name, "GET")
        if headers.get("content-type", "").split(";")[0] == MANIFEST_TYPE:  # a range of the manifest
            return check_range(memoryview(self.get(name))[start:stop], name, start, stop)
        return check_range(data, name, start, stop)

    def put(self, name: str, parts: Sequence[Buffer]) -> int:
        views = byte_views(parts)
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
                                         body=list(byte_slices(views, start, stop)), size=stop - start)
            self._check(status, name, "PUT")
            segments.append([segment, stop - start])
        manifest = json.dumps({"version": 1, "segments": segments}).encode()
        status, _, _ = self._request("PUT", name, body=[memoryview(manifest)], size=len(manifest),
                                     content_type=MANIFEST_TYPE)
        self._check(status, name, "PUT")
        return total


def _granted_prefix(grants: dict[str, str], name: str) -> str | None:
    """The longest prefix of ``name`` holding a grant (one lookup per prefix length)."""
    for end in range(len(name), -1, -1):
        if name[:end] in grants and SEGMENTS_DIR + name[:end] in grants:
            return name[:end]
    return None


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


def parse_manifest(data: Buffer, prefix: str, name: str) -> list[tuple[str, int]]:
    """Segments (object name in container, size) of an activation-written manifest."""
    try:
        manifest = json.loads(bytes(data))
        segments = [(str(s), int(n)) for s, n in manifest["segments"]]
    except (ValueError, KeyError, TypeError):
        raise StoreError(f"Object {name!r} has a malformed segment manifest") from None
    if any(not s.startswith(prefix) for s, _ in segments):
        raise StoreError(f"Object {name!r} has a manifest pointing outside its segment prefix")
    return segments
