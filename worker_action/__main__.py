"""The dask-whisk worker action: one work unit per OpenWhisk activation.

Deployed as is to any OpenWhisk Python runtime (``main(args) -> dict``). It reads the unit, fetches
its stored inputs concurrently, runs the tasks with Dask's task-spec execution, and inlines or
stores each output, answering with the result envelope of ``dask_whisk.protocol``.
"""
from __future__ import annotations

import collections
import json
import os
import pickle

# Parallelism comes from many activations, each given a share of a core: a BLAS pool per
# activation would oversubscribe the invoker's cores (measured: 8x slower QR on 2 cores).
# Set before anything imports numpy; an explicit setting in the environment wins.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
import hashlib
import importlib
import platform
import resource
import sys
import tempfile
import threading
import time
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dask import _task_spec

import dask_whisk
from dask_whisk import protocol
from dask_whisk.store import WorkerStore, open_worker_store, swift_grants

#: activations served by this container process so far (0 during the first: a cold start)
_served = 0
_io_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dask-whisk-io")
#: shared functions by name, most recently used last: the name is a hash of the function's
#: pickle, so a warm container may keep them from unit to unit and from job to job
_functions: dict[str, Any] = {}
FUNCTION_CACHE = 256
#: distinct warnings a unit reports at most (a loop warning with a new message each time
#: must not fill the result)
MAX_WARNINGS = 20
#: runtimes on this container's path: hash -> their unpacked folder (kept for its life)
_runtimes: dict[str, str] = {}
_runtime_lock = threading.Lock()
#: a runtime is read in ranges of this size, so its zip is never held in memory whole
RUNTIME_RANGE_BYTES = 16 * 1024 * 1024
#: files whose frames start every task's traceback: left out of the traceback users see
_MACHINERY = (__file__, _task_spec.__file__)


def _libc() -> Any:
    """glibc, for the two calls that keep a warm container's memory what its values need."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018  (not glibc: nothing to tune)
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()
if _LIBC is not None:
    # glibc raises its mmap threshold each time a large block is freed, so a warm container's
    # later 32 MB chunks came from the heap and were never given back: its resident memory
    # grew from unit to unit until the memory limit killed it. A fixed threshold keeps large
    # arrays in mappings of their own, returned when freed.
    _LIBC.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


def _give_back_memory() -> None:
    """Return what this activation freed to the system before the next one runs here."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class _TaskFailed(Exception):
    def __init__(self, key: Any, exc: BaseException):
        self.key, self.exc = key, exc


def _memory_limit() -> int | None:
    """This container's memory limit in bytes (its cgroup's, which OpenWhisk sets to the
    action's memory), or None where no limit is visible (the local server's processes)."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 50:  # cgroup v1 says "no limit" with a huge number
            return int(text)
    return None


class _RecentObjects:
    """The stored objects (and byte ranges) this warm container read lately, least recently used
    dropped first, at most ``budget`` bytes, none over a quarter of it (kept for its life)."""

    def __init__(self, budget: int) -> None:
        self.budget, self.held = budget, 0
        self._items: collections.OrderedDict[tuple, bytes] = collections.OrderedDict()
        self._lock = threading.Lock()  # reads run concurrently on the I/O pool

    def get(self, key: tuple) -> bytes | None:
        """The bytes kept under ``key``, or None."""
        with self._lock:
            data = self._items.pop(key, None)
            if data is not None:
                self._items[key] = data
            return data

    def keep(self, key: tuple, data: bytes) -> None:
        """Keep ``data`` under ``key`` if it is small enough, dropping the oldest beyond the budget."""
        if len(data) > self.budget // 4:
            return
        with self._lock:
            if key not in self._items:
                self._items[key] = data
                self.held += len(data)
            while self.held > self.budget:
                self.held -= len(self._items.popitem(last=False)[1])


#: a sixteenth of the container's memory (32 MiB where no limit is visible)
_recent = _RecentObjects((_memory_limit() or 512 * 2**20) // 16)


class _Recent(WorkerStore):
    """A job's store read through :data:`_recent`, so that the units of a job reading the same
    stored input in one container read it once; counts the bytes it did not read again.

    Safe because a job never writes a name twice (every attempt writes new ones) and every frame
    is checked against the job's key when decoded, cached or not; keyed by job, so another job's
    objects are never served."""

    def __init__(self, store: WorkerStore, job: str) -> None:
        self.store, self.job = store, job
        self.reused = 0

    def _through(self, key: tuple, read: Any) -> bytes:
        data = _recent.get(key)
        if data is not None:
            self.reused += len(data)
            return data
        data = read()
        _recent.keep(key, data)
        return data

    def get(self, name: str) -> bytes:
        return self._through((self.job, name), lambda: self.store.get(name))

    def get_range(self, name: str, start: int, stop: int) -> bytes:
        return self._through((self.job, name, start, stop), lambda: self.store.get_range(name, start, stop))

    def put(self, name: str, parts: Any) -> int:
        return self.store.put(name, parts)


def _fetch(refs: list[dict[str, Any]], store: WorkerStore) -> list[bytes | memoryview]:
    """Every frame the activation reads, stored ones fetched concurrently."""
    return protocol.fetch_frames(refs, store, _io_pool.map)


def _function_loader(store: WorkerStore, mac_key: bytes):
    """What a spec's references to shared functions resolve with: the container's cache, else
    the job's stored copy (checked against the job's key like any frame)."""
    def load(name: str) -> Any:
        function = _functions.pop(name, None)
        if function is None:
            function = pickle.loads(protocol.decode(store.get(name), mac_key, name))
        _functions[name] = function
        while len(_functions) > FUNCTION_CACHE:
            del _functions[next(iter(_functions))]
        return function
    return load


def _execute(spec: protocol.UnitSpec, inputs: dict) -> tuple[list[Any], list[list]]:
    """Run the unit's tasks in their given (dependency-respecting) order; return its outputs
    and the distinct warnings they raised (the client shows each once per job).

    A value is dropped once the last task reading it has run, unless it is an output, so a
    unit holds what its remaining tasks need, not everything it made. ``inputs`` is consumed."""
    last_reader = {dep: index for index, node in enumerate(spec.tasks.values()) for dep in node.dependencies}
    outputs = set(spec.outputs)
    cache = inputs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for index, (key, node) in enumerate(spec.tasks.items()):
            try:
                cache[key] = node(cache)
            except Exception as exc:
                raise _TaskFailed(key, exc) from exc
            for dep in node.dependencies:
                if last_reader[dep] == index and dep not in outputs:
                    del cache[dep]
    distinct = list(dict.fromkeys(tuple(protocol.warning_entry(w)) for w in caught))
    return [cache[key] for key in spec.outputs], [list(w) for w in distinct[:MAX_WARNINGS]]


class _Placer:
    """Inlines small outputs while the result's budget lasts and stores the rest: those up to
    BUNDLE_VALUE_BYTES together in bundles (one request for many values), larger ones alone,
    concurrently. :meth:`finish` writes the last bundle and waits for every write."""

    def __init__(self, inv: protocol.Invocation, store: WorkerStore) -> None:
        self.inv, self.store = inv, store
        self.budget = protocol.INLINE_TOTAL_BYTES
        self.writes: list = []
        self.bundle: list = []  # sealed parts of the open bundle
        self.bundle_name, self.bundle_size, self.bundles = "", 0, 0

    def place(self, values: list[Any], names: list[str], prefix: str) -> tuple[list[dict], int]:
        """Descriptors of one unit's outputs (``names``); ``prefix`` names its new bundles."""
        frames = [protocol.encode(v, self.inv.mac_key) for v in values]
        sizes = [protocol.frame_size(parts) for parts in frames]
        refs: list[dict] = []
        large = []  # written before the next unit runs, so large values are not held
        for parts, size, name in zip(frames, sizes, names, strict=True):
            if size <= protocol.INLINE_VALUE_BYTES and size <= self.budget:
                self.budget -= size
                refs.append(protocol.inline_ref(protocol.join(parts)))
                continue
            self.budget -= protocol.STORED_REF_BYTES
            sealed = protocol.seal(parts, self.inv.mac_key, name)
            if size > protocol.BUNDLE_VALUE_BYTES:
                large.append(_io_pool.submit(self.store.put, name, sealed))
                refs.append(protocol.stored_ref(name, size))
                continue
            if not self.bundle:
                self.bundle_name = f"{prefix}b{self.bundles}"
                self.bundles += 1
            refs.append(protocol.bundled_ref(self.bundle_name, self.bundle_size, size, name))
            self.bundle.extend(sealed)
            self.bundle_size += size
            if self.bundle_size >= protocol.BUNDLE_BYTES:
                self._write_bundle()
        for write in large:
            write.result()
        return refs, sum(sizes)

    def _write_bundle(self) -> None:
        if self.bundle:
            self.writes.append(_io_pool.submit(self.store.put, self.bundle_name, self.bundle))
        self.bundle, self.bundle_size = [], 0

    def finish(self) -> None:
        """Write the open bundle; wait for all writes (raising the first failure)."""
        self._write_bundle()
        for write in self.writes:
            write.result()


def _use_runtime(grant: dict[str, Any]) -> float:
    """Put the runtime ``grant`` names on ``sys.path``, fetching and unpacking it into this
    container's temporary directory on first use; the seconds that took (0.0 when warm).

    The zip is read in ranges to a file and its hash checked before anything is unpacked; the
    tree is unpacked beside its final name and renamed into place, so no import ever sees half
    of it, and a lock keeps two threads of one container from doing it twice."""
    digest = grant["digest"]
    with _runtime_lock:
        if digest in _runtimes:
            return 0.0
        started = time.perf_counter()
        target = os.path.join(tempfile.gettempdir(), f"dask-whisk-runtime-{digest[:32]}")
        if not os.path.isdir(target):
            store = open_worker_store(grant["store"])
            check = hashlib.sha256()
            with tempfile.TemporaryDirectory(prefix=".dask-whisk-runtime-") as scratch:
                packed = os.path.join(scratch, "runtime.zip")
                with open(packed, "wb") as f:
                    for start in range(0, grant["nbytes"], RUNTIME_RANGE_BYTES):
                        chunk = store.get_range(grant["object"], start,
                                                min(start + RUNTIME_RANGE_BYTES, grant["nbytes"]))
                        check.update(chunk)
                        f.write(chunk)
                if check.hexdigest() != digest:
                    raise protocol.TamperedObject(
                        f"The runtime {grant['name']!r} read from the store does not match its "
                        f"hash {digest[:16]}: it was changed after it was built; rebuild it with "
                        "`dask-whisk runtime build`")
                unpacked = os.path.join(scratch, "tree")
                with zipfile.ZipFile(packed) as archive:
                    archive.extractall(unpacked)
                os.rename(unpacked, target)
        sys.path.insert(0, target)
        importlib.invalidate_caches()
        _runtimes[digest] = target
        return time.perf_counter() - started


def _pong(args: dict[str, Any]) -> dict[str, Any]:
    """Answer a health check; with a store descriptor, prove the store is writable from here."""
    answer = {
        "pong": True,
        "dask_whisk": dask_whisk.__version__,
        "protocol": protocol.PROTOCOL_VERSION,
        "python": platform.python_version(),
        "cold": _served == 1,
    }
    if args.get("store") and args.get("probe"):
        store = open_worker_store(args["store"])
        data = b"dask-whisk store probe"
        store.put(args["probe"], [data])
        answer["store_ok"] = bytes(store.get(args["probe"])) == data
    return answer


def _calls(inv: protocol.Invocation, store: WorkerStore) -> tuple[list[protocol.UnitCall], WorkerStore]:
    """The invocation's units and the store grant they use: read from the manifest (whose own
    grant reads only the manifest) when the entries did not fit OpenWhisk's payload limit."""
    if inv.manifest is None:
        return inv.units, store
    manifest = protocol.decode(_fetch([inv.manifest], store)[0], inv.mac_key, protocol.ref_name(inv.manifest))
    return [protocol.UnitCall.from_json(e) for e in manifest["units"]], open_worker_store(manifest["store"])


def main(args: dict[str, Any]) -> dict[str, Any]:
    """OpenWhisk entry point: run the units described by ``args``; see ``dask_whisk.protocol``."""
    global _served
    _served += 1
    if args.get("ping"):
        return _pong(args)
    started = time.perf_counter()
    inv = protocol.Invocation.from_json(args)
    swift_grants.install(inv.grants)  # the job's swift:// paths: the only ones its tasks may use
    store = open_worker_store(inv.store)
    try:
        runtime_s = _use_runtime(inv.runtime) if inv.runtime else 0.0
        calls, store = _calls(inv, store)
        recent = _Recent(store, inv.job)
        frames = iter(_fetch([ref for c in calls for ref in (c.spec, *c.inputs)], recent))
        fetched = time.perf_counter()
    except protocol.TamperedObject as exc:  # the client gets this exception type back
        return protocol.error_envelope(exc, inv.job, inv.mac_key)
    placer = _Placer(inv, store)
    functions = _function_loader(store, inv.mac_key)
    results = []
    for call in calls:
        unit_started = time.perf_counter()
        spec_frame = next(frames)
        input_frames = [next(frames) for _ in call.inputs]
        try:
            spec: protocol.UnitSpec = protocol.decode(spec_frame, inv.mac_key, protocol.ref_name(call.spec),
                                                      functions)
            inputs = {key: protocol.decode(f, inv.mac_key, protocol.ref_name(ref))
                      for key, f, ref in zip(spec.inputs, input_frames, call.inputs, strict=True)}
        except protocol.TamperedObject as exc:
            return protocol.error_envelope(exc, call.unit, inv.mac_key)
        except ImportError as exc:  # a module the client has and the action does not
            exc.add_note(protocol.missing_module_advice(exc))
            return protocol.error_envelope(exc, call.unit, inv.mac_key)
        decoded = time.perf_counter()
        try:
            values, raised = _execute(spec, inputs)
        except _TaskFailed as failed:
            return protocol.error_envelope(failed.exc, failed.key, inv.mac_key, skip_files=_MACHINERY)
        del inputs
        computed = time.perf_counter()
        refs, bytes_out = placer.place(values, call.outputs, protocol.output_prefix(call.unit, call.attempt))
        del values
        results.append(protocol.UnitResult(refs, {
            "decode_s": decoded - unit_started,
            "compute_s": computed - decoded,
            "store_s": time.perf_counter() - computed,
            "bytes_in": sum(memoryview(f).nbytes for f in input_frames),
            "bytes_out": bytes_out,
        }, raised))
        del input_frames, spec_frame
    finishing = time.perf_counter()
    placer.finish()
    if results:  # the last bundle's write: part of storing
        results[-1].stats["store_s"] += time.perf_counter() - finishing
    _give_back_memory()
    envelope = protocol.BatchResult(results, {
        "duration_s": time.perf_counter() - started,
        "fetch_s": fetched - started,
        "reused_bytes": recent.reused,
        "runtime_s": runtime_s,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "cold": _served == 1,
        "pid": os.getpid(),
    }).to_json()
    if len(json.dumps(envelope)) <= protocol.PAYLOAD_BUDGET_BYTES:
        return envelope
    # many units or outputs: even their descriptors would pass OpenWhisk's 1 MiB result limit
    name = protocol.result_name(calls[0].unit, calls[0].attempt)
    sealed = protocol.seal(protocol.encode(envelope, inv.mac_key), inv.mac_key, name)
    return protocol.BatchResult.stored(protocol.stored_ref(name, store.put(name, sealed)))
