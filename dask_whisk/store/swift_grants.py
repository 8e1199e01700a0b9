"""Scoped grants on the user's own Swift data: what a job's activations may read and write.

On the client, :func:`for_graph` finds the ``swift://`` locations a graph names (see
:func:`graph_locations`) and signs, per account, one prefix-based TempURL per prefix and method,
expiring with the job (``whisk.swift.max-job-duration``): GET on what the graph reads; GET, PUT and
DELETE on what it writes. The grants ride in every invocation of the job; no credential does.

In an activation, the worker calls :func:`install` with the invocation's grants before running
tasks, and :class:`dask_whisk.store.swiftfs.SwiftFileSystem` then reaches Swift only through
:class:`Granted`: a path outside the grants is refused with :class:`NotGranted`. This module
loads with the standard library only (the worker imports it); the graph walk imports dask and
fsspec when it runs, on the client.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import time
import urllib.parse
from typing import Any

from . import StoreError
from .swift_worker import SwiftHTTP

#: the grants of the activation running in this process (None: not in an activation)
_installed: dict[str, Any] | None = None
#: account -> its open grants, kept while the same grants are installed (warm activations of
#: one job reuse their connections)
_open: dict[str | None, Granted] = {}
#: grants larger than this (JSON bytes) would crowd OpenWhisk's 1 MiB invocation limit
MAX_GRANTS_BYTES = 256 * 1024
#: what a write grant signs: reads too (a chunk written in part is read first), writes, deletes
WRITE_METHODS = ("GET", "PUT", "DELETE")
#: how a graph declares what it reads and writes, for error messages
HOW_TO_DECLARE = (
    "dask-whisk grants a job the swift:// paths its graph names: files and folders that dask's "
    "read_*/to_* functions and zarr put in the graph, fsspec OpenFiles, and swift:// strings in "
    "task arguments; read-only, unless an OpenFile was opened for writing or the client wrote "
    "there while building the graph (as to_parquet and to_zarr do). Pass the path into the graph, "
    "e.g. dask.delayed(f)(fsspec.open('swift://container/name', 'wb'))")


class NotGranted(PermissionError):
    """An activation touched a ``swift://`` path its job's graph did not declare."""


def install(grants: dict[str, Any] | None) -> None:
    """Make ``grants`` the activation's access to Swift data (called by the worker per activation;
    ``None``: the job declared none, so every ``swift://`` path is refused)."""
    global _installed
    if (grants or {}) != _installed:
        for account in _open.values():
            account.close()
        _open.clear()
    _installed = grants or {}
    if grants:  # user code may say fsspec.open("swift://..."): no installed distribution says so
        import fsspec

        fsspec.register_implementation("swift", "dask_whisk.store.swiftfs.SwiftFileSystem",
                                       clobber=True)


def installed() -> dict[str, Any] | None:
    """The grants of the activation running here, or None outside activations (on the client)."""
    return _installed


class Granted:
    """One account's grants inside an activation: object requests signed by the job's TempURLs."""

    def __init__(self, storage_url: str, grants: dict[str, Any]):
        """``grants``: one account's entry of the ``accounts`` made by :func:`for_graph`."""
        self.storage_url = storage_url
        self._grants = grants
        self._path = urllib.parse.urlsplit(storage_url).path.rstrip("/")
        self._http = SwiftHTTP(storage_url, grants)
        self.segment_size = int(grants["segment_size"])

    def _signed(self, method: str, container: str, key: str) -> str:
        """The request path with the signature of the longest granted prefix of ``key``."""
        signing = "GET" if method == "HEAD" else method
        candidates = [(prefix, sigs[signing]) for prefix, sigs in
                      self._grants["write"].get(container, {}).items() if key.startswith(prefix)]
        if signing == "GET":
            candidates += [(prefix, sig) for prefix, sig in
                           self._grants["read"].get(container, {}).items() if key.startswith(prefix)]
        if not candidates:
            verb = "read" if signing == "GET" else "written"
            raise NotGranted(f"swift://{container}/{key} may not be {verb} by this activation: "
                             f"its job's graph did not declare it. {HOW_TO_DECLARE}")
        prefix, sig = max(candidates, key=lambda c: len(c[0]))
        query = urllib.parse.urlencode({"temp_url_sig": sig, "temp_url_prefix": prefix,
                                        "temp_url_expires": self._grants["expires"]})
        return f"{self._path}/{urllib.parse.quote(container)}/{urllib.parse.quote(key)}?{query}"

    def request(self, method: str, container: str, key: str, headers: dict[str, str] | None = None,
                **kwargs: Any) -> tuple[int, dict, Any]:
        """``method`` on one object through its grant; 404 is FileNotFoundError, 401 says why."""
        what = f"{method} of swift://{container}/{key}"
        status, headers, data = self._http.request(method, self._signed(method, container, key),
                                                   headers or {}, what=what, **kwargs)
        if status == 404:
            raise FileNotFoundError(f"swift://{container}/{key}")
        if status == 401:
            raise StoreError(f"Swift refused {what}: the job's grant expired (raise "
                             "whisk.swift.max-job-duration) or was signed with a TempURL key "
                             "that has since changed")
        if status >= 300:
            raise StoreError(f"Swift {what} failed: HTTP {status}")
        return status, headers, data

    def close(self) -> None:
        """Close this account's connections."""
        self._http.close()


def granted(account: str | None) -> Granted:
    """The installed grants of ``account`` (a storage URL; None: the job's only account)."""
    if account in _open:
        return _open[account]
    accounts = (_installed or {}).get("accounts", {})
    if account in accounts:
        return _open.setdefault(account, Granted(account, accounts[account]))
    if account is None and len(accounts) == 1:
        return _open.setdefault(None, Granted(*next(iter(accounts.items()))))
    named = "" if account is None else f" of the Swift account at {account}"
    raise NotGranted(f"This activation was granted no swift:// paths{named}. {HOW_TO_DECLARE}")


# --- the client: what a graph names, and its grants ---------------------------------------------

def for_graph(plan: Any) -> dict[str, Any] | None:
    """Signed grants for every ``swift://`` location ``plan``'s units and values name, or None
    when they name none (nothing is walked unless this process made a Swift filesystem)."""
    if "dask_whisk.store.swiftfs" not in sys.modules:
        return None
    found = graph_locations([node for unit in plan.units.values() for node in unit.tasks.values()]
                            + list(plan.data.values()))
    accounts: dict[str, dict[str, Any]] = {}
    for fs, locations in found.items():
        account = fs.account()
        read, write = compact(locations, fs.written)
        entry = accounts.setdefault(account.storage_url, {"read": {}, "write": {}})
        for container, prefixes in read.items():
            entry["read"].setdefault(container, set()).update(prefixes)
        for container, prefixes in write.items():
            entry["write"].setdefault(container, set()).update(prefixes)
        entry["account"] = account
    if not accounts:
        return None
    grants = {"accounts": {url: _sign(entry.pop("account"), entry) for url, entry in accounts.items()}}
    size = len(json.dumps(grants))
    if size > MAX_GRANTS_BYTES:
        count = sum(len(p) for a in accounts.values() for kind in ("read", "write")
                    for p in a[kind].values())
        raise StoreError(f"The graph names swift:// data under {count:,} separate prefixes, whose "
                         f"grants ({size:,} bytes) would not fit an invocation: keep the files a "
                         "job reads or writes in fewer folders")
    return grants


def _sign(account: Any, prefixes: dict[str, dict[str, set[str]]]) -> dict[str, Any]:
    """One account's grants: a signature per prefix and method, valid for the job's longest run."""
    from .swift_settings import SwiftConfigError

    settings = account.settings
    if "tempurl" not in account._capabilities:
        raise SwiftConfigError("This Swift has no tempurl middleware, so activations cannot be "
                               "granted swift:// paths without your credentials: add tempurl to "
                               "the proxy pipeline")
    expires = int(time.time() + settings.max_job_duration)
    account_key = account.account_tempurl_key()
    keys: dict[str, str] = {}
    for container in {*prefixes["read"], *prefixes["write"]}:
        key = account_key or account.container_tempurl_key(container)
        if not key:
            raise SwiftConfigError(
                f"Neither the Swift account nor container {container!r} has a TempURL key, which "
                "signs the activations' access to swift:// data: set one with `swift post -m "
                "Temp-URL-Key:<secret>` (X-Account-Meta-Temp-URL-Key), or on the container with "
                f"`swift post -m Temp-URL-Key:<secret> {container}`")
        keys[container] = key
    return {
        "expires": expires, "segment_size": settings.segment_size, "retries": settings.retries,
        "backoff": settings.backoff, "timeout": settings.timeout,
        "read": {c: {p: account.sign(c, p, "GET", expires, keys[c]) for p in sorted(ps)}
                 for c, ps in prefixes["read"].items()},
        "write": {c: {p: {m: account.sign(c, p, m, expires, keys[c]) for m in WRITE_METHODS}
                      for p in sorted(ps)} for c, ps in prefixes["write"].items()},
    }


#: a location a graph names: its filesystem's stripped path, whether it is a folder, and whether
#: the carrier itself says it is written (an OpenFile opened for writing)
Location = tuple[str, bool, bool]


def compact(locations: list[Location], written: set[str]
            ) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Read and write prefixes, per container, covering ``locations``.

    A folder is its ``name/`` prefix; the files of one folder share the longest common prefix of
    their names (``logs/2026-11-`` for a month of daily logs), so the grants grow with the folders
    a graph reads, not its files. A location is written if its carrier says so (an OpenFile's
    mode), or, for a folder, if the client wrote in it (``written``: the filesystem's record of
    its own writes, such as to_parquet's ``mkdirs`` and to_zarr's metadata)."""
    def written_in(folder: str) -> bool:
        return any(w == folder or w.startswith(folder + "/") for w in written)

    modes: dict[bool, dict[tuple[str, str], list[tuple[str, bool]]]] = {False: {}, True: {}}
    for path, is_dir, write in locations:
        container, _, key = path.partition("/")
        if not container:
            continue
        write = write or (is_dir and written_in(path))
        if is_dir or not key:
            folder, name = key, ""
        else:
            folder, name = key.rpartition("/")[0], key
        modes[write].setdefault((container, folder), []).append((name, is_dir or not key))
    out: dict[bool, dict[str, set[str]]] = {}
    for write, groups in modes.items():
        prefixes: dict[str, set[str]] = {}
        for (container, folder), names in groups.items():
            if any(is_dir for _, is_dir in names):
                prefix = f"{folder}/" if folder else ""
            else:
                prefix = os.path.commonprefix([n for n, _ in names])
            prefixes.setdefault(container, set()).add(prefix)
        out[write] = {c: _uncovered(ps) for c, ps in prefixes.items()}
    read = {c: {p for p in ps if not any(p.startswith(w) for w in out[True].get(c, ()))}
            for c, ps in out[False].items()}
    return {c: ps for c, ps in read.items() if ps}, out[True]


def _uncovered(prefixes: set[str]) -> set[str]:
    """``prefixes`` without those that a shorter one of them already covers."""
    kept: list[str] = []
    for prefix in sorted(prefixes):
        if not any(prefix.startswith(k) for k in kept):
            kept.append(prefix)
    return set(kept)


#: modules whose objects hold data, never a Swift location: not walked into
_OPAQUE_MODULES = ("numpy", "pandas", "pyarrow", "builtins", "scipy", "sparse", "cupy")
#: how deep the walk goes into objects that are not containers (a zarr array holds its store
#: four attributes down: Array -> AsyncArray -> StorePath -> FsspecStore -> fs)
_MAX_DEPTH = 6
#: what the walk does with an object, decided once per class
_LEAF, _TEXT, _ITEMS, _MAPPING, _TASK, _DATA, _OPENFILE, _FS, _OBJECT = range(9)


def graph_locations(roots: list[Any]) -> dict[Any, list[Location]]:
    """The ``swift://`` locations each Swift filesystem is used for by ``roots`` (task-spec nodes
    and values), found where dask's IO layers and fsspec carry them:

    - an fsspec ``OpenFile`` (read_text, read_csv, to_csv, to_textfiles): its path, written if
      its mode writes;
    - an object holding the filesystem as ``fs`` with a ``path`` or ``root`` (to_parquet's
      writer, zarr's ``FsspecStore``, fsspec mappers): that folder;
    - a task holding the filesystem without a path (read_parquet's reader, or ``fs`` passed to a
      delayed function): the strings of that task's arguments that are paths (``container/name``);
    - a ``swift://`` string anywhere: its path, on the default Swift filesystem.

    Each class is classified once and each object other than a container walked once, so a
    graph of numbers, arrays and functions costs a few microseconds a task.
    """
    from dask import _task_spec
    from fsspec.core import OpenFile

    from .swiftfs import SwiftFileSystem

    kinds: dict[type, int] = {}

    def kind(cls: type) -> int:
        if issubclass(cls, str):
            return _TEXT
        for base, k in ((SwiftFileSystem, _FS), (OpenFile, _OPENFILE), (_task_spec.Task, _TASK),
                        (_task_spec.DataNode, _DATA), (dict, _MAPPING),
                        ((list, tuple, set, frozenset), _ITEMS)):
            if issubclass(cls, base):
                return k
        if issubclass(cls, (_task_spec.GraphNode, _task_spec.TaskRef, bytes, bytearray,
                            memoryview, int, float, complex, type, range, slice)) \
                or cls.__module__.split(".")[0] in _OPAQUE_MODULES:
            return _LEAF  # functions, methods and None are of the builtins module too
        return _OBJECT

    memo: dict[int, tuple[list, list, list]] = {}
    keep: list[Any] = []  # what memo names stays alive, so no other object takes its id

    def ours(fs: Any) -> SwiftFileSystem | None:
        fs = getattr(fs, "sync_fs", fs)  # zarr wraps a synchronous filesystem for asyncio
        return fs if isinstance(fs, SwiftFileSystem) else None

    def walk(obj: Any, depth: int, out: tuple[list, list, list]) -> None:
        """Add to ``out`` the (locations, filesystems held without a path, path-like strings)
        reachable from ``obj``."""
        cls = type(obj)
        k = kinds.get(cls)
        if k is None:
            k = kinds[cls] = kind(cls)
        if k == _LEAF:
            return
        if k == _TEXT:
            if obj.startswith("swift://"):
                fs = SwiftFileSystem()
                out[0].append((fs, fs._strip_protocol(obj), obj.endswith("/"), False))
            elif "/" in obj and len(obj) < 1024:
                out[2].append(obj)
        elif k == _TASK:
            walk(obj.func, depth, out)
            for child in obj.args:
                walk(child, depth, out)
            for child in obj.kwargs.values():
                walk(child, depth, out)
        elif k == _ITEMS:
            for child in obj:
                walk(child, depth, out)
        elif k == _MAPPING:
            for key, child in obj.items():
                walk(key, depth, out)
                walk(child, depth, out)
        elif k == _DATA:
            walk(obj.value, depth, out)
        elif k == _FS:
            out[1].append(obj)
        elif k == _OPENFILE:
            if (fs := ours(obj.fs)) is not None:
                out[0].append((fs, obj.path, False, any(m in obj.mode for m in "wax+")))
        elif depth < _MAX_DEPTH:
            found = memo.get(id(obj))
            if found is None:
                found = memo[id(obj)] = ([], [], [])  # filled below; a cycle ends here
                keep.append(obj)
                fs = ours(getattr(obj, "fs", None))
                where = next((p for p in (getattr(obj, "path", None), getattr(obj, "root", None))
                              if isinstance(p, str)), None)
                if fs is not None and where is not None:
                    found[0].append((fs, fs._strip_protocol(where), True, False))
                elif fs is not None:
                    found[1].append(fs)
                else:
                    for child in _attributes(obj):
                        walk(child, depth + 1, found)
            for mine, theirs in zip(out, found):
                mine.extend(theirs)

    found: dict[Any, list[Location]] = {}
    for root in roots:
        locations, held, strings = out = ([], [], [])
        walk(root, 0, out)
        for fs, path, is_dir, write in locations:
            found.setdefault(fs, []).append((path, is_dir, write))
        for fs in dict.fromkeys(held):
            found.setdefault(fs, []).extend(
                (fs._strip_protocol(s), False, False) for s in strings
                if "/" in fs._strip_protocol(s).strip("/"))
    return found


def _attributes(obj: Any) -> list[Any]:
    """The attribute values of an object (its ``__dict__`` and slots; a partial's parts)."""
    if isinstance(obj, functools.partial):
        return [obj.func, obj.args, obj.keywords]
    values = list(getattr(obj, "__dict__", {}).values())
    for cls in type(obj).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                values.append(getattr(obj, slot))
    return values
