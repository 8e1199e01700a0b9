"""``swift://container/name``: the user's own data in OpenStack Swift, as an fsspec filesystem.

Registered for the ``swift`` protocol by an entry point (``fsspec.specs``), so
``dd.read_parquet("swift://c/table/")``, ``db.read_text("swift://logs/*.gz")`` and
``da.from_zarr("swift://c/a.zarr")`` find it with no import. A path is ``container/object``;
folders are the ``/``-separated prefixes of object names, and containers the top-level folders
(``mkdir``/``rmdir`` make and remove them).

On the client it reaches Swift with the user's settings (``whisk.swift.*``, ``ST_*``, ``OS_*``:
v1, Keystone v3 or pre-authenticated) through :class:`dask_whisk.store.swift.SwiftAccount`:
paginated listings, ranged reads, writes that become static large objects above
``whisk.swift.segment-size`` (segments in ``<container>_segments``), bulk deletes. Inside an
activation it holds no credential: it uses the job's grants (:mod:`dask_whisk.store.swift_grants`),
so it reads and writes objects of the paths the graph declared, and cannot list or make
containers. Pickled, it carries no credentials either: only its account's storage URL and
transfer options.
"""
from __future__ import annotations

import mimetypes
import shutil
import tempfile
import threading
import time
from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from . import ObjectMissing, StoreError
from . import swift_grants
from .swift_settings import OPTION_NAMES
from .swift_worker import RangeReader

#: options that authenticate: never pickled into a graph
_AUTH_OPTIONS = frozenset({"auth-url", "user", "key", "auth-version", "project-name",
                           "user-domain-name", "project-domain-name", "region-name",
                           "storage-url", "token"})
#: bytes of a file being written that stay in memory; the rest waits in a temporary file
SPOOL_MEMORY = 8 * 1024 * 1024
#: what an activation's filesystem cannot do with object grants alone
_NEEDS_LISTING = ("inside an activation, which holds TempURL grants for objects, not listings: "
                  "list on the client (dask's read_* functions do) and pass the paths into the "
                  "graph")


def _option(name: str) -> str:
    return name.replace("_", "-")


class SwiftFileSystem(AbstractFileSystem):
    """fsspec's view of a Swift account: containers, then ``/``-separated object names."""

    protocol = ("swift",)
    root_marker = ""

    def __init__(self, *, account_url: str | None = None, **options: Any):
        """``options``: Swift settings as :func:`resolve_settings` takes them (``auth_url``,
        ``user``, ``key``, ``segment_size``, ...), else the dask config and environment.
        ``account_url``: the storage URL a pickled copy uses to find its grants."""
        swift = {k: v for k, v in options.items() if _option(k) in OPTION_NAMES}
        super().__init__(**{k: v for k, v in options.items() if k not in swift})
        self._swift = swift
        self._account_url = account_url
        self._client: Any = None
        self._lock = threading.Lock()
        #: paths this filesystem wrote, made or removed on the client: a graph naming one of them
        #: (or a folder above one) is granted write access there
        self.written: set[str] = set()

    def __reduce__(self) -> tuple:
        account = self._account_url or (self._client.storage_url if self._client else None)
        kept = {k: v for k, v in self._swift.items() if _option(k) not in _AUTH_OPTIONS}
        return _rebuild, (type(self), account, kept)

    # which side: the user's account (client) or the job's grants (activation) ----------------------

    def account(self) -> Any:
        """The client's authenticated :class:`SwiftAccount` (made on first use)."""
        if swift_grants.installed() is not None:
            raise swift_grants.NotGranted("The Swift account's credentials are not available "
                                          "inside an activation: it uses the job's grants")
        with self._lock:
            if self._client is None:
                from .swift import SwiftAccount
                from .swift_settings import resolve_settings

                self._client = SwiftAccount(resolve_settings(**self._swift))
        return self._client

    def _granted(self) -> swift_grants.Granted | None:
        if swift_grants.installed() is None:
            return None
        return swift_grants.granted(self._account_url)

    @property
    def segment_size(self) -> int:
        """Bytes above which a written file becomes a segmented (SLO) object."""
        granted = self._granted()
        return granted.segment_size if granted else self.account().settings.segment_size

    # paths ---------------------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        """``swift://c/a/b/`` -> ``c/a/b``."""
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        return super()._strip_protocol(path).lstrip("/")

    def split_path(self, path: str) -> tuple[str, str]:
        """(container, object name) of ``path``; either may be empty."""
        container, _, key = self._strip_protocol(path).partition("/")
        return container, key

    def _note_write(self, path: str) -> None:
        if swift_grants.installed() is None:
            self.written.add(self._strip_protocol(path))

    # reading -------------------------------------------------------------------------------------

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """The object's size, type and metadata; a container or a folder is a directory."""
        path = self._strip_protocol(path)
        container, key = self.split_path(path)
        if not container:
            return {"name": "", "size": 0, "type": "directory"}
        granted = self._granted()
        if granted is not None:
            if not key:
                raise swift_grants.NotGranted(f"Swift container {container!r} cannot be "
                                              f"inspected {_NEEDS_LISTING}")
            _, headers, _ = granted.request("HEAD", container, key)
            return _file_info(path, headers)
        account = self.account()
        try:
            if not key:
                headers = account._call("HEAD container", container, account._conn().head_container,
                                        container)
                return {"name": path, "size": int(headers.get("x-container-bytes-used", 0)),
                        "type": "directory",
                        "count": int(headers.get("x-container-object-count", 0))}
            headers = account._call("HEAD object", path, account._conn().head_object, container, key)
            return _file_info(path, headers)
        except ObjectMissing:
            if key and self._any_under(container, key + "/"):
                return {"name": path, "size": 0, "type": "directory"}
            raise FileNotFoundError(f"swift://{path}") from None

    def _any_under(self, container: str, prefix: str) -> bool:
        account = self.account()
        try:
            _, entries = account._call("GET container", container, account._conn().get_container,
                                       container, prefix=prefix, limit=1)
        except ObjectMissing:
            return False
        return bool(entries)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list:
        """A folder's files and subfolders (one delimited listing, every page of it); the
        account's containers for ``""``; a file's own entry for a file."""
        path = self._strip_protocol(path)
        container, key = self.split_path(path)
        if self._granted() is not None:
            raise swift_grants.NotGranted(f"swift://{path} cannot be listed {_NEEDS_LISTING}")
        account = self.account()
        if not container:
            _, found = account._call("GET account", "", account._conn().get_account,
                                     full_listing=True)
            entries = [{"name": c["name"], "size": c.get("bytes", 0), "type": "directory",
                        "count": c.get("count", 0)} for c in found]
        else:
            try:
                listing = account.listing(container, f"{key}/" if key else "", delimiter="/")
            except ObjectMissing:
                raise FileNotFoundError(f"swift://{path}") from None
            entries = [_entry(container, e) for e in listing if not e.get("name", "").endswith("/")]
            if not entries and key:
                entries = [self.info(path)]  # a file, or FileNotFoundError
        return entries if detail else [e["name"] for e in entries]

    def find(self, path: str, maxdepth: int | None = None, withdirs: bool = False,
             detail: bool = False, **kwargs: Any) -> Any:
        """Every file below ``path`` from one flat listing (paginated), not a listing per folder."""
        path = self._strip_protocol(path)
        container, key = self.split_path(path)
        if not container:
            return super().find(path, maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs)
        if self._granted() is not None:
            raise swift_grants.NotGranted(f"swift://{path} cannot be searched {_NEEDS_LISTING}")
        prefix = f"{key}/" if key else ""
        try:
            listing = self.account().listing(container, prefix)
        except ObjectMissing:
            listing = []
        out: dict[str, dict] = {}
        for entry in listing:
            if entry["name"].endswith("/"):
                continue
            relative = entry["name"][len(prefix):].split("/")
            if withdirs:
                for depth in range(1, min(len(relative), (maxdepth or len(relative)) + 1)):
                    folder = f"{container}/{prefix}{'/'.join(relative[:depth])}"
                    out.setdefault(folder, {"name": folder, "size": 0, "type": "directory"})
            if maxdepth is None or len(relative) <= maxdepth:
                info = _entry(container, entry)
                out[info["name"]] = info
        if not out and key:
            try:
                info = self.info(path)
            except FileNotFoundError:
                info = None
            if info is not None and info["type"] == "file":
                out[path] = info
        elif withdirs and out:
            out[path] = {"name": path, "size": 0, "type": "directory"}
        out = dict(sorted(out.items()))
        return out if detail else list(out)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None,
                 **kwargs: Any) -> bytes:
        """The object's bytes [start, end) with one ranged GET (negative offsets from its end)."""
        path = self._strip_protocol(path)
        container, key = self.split_path(path)
        if (start is not None and start < 0) or (end is not None and end < 0):
            size = self.info(path)["size"]
            start = None if start is None else max(0, size + start) if start < 0 else start
            end = None if end is None else max(0, size + end) if end < 0 else end
        if start is not None and end is not None and end <= start:
            return b""
        byte_range = None
        if start or end is not None:
            byte_range = (start or 0, end)
        granted = self._granted()
        if granted is not None:
            headers = {} if byte_range is None else {"Range": _range_header(*byte_range)}
            _, _, data = granted.request("GET", container, key, headers=headers)
            return bytes(data)
        account = self.account()
        headers = {} if byte_range is None else {"Range": _range_header(*byte_range)}
        try:
            _, data = account._call("GET object", path, account._conn().get_object, container, key,
                                    headers=headers)
        except ObjectMissing:
            raise FileNotFoundError(f"swift://{path}") from None
        except StoreError as exc:
            if "HTTP 416" in str(exc):  # a range past the end: nothing there
                return b""
            raise
        return data

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None,
              autocommit: bool = True, cache_options: dict | None = None, **kwargs: Any) -> SwiftFile:
        if mode != "rb":
            self._note_write(path)
        return SwiftFile(self, path, mode, block_size=block_size, autocommit=autocommit,
                         cache_options=cache_options, **kwargs)

    # writing and removing --------------------------------------------------------------------------

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        """Write ``value`` as the whole object (segmented above the segment size)."""
        with self.open(path, "wb") as f:
            f.write(value)

    def rm_file(self, path: str) -> None:
        """Delete one object (a segmented one with its segments)."""
        self.rm(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """Delete objects, with bulk deletes; ``recursive`` on a container removes it as well."""
        paths = [self._strip_protocol(p) for p in ([path] if isinstance(path, str) else path)]
        granted = self._granted()
        if granted is not None:
            if recursive:
                raise swift_grants.NotGranted(f"swift://{paths[0]} cannot be removed recursively "
                                              f"{_NEEDS_LISTING}")
            for p in paths:
                granted.request("DELETE", *self.split_path(p))
            return
        account = self.account()
        for p in paths:
            self._note_write(p)
        files: dict[str, list[dict]] = {}
        containers = []
        for p in paths:
            container, key = self.split_path(p)
            if recursive:
                entries = self.find(p, maxdepth=maxdepth, detail=True).values()
                if not key:
                    containers.append(container)
            else:
                entries = [self.info(p)]
                if entries[0]["type"] != "file":
                    raise IsADirectoryError(f"swift://{p} is a folder: use recursive=True")
            for entry in entries:
                files.setdefault(container, []).append(entry)
        if not files and not containers:
            raise FileNotFoundError(f"swift://{paths[0]}")
        for container, entries in files.items():
            plain = [self.split_path(e["name"])[1] for e in entries if not e.get("slo")]
            account.bulk_delete(container, plain)
            for entry in entries:
                if entry.get("slo"):
                    account._call("DELETE manifest of", entry["name"], account._conn().delete_object,
                                  container, self.split_path(entry["name"])[1],
                                  query_string="multipart-manifest=delete")
        for container in containers:
            self.rmdir(container)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        """Make the container of ``path`` (folders need nothing: they are name prefixes)."""
        container, key = self.split_path(path)
        if not key and self.exists(container):
            raise FileExistsError(f"swift://{container}")
        if key and not create_parents and not self.exists(container):
            raise FileNotFoundError(f"swift://{container}")
        self.makedirs(path, exist_ok=True)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        """Make the container of ``path`` if it is missing (inside an activation: nothing)."""
        container, key = self.split_path(path)
        if self._granted() is not None:
            return  # folders need nothing, and containers are made on the client
        self._note_write(path)
        account = self.account()
        if not exist_ok and not key and self.exists(container):
            raise FileExistsError(f"swift://{container}")
        account._call("PUT container", container, account._conn().put_container, container)

    def rmdir(self, path: str) -> None:
        """Remove an empty container (a folder goes with its last object)."""
        path = self._strip_protocol(path)
        container, key = self.split_path(path)
        if key:
            if self._any_under(container, key + "/"):
                raise OSError(f"swift://{path} is not empty")
            return
        self._note_write(path)
        account = self.account()
        from swiftclient import ClientException

        try:
            account._conn().delete_container(container)
        except ClientException as exc:
            if exc.http_status == 404:
                raise FileNotFoundError(f"swift://{container}") from None
            if exc.http_status == 409:
                raise OSError(f"swift://{container} is not empty") from None
            raise StoreError(f"Swift DELETE container {container!r} failed: HTTP "
                             f"{exc.http_status}") from None


def _rebuild(cls: type, account_url: str | None, options: dict[str, Any]) -> SwiftFileSystem:
    """A filesystem unpickled in an activation (or a client process): same account, no secrets."""
    return cls(account_url=account_url, **options)


def _range_header(start: int, end: int | None) -> str:
    return f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"


def _file_info(path: str, headers: dict[str, str]) -> dict[str, Any]:
    return {"name": path, "size": int(headers.get("content-length", 0)), "type": "file",
            "etag": headers.get("etag", "").strip('"'),
            "content_type": headers.get("content-type"),
            "last_modified": headers.get("last-modified"),
            "slo": headers.get("x-static-large-object") == "True"}


def _entry(container: str, entry: dict[str, Any]) -> dict[str, Any]:
    """An fsspec entry from one item of a Swift listing."""
    if "subdir" in entry:
        return {"name": f"{container}/{entry['subdir'].rstrip('/')}", "size": 0, "type": "directory"}
    return {"name": f"{container}/{entry['name']}", "size": entry.get("bytes", 0), "type": "file",
            "etag": entry.get("hash"), "content_type": entry.get("content_type"),
            "last_modified": entry.get("last_modified"), "slo": "slo_etag" in entry}


def _file_slice(file: Any, start: int, stop: int) -> RangeReader:
    """Bytes [start, stop) of an open file, as a seekable reader (rewound on each retry)."""
    def read(begin: int, end: int) -> bytes:
        file.seek(begin)
        return file.read(end - begin)
    return RangeReader(read, start, stop)


class SwiftFile(AbstractBufferedFile):
    """An open ``swift://`` object: reads are ranged GETs of ``block_size`` (5 MiB) through
    fsspec's read-ahead cache, so a large object streams; writes wait in a spooled temporary
    file (8 MiB in memory) and go up as one PUT, or as segments of ``segment_size`` and an SLO
    manifest when the file grows past it (on the client: TempURLs cannot write manifests)."""

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.fs.cat_file(self.path, start, end)

    def _initiate_upload(self) -> None:
        self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)
        self._spooled = 0  # bytes in the spool
        self._segments: list[dict[str, Any]] = []
        self._segment_prefix = ""

    def _upload_chunk(self, final: bool = False) -> bool:
        self._spool.seek(self._spooled)
        self._spooled += self._spool.write(self.buffer.getbuffer())
        size = self.fs.segment_size
        while self._spooled > size:  # past one segment: this object is segmented
            self._put_segment(size)
        if final:
            if self._segments:
                if self._spooled:
                    self._put_segment(self._spooled)
                self._put_manifest()
            else:
                self._put_whole()
            self._spool.close()
        return True

    def _put_whole(self) -> None:
        container, key = self.fs.split_path(self.path)
        size = self._spooled
        reader = _file_slice(self._spool, 0, size)
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        granted = self.fs._granted()
        if granted is not None:
            granted.request("PUT", container, key, body=[reader], size=size,
                            content_type=content_type)
            return
        account = self.fs.account()
        account._call("PUT object", self.path, account._conn().put_object, container, key, reader,
                      content_length=size, content_type=content_type, chunk_size=1 << 20)

    def _put_segment(self, size: int) -> None:
        """Write the spool's first ``size`` bytes as the next segment; keep the rest spooled."""
        if self.fs._granted() is not None:
            raise StoreError(
                f"swift://{self.path} grows past whisk.swift.segment-size "
                f"({self.fs.segment_size:,} bytes), and an activation cannot write the manifest "
                "that joins segments (TempURLs do not allow it): write smaller files (more "
                "partitions or chunks), or raise whisk.swift.segment-size (up to 5 GiB)")
        account = self.fs.account()
        container, key = self.fs.split_path(self.path)
        if not self._segments:
            self._segment_prefix = f"{key}/slo/{time.time():.6f}/{self.fs.segment_size}/"
            account._call("PUT container", f"{container}_segments", account._conn().put_container,
                          f"{container}_segments")
        account.check_segments(self.path, len(self._segments) + 1)
        self._segments.append(account.put_segment(
            self.path, f"{container}_segments", f"{self._segment_prefix}{len(self._segments):08d}",
            _file_slice(self._spool, 0, size), size))
        rest = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)
        shutil.copyfileobj(_file_slice(self._spool, size, self._spooled), rest)
        self._spool.close()
        self._spool, self._spooled = rest, self._spooled - size

    def _put_manifest(self) -> None:
        container, key = self.fs.split_path(self.path)
        self.fs.account().put_manifest(self.path, container, key, self._segments,
                                       mimetypes.guess_type(key)[0] or "application/octet-stream")
