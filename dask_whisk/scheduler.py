"""The get-function: a Dask graph in, results out, every work unit an OpenWhisk activation.

Shaped like ``dask.local.get_async``: this thread owns the state and runs Dask's callbacks; the
backend's event loop thread does the invoking. Ready units go out in ``dask.order`` priority, as
many at once as the namespace allows; a finished unit releases its dependents and frees values no
one will read again; the first failure stops dispatching and is raised here.
"""
from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
import logging
import queue
import statistics
import time
from collections.abc import Hashable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import dask.config
from dask.callbacks import local_callbacks, unpack_callbacks
from dask.local import nested_get
from dask.utils import key_split

from .assemble import assemble
from .backend import get_backend
from .callback_state import callback_state, mark
from .fuse import FuseSettings
from .job import Job
from .plan import Unit, annotated, array_layouts, as_task_graph, build_plan, flat_keys, known_sizes
from .runtime import job_runtime
from .diagnostics import begin, record

Key = Hashable
logger = logging.getLogger(__name__)

# Users should see their own frames in a traceback, not the scheduler's.
dask.config.update(
    dask.config.config,
    {"admin": {"traceback": {"shorten": [*dask.config.get("admin.traceback.shorten", []), r"dask_whisk[\\/]"]}}},
)


def fuse_settings(parallelism: int) -> FuseSettings:
    """The grouping limits for this configuration: the concurrency to keep busy, and a unit's
    known bytes within a quarter of the action's memory, the bytes of array work worth a unit."""
    memory_mb = dask.config.get("whisk.action-memory") or 512
    return FuseSettings(fuse=bool(dask.config.get("whisk.fuse")), parallelism=parallelism,
                        large_bytes=int(dask.config.get("whisk.fuse-large-bytes")),
                        max_bytes=memory_mb * 1024 * 1024 // 4,
                        unit_bytes=int(dask.config.get("whisk.fuse-unit-bytes") or 0))


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a graph is planned. Planning a large graph
    makes millions of objects that live as long as the job, and each collection they trigger
    walks the whole growing heap again: a third of the client's CPU on 100,000 tasks. The
    collector runs again as before afterwards, whatever happens."""
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def get(dsk: Mapping | Any, keys: Sequence[Key] | Key, callbacks=None, runtime: str | None = None,
        **kwargs: Any) -> Any:
    """Compute ``keys`` of ``dsk`` on OpenWhisk; results in the nested structure of ``keys``.

    Accepts whatever Dask hands a scheduler (a graph mapping or a collection expression);
    unknown keyword arguments are ignored, as by Dask's own schedulers. ``runtime``: the name of
    a runtime in the store (``dask-whisk runtime build``) the activations use; else
    ``whisk.runtime``.
    """
    started = time.perf_counter()
    cap = dask.config.get("whisk.max-in-flight")
    if cap is not None and int(cap) <= 0:
        raise ValueError(f"whisk.max-in-flight must be a positive number of activations (or None "
                         f"for the namespace's limit), not {cap!r}")
    with gc_paused():
        graph = as_task_graph(dsk if isinstance(dsk, Mapping) else dsk.__dask_graph__())
        backend = get_backend()
        max_in_flight = min(backend.max_in_flight, cap or backend.max_in_flight)
        parallelism = min(max_in_flight, dask.config.get("whisk.parallelism") or backend.parallelism)
        # beyond twice what runs at once, activations only queue in the platform (and look slow)
        max_in_flight = min(max_in_flight, 2 * parallelism)
        sizes = known_sizes(dsk, graph)  # array chunks' bytes, from their layers' annotations
        sources = {k: sizes[k] for k, node in graph.items() if not node.dependencies and k in sizes}
        plan = build_plan(graph, keys, sources, fuse_settings(parallelism))
    job = Job(backend, plan, retries=annotated(dsk, "retries"), sizes=sizes,
              runtime=job_runtime(runtime))
    begin(job.report)
    with local_callbacks(callbacks) as cbs:
        start, start_state, pretask, posttask, finish = unpack_callbacks(cbs)
        state: dict[str, Any] = {}
        failed = True
        try:
            for f in start:
                f(graph)
            if cbs:  # Dask's state dict only for callbacks to read: it costs ~10 us a task
                state = callback_state(plan)
            for f in start_state:
                f(graph, state)
            job.prepare()
            job.report.plan_s = time.perf_counter() - started
            wanted = flat_keys(keys)
            remote = [k for k in wanted if plan.source(k) not in plan.local]
            remote += [d for node in plan.local.values() for d in node.dependencies
                       if plan.source(d) not in plan.local]
            _run(job, graph, remote, state, pretask, posttask, max_in_flight, parallelism)
            results = assemble(job, wanted, remote, graph, state, pretask, posttask,
                               array_layouts(dsk) if plan.local else {})
            failed = False
        except BaseException as exc:
            _close(job, exc)
            raise
        else:
            _close(job, None)
        finally:
            for f in finish:
                f(graph, state, failed)
            job.report.failed = failed
            job.report.max_attempts = max(job.attempts.values(), default=0)
            job.report.critical_path_s = plan.critical_path(job.unit_seconds)
            job.report.wall_s = time.perf_counter() - started
            record(job.report)
    return nested_get(keys, results)


def _close(job: Job, failure: BaseException | None) -> None:
    """Delete the job's objects. A cleanup error never replaces the job's outcome: after success
    it is logged with the way out, after a failure it is a note on the user's exception."""
    try:
        job.close()
    except Exception as exc:  # noqa: BLE001
        advice = (f"Could not delete the objects of job {job.id} ({type(exc).__name__}: {exc}); "
                  f"`dask-whisk clean --older-than 0` removes them")
        if failure is None:
            logger.warning(advice)
        else:
            failure.add_note(advice)


class Batcher:
    """How many ready units share the next activation.

    Enough that the ready work fills the concurrency evenly, no more than about
    ``whisk.unit-target-seconds`` of measured work per activation (a kind of unit never seen
    finishing yet is probed with a few), and only units whose stored inputs are small: a unit
    reading large values gets an activation (and its memory) of its own.
    """

    #: units of a kind with no measured duration yet that may share an activation
    PROBE_UNITS = 8
    #: stored input bytes a unit may read and still be batched
    SMALL_INPUT_BYTES = 4 * 1024 * 1024

    def __init__(self, job: Job, parallelism: int) -> None:
        self.job, self.parallelism = job, parallelism
        self.target = float(dask.config.get("whisk.unit-target-seconds"))
        self.max_units = max(1, int(dask.config.get("whisk.batch-max-units")))
        #: kind -> (units finished, their total seconds)
        self.measured: dict[str, tuple[int, float]] = {}

    @staticmethod
    def kind(unit: Unit) -> str:
        """The name prefix of the unit's last task: units of one kind take about as long."""
        return key_split(unit.keys[-1])

    def batchable(self, unit: Unit) -> bool:
        """Whether ``unit`` reads few enough stored bytes to share an activation's memory."""
        refs = self.job.refs
        stored = sum(refs[s]["nbytes"] for s in map(self.job.plan.source, unit.inputs) if "stored" in refs[s])
        return stored <= self.SMALL_INPUT_BYTES

    def size(self, unit: Unit, ready: int) -> int:
        """Units to put in the activation that ``unit`` (the first, ``ready`` waiting) starts."""
        if not self.batchable(unit):
            return 1
        even = -(-ready // self.parallelism)
        count, seconds = self.measured.get(self.kind(unit), (0, 0.0))
        by_time = self.PROBE_UNITS if not count else int(self.target / max(seconds / count, 1e-6))
        return max(1, min(even, by_time, self.max_units))

    def finished(self, unit: Unit) -> None:
        """Add a finished unit's measured decode, compute and store time to its kind's."""
        stats = self.job.stats.get(unit.name, {})
        count, seconds = self.measured.get(self.kind(unit), (0, 0.0))
        spent = stats.get("decode_s", 0.0) + stats.get("compute_s", 0.0) + stats.get("store_s", 0.0)
        self.measured[self.kind(unit)] = (count + 1, seconds + spent)


@dataclass
class _Flight:
    """One batch of units in the air: its copies (the first attempt and any backups)."""

    batch: list[Unit]
    futures: list[Future] = field(default_factory=list)


class Slots:
    """Which activations in flight can be running: the first ``parallelism`` launched; the rest
    wait in the platform's queue, and their clock starts when one ahead of them ends. So time
    queued for a container never makes a healthy activation look like a straggler."""

    def __init__(self, parallelism: int) -> None:
        self.parallelism = parallelism
        self.started: dict[Future, float] = {}
        self.queued: dict[Future, None] = {}  # insertion-ordered: launch order

    def launch(self, future: Future, now: float) -> None:
        """A new activation: running from ``now`` if a slot is free, else queued behind the rest."""
        if len(self.started) < self.parallelism:
            self.started[future] = now
        else:
            self.queued[future] = None

    def end(self, future: Future, now: float) -> float | None:
        """Forget ``future`` (done or cancelled); its start time if it had one."""
        self.queued.pop(future, None)
        began = self.started.pop(future, None)
        while self.queued and len(self.started) < self.parallelism:
            waiting = next(iter(self.queued))
            del self.queued[waiting]
            self.started[waiting] = now
        return began


class Stragglers:
    """When a batch in flight deserves a backup copy (first result wins).

    Cubed's rule, on the time the worker reports an activation ran: a copy once at least
    ``MIN_FINISHED`` activations have finished, more than half of those launched so far, and the
    newest copy has held its slot (see :class:`Slots`) for longer than ``SLOWDOWN`` times the
    median run of finished ones of its kind (of all kinds while its own has fewer), at least
    ``MIN_SECONDS``, plus the largest overhead a finished one had beyond its run (invoke latency,
    a cold start): a burst of cold starts is not a set of stragglers, and a hang is caught a few
    warm runs after it began. At most ``MAX_COPIES`` copies in all.
    """

    MIN_FINISHED = 3
    SLOWDOWN = 3.0
    MIN_SECONDS = 1.0
    MAX_COPIES = 3

    def __init__(self) -> None:
        self.enabled = bool(dask.config.get("whisk.backups"))
        self.runs: dict[str, list[float]] = {}
        self.all: list[float] = []
        self.overhead = 0.0
        self.launched = 0

    def launching(self) -> None:
        """Count one more activation launched (backups wait until most of them have finished)."""
        self.launched += 1

    def finished(self, flight: _Flight, held_s: float | None, run_s: float) -> None:
        """A copy of ``flight`` finished after holding its slot ``held_s`` (None: never had one)."""
        self.runs.setdefault(Batcher.kind(flight.batch[0]), []).append(run_s)
        self.all.append(run_s)
        if held_s is not None:
            self.overhead = max(self.overhead, held_s - run_s)

    def due(self, flight: _Flight, slots: Slots, now: float) -> bool:
        """Whether ``flight`` has run long enough by the rule above to get a backup copy now."""
        began = slots.started.get(flight.futures[-1])
        finished = len(self.all)
        if (not self.enabled or began is None or finished < self.MIN_FINISHED
                or 2 * finished <= self.launched or len(flight.futures) >= self.MAX_COPIES):
            return False
        same = self.runs.get(Batcher.kind(flight.batch[0]), [])
        median = statistics.median(same if len(same) >= self.MIN_FINISHED else self.all)
        return now - began > max(self.MIN_SECONDS, self.SLOWDOWN * median) + self.overhead


#: how often the dispatcher looks for stragglers while it waits (seconds)
STRAGGLER_POLL = 0.1


def _run(job: Job, graph: Mapping, wanted: list[Key], state: dict[str, Any], pretask, posttask,
         max_in_flight: int, parallelism: int) -> None:
    """Dispatch units as their inputs complete until all are done; raise the first failure."""
    plan = job.plan
    waiting = {name: set(deps) for name, deps in plan.dependencies.items()}
    ready = [(plan.units[n].priority, n) for n, deps in waiting.items() if not deps]
    heapq.heapify(ready)
    readers = plan.consumers()
    keep = {plan.source(k) for k in wanted}
    batcher = Batcher(job, parallelism)
    stragglers = Stragglers()
    slots = Slots(parallelism)
    done: queue.Queue[tuple[int, Future]] = queue.Queue()
    flights: dict[int, _Flight] = {}
    in_flight = units_in_flight = 0
    ids = itertools.count()

    def launch(fid: int) -> None:
        nonlocal in_flight
        backup = bool(flights[fid].futures)  # a copy of a batch already in flight
        future = job.backend.io.submit(job.run_units(flights[fid].batch, backup))
        flights[fid].futures.append(future)
        slots.launch(future, time.monotonic())
        in_flight += 1
        future.add_done_callback(lambda fut: done.put((fid, fut)))

    try:
        while ready or flights:
            while ready and in_flight < max_in_flight:
                first = plan.units[heapq.heappop(ready)[1]]
                batch = [first]
                # share out all the work at hand, in flight included: sized by what is ready
                # alone, each slot freed one at a time would take half of what is left
                size = batcher.size(first, len(ready) + 1 + units_in_flight)
                while ready and len(batch) < size and batcher.batchable(plan.units[ready[0][1]]):
                    batch.append(plan.units[heapq.heappop(ready)[1]])
                job.wait_specs(batch)
                for unit in batch:
                    mark(state, unit.keys, "running")
                    for key in unit.keys:
                        for f in pretask:
                            f(key, graph, state)
                fid = next(ids)
                flights[fid] = _Flight(batch)
                units_in_flight += len(batch)
                stragglers.launching()
                launch(fid)
            try:
                fid, future = done.get(timeout=STRAGGLER_POLL)
            except queue.Empty:
                if not job.backend.io.loop.is_running():
                    raise RuntimeError(
                        "The OpenWhisk backend of this job was closed while it ran (the embedded "
                        "server was restarted by another thread, or the client shut down): its "
                        "activations' results can no longer arrive. Run the computation again.")
                now = time.monotonic()
                for fid, flight in list(flights.items()):
                    # a backup never adds to what is in flight beyond the limit (nor to a backlog)
                    if in_flight < max_in_flight and not slots.queued and stragglers.due(flight, slots, now):
                        logger.debug("backing up units %s after %.1f s (overhead allowed %.1f s)",
                                     [u.name for u in flight.batch],
                                     now - slots.started[flight.futures[-1]], stragglers.overhead)
                        job.report.backups += 1
                        launch(fid)
                continue
            in_flight -= 1
            began = slots.end(future, time.monotonic())
            flight = flights.get(fid)
            if flight is None or future.cancelled():
                continue  # a copy of a batch another copy already finished
            flight.futures.remove(future)
            if future.exception() is not None and flight.futures:
                continue  # another copy is still running: its outcome decides
            ran = future.result()  # raises the batch's failure
            del flights[fid]
            units_in_flight -= len(flight.batch)
            for loser in flight.futures:
                loser.cancel()
            now = time.monotonic()
            stragglers.finished(flight, None if began is None else now - began, ran.duration_s)
            _finish(job, flight.batch, ran.activation_id, graph, state, posttask, batcher, waiting,
                    ready, readers, keep)
    finally:
        airborne = sum(len(f.futures) for f in flights.values())
        if airborne:
            logger.warning("Stopping with %d activations in flight; their results will be discarded",
                           airborne)
        for flight in flights.values():
            for future in flight.futures:
                future.cancel()


def _finish(job: Job, batch: list[Unit], activation_id: str, graph: Mapping, state: dict[str, Any],
            posttask, batcher: Batcher, waiting: dict[str, set], ready: list, readers: dict,
            keep: set) -> None:
    """A batch is done: release its dependents and values no one will read, then run the
    callbacks (as in Dask's schedulers, posttask sees the dependents already ready)."""
    plan = job.plan
    released = []
    for unit in batch:
        batcher.finished(unit)
        mark(state, unit.keys, "finished")
        for child in plan.dependents[unit.name]:
            waiting[child].discard(unit.name)
            if not waiting[child]:
                mark(state, plan.units[child].keys, "ready")
                heapq.heappush(ready, (plan.units[child].priority, child))
        for key in {plan.source(k) for k in unit.inputs}:
            readers[key].discard(unit.name)
            if not readers[key] and key not in keep:
                released.append(key)
    for unit in batch:
        for key in unit.keys:
            for f in posttask:
                f(key, None, graph, state, activation_id)
    if released:
        job.release_soon(released)
    job.raise_warnings()
