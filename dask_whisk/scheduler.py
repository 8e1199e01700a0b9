"""The get-function: a Dask graph in, results out, every work unit an OpenWhisk activation.

Shaped like ``dask.local.get_async``: this thread owns the state and runs Dask's callbacks; the
backend's event loop thread does the invoking. Ready units go out in ``dask.order`` priority, as
many at once as the namespace allows; a finished unit releases its dependents and frees values no
one will read again; the first failure stops dispatching and is raised here.
"""
from __future__ import annotations

import heapq
import queue
from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import dask.config
from dask.callbacks import local_callbacks, unpack_callbacks
from dask.local import nested_get

from .backend import get_backend
from .job import Job
from .plan import Plan, as_task_graph, build_plan, flat_keys

Key = Hashable

# Users should see their own frames in a traceback, not the scheduler's.
dask.config.update(
    dask.config.config,
    {"admin": {"traceback": {"shorten": [*dask.config.get("admin.traceback.shorten", []), r"dask_whisk[\\/]"]}}},
)


def _callback_state(plan: Plan) -> dict[str, Any]:
    """The ``state`` dict Dask's callbacks read (ProgressBar counts ready/waiting/running/finished)."""
    dependencies = {
        key: {plan.source(d) for d in node.dependencies} - set(plan.data)
        for unit in plan.units.values() for key, node in unit.tasks.items()
    }
    dependents: dict[Key, set] = {key: set() for key in dependencies}
    for key, deps in dependencies.items():
        for dep in deps:
            dependents.setdefault(dep, set()).add(key)
    return {
        "dependencies": dependencies,
        "dependents": dependents,
        "waiting": {k: set(v) for k, v in dependencies.items() if v},
        "waiting_data": {k: set(v) for k, v in dependents.items() if v},
        # an insertion-ordered set (Dask's own schedulers keep a list; callbacks only size and scan it)
        "ready": dict.fromkeys(k for k, v in dependencies.items() if not v),
        "running": set(),
        "finished": set(),
        "released": set(),
        "cache": {},
    }


def _mark(state: dict[str, Any], keys: Sequence[Key], where: str) -> None:
    """Move ``keys`` into ``where`` ('ready', 'running' or 'finished') of the callback state."""
    for key in keys:
        if where == "ready":
            state["waiting"].pop(key, None)
            state["ready"][key] = None
        elif where == "running":
            state["ready"].pop(key, None)
            state["running"].add(key)
        else:
            state["running"].discard(key)
            state["finished"].add(key)


def get(dsk: Mapping | Any, keys: Sequence[Key] | Key, callbacks=None, **kwargs: Any) -> Any:
    """Compute ``keys`` of ``dsk`` on OpenWhisk; results in the nested structure of ``keys``.

    Accepts whatever Dask hands a scheduler (a graph mapping or a collection expression);
    unknown keyword arguments are ignored, as by Dask's own schedulers.
    """
    graph = as_task_graph(dsk if isinstance(dsk, Mapping) else dsk.__dask_graph__())
    plan = build_plan(graph, keys)
    backend = get_backend()
    job = Job(backend, plan)
    with local_callbacks(callbacks) as cbs:
        start, start_state, pretask, posttask, finish = unpack_callbacks(cbs)
        state: dict[str, Any] = {}
        failed = True
        try:
            for f in start:
                f(graph)
            state = _callback_state(plan)
            for f in start_state:
                f(graph, state)
            job.prepare()
            wanted = flat_keys(keys)
            cap = dask.config.get("whisk.max-in-flight")
            _run(job, graph, wanted, state, pretask, posttask, min(backend.max_in_flight, cap or backend.max_in_flight))
            results = job.values(wanted)
            failed = False
        finally:
            try:
                for f in finish:
                    f(graph, state, failed)
            finally:
                job.close()
    return nested_get(keys, results)


def _run(job: Job, graph: Mapping, wanted: list[Key], state: dict[str, Any], pretask, posttask,
         max_in_flight: int) -> None:
    """Dispatch units as their inputs complete until all are done; raise the first failure."""
    plan = job.plan
    waiting = {name: set(deps) for name, deps in plan.dependencies.items()}
    ready = [(plan.units[n].priority, n) for n, deps in waiting.items() if not deps]
    heapq.heapify(ready)
    readers = plan.consumers()
    keep = {plan.source(k) for k in wanted}
    done: queue.Queue[tuple[str, Future]] = queue.Queue()
    running: dict[str, Future] = {}
    try:
        while ready or running:
            while ready and len(running) < max_in_flight:
                _, name = heapq.heappop(ready)
                unit = plan.units[name]
                _mark(state, list(unit.tasks), "running")
                for key in unit.tasks:
                    for f in pretask:
                        f(key, graph, state)
                future = job.backend.io.submit(job.run_unit(unit))
                future.add_done_callback(lambda fut, name=name: done.put((name, fut)))
                running[name] = future
            name, future = done.get()
            del running[name]
            activation_id = future.result()  # raises the unit's failure
            unit = plan.units[name]
            _mark(state, list(unit.tasks), "finished")
            for key in unit.tasks:
                for f in posttask:
                    f(key, None, graph, state, activation_id)
            for child in plan.dependents[name]:
                waiting[child].discard(name)
                if not waiting[child]:
                    _mark(state, list(plan.units[child].tasks), "ready")
                    heapq.heappush(ready, (plan.units[child].priority, child))
            released = []
            for key in {plan.source(k) for k in unit.inputs}:
                readers[key].discard(name)
                if not readers[key] and key not in keep:
                    released.append(key)
            if released:
                job.backend.io.submit(job.release(released))
    finally:
        for future in running.values():
            future.cancel()

