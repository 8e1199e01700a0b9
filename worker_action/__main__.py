"""The dask-whisk worker action: one work unit per OpenWhisk activation.

Deployed as is to any OpenWhisk Python runtime (``main(args) -> dict``). It reads the unit, fetches
its stored inputs concurrently, runs the tasks with Dask's task-spec execution, and inlines or
stores each output, answering with the result envelope of ``dask_whisk.protocol``.
"""
from __future__ import annotations

import json
import os

# Parallelism comes from many activations, each given a share of a core: a BLAS pool per
# activation would oversubscribe the invoker's cores (measured: 8x slower QR on 2 cores).
# Set before anything imports numpy; an explicit setting in the environment wins.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
import platform
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dask import _task_spec

import dask_whisk
from dask_whisk import protocol
from dask_whisk.store import WorkerStore, open_worker_store

#: activations served by this container process so far (0 during the first: a cold start)
_served = 0
_io_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dask-whisk-io")
#: files whose frames start every task's traceback: left out of the traceback users see
_MACHINERY = (__file__, _task_spec.__file__)


class _TaskFailed(Exception):
    def __init__(self, key: Any, exc: BaseException):
        self.key, self.exc = key, exc


def _read(ref: dict[str, Any], store: WorkerStore) -> bytes | memoryview:
    return protocol.unb64(ref["inline"]) if "inline" in ref else store.get(ref["stored"])


def _fetch(refs: list[dict[str, Any]], store: WorkerStore) -> list[bytes | memoryview]:
    """Every frame the activation reads, stored ones fetched concurrently."""
    return list(_io_pool.map(lambda ref: _read(ref, store), refs))


def _execute(spec: protocol.UnitSpec, inputs: dict) -> list[Any]:
    """Run the unit's tasks in their given (dependency-respecting) order; return its outputs."""
    cache = dict(inputs)
    for key, node in spec.tasks.items():
        try:
            cache[key] = node(cache)
        except Exception as exc:
            raise _TaskFailed(key, exc) from exc
    return [cache[key] for key in spec.outputs]


class _Placer:
    """Inlines small outputs while the result's budget lasts; stores the rest (concurrently)."""

    def __init__(self, inv: protocol.Invocation, store: WorkerStore) -> None:
        self.inv, self.store = inv, store
        self.budget = protocol.INLINE_TOTAL_BYTES

    def place(self, values: list[Any], names: list[str]) -> tuple[list[dict], int]:
        frames = [protocol.encode(v, self.inv.mac_key) for v in values]
        sizes = [protocol.frame_size(parts) for parts in frames]
        refs: list[dict | None] = [None] * len(frames)
        to_store = []
        for i, (parts, size) in enumerate(zip(frames, sizes, strict=True)):
            if size <= protocol.INLINE_VALUE_BYTES and size <= self.budget:
                self.budget -= size
                refs[i] = protocol.inline_ref(protocol.join(parts))
            else:
                self.budget -= protocol.STORED_REF_BYTES
                to_store.append(i)

        def put(i: int) -> None:
            sealed = protocol.seal(frames[i], self.inv.mac_key, names[i])
            refs[i] = protocol.stored_ref(names[i], self.store.put(names[i], sealed))

        list(_io_pool.map(put, to_store))
        return refs, sum(sizes)


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
    manifest = protocol.decode(_read(inv.manifest, store), inv.mac_key, protocol.ref_name(inv.manifest))
    return [protocol.UnitCall.from_json(e) for e in manifest["units"]], open_worker_store(manifest["store"])


def main(args: dict[str, Any]) -> dict[str, Any]:
    """OpenWhisk entry point: run the units described by ``args``; see ``dask_whisk.protocol``."""
    global _served
    _served += 1
    if args.get("ping"):
        return _pong(args)
    started = time.perf_counter()
    inv = protocol.Invocation.from_json(args)
    store = open_worker_store(inv.store)
    try:
        calls, store = _calls(inv, store)
        frames = iter(_fetch([ref for c in calls for ref in (c.spec, *c.inputs)], store))
    except protocol.TamperedObject as exc:  # the client gets this exception type back
        return protocol.error_envelope(exc, inv.job, inv.mac_key)
    placer = _Placer(inv, store)
    results = []
    for call in calls:
        unit_started = time.perf_counter()
        spec_frame = next(frames)
        input_frames = [next(frames) for _ in call.inputs]
        try:
            spec: protocol.UnitSpec = protocol.decode(spec_frame, inv.mac_key, protocol.ref_name(call.spec))
            inputs = {key: protocol.decode(f, inv.mac_key, protocol.ref_name(ref))
                      for key, f, ref in zip(spec.inputs, input_frames, call.inputs, strict=True)}
        except protocol.TamperedObject as exc:
            return protocol.error_envelope(exc, call.unit, inv.mac_key)
        decoded = time.perf_counter()
        try:
            values = _execute(spec, inputs)
        except _TaskFailed as failed:
            return protocol.error_envelope(failed.exc, failed.key, inv.mac_key, skip_files=_MACHINERY)
        del inputs
        computed = time.perf_counter()
        refs, bytes_out = placer.place(values, call.outputs)
        del values
        results.append(protocol.UnitResult(refs, {
            "decode_s": decoded - unit_started,
            "compute_s": computed - decoded,
            "store_s": time.perf_counter() - computed,
            "bytes_in": sum(memoryview(f).nbytes for f in input_frames),
            "bytes_out": bytes_out,
        }))
        del input_frames, spec_frame
    envelope = protocol.BatchResult(results, {
        "duration_s": time.perf_counter() - started,
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
