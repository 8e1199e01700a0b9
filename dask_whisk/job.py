"""One computation on a backend: its store namespace, its MAC key, where each value is, and how
one work unit becomes one activation and back.

The client never unpickles intermediate values: it moves their frames (inline base64 text or
store names) from the unit that produced them to the units that read them, and decodes only the
results the user asked for.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import random
import secrets
import threading
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from collections.abc import Hashable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import dask.config
from dask.utils import key_split

from . import protocol
from .backend import Backend
from .openwhisk import WhiskConnectionError, WhiskServerError, WhiskTimeout
from .plan import Plan, Unit
from .diagnostics import new_report
from .store import new_job_id, open_job_store, swift_grants

Key = Hashable
logger = logging.getLogger(__name__)

#: backoff before the second attempt of a unit, doubling per attempt up to the maximum (seconds)
RETRY_BACKOFF = 0.05
RETRY_BACKOFF_MAX = 2.0


def retryable(record: dict[str, Any] | None) -> bool:
    """Whether a failed attempt may succeed when run again: platform failures (no record at all,
    a whisk internal error, a lost container, the worker failing outside user code) are; user
    exceptions and exhausted memory or time limits are not (they would fail the same way)."""
    if record is None:
        return True
    response = record.get("response", {})
    status, result = response.get("status"), response.get("result") or {}
    if protocol.is_error_envelope(result):
        return False
    error = str(result.get("error", ""))
    if "exhausted its memory" in error or "time limit" in error:
        return False
    return status in ("whisk internal error", "action developer error", "application error")


def task_kinds(unit: Unit) -> set[tuple[str, int]]:
    """The kinds of task in ``unit``: name prefix and function. Chunks of one array operation
    share both, so serialising one of them shows whether all of them can be."""
    return {(key_split(key), id(getattr(node, "func", None))) for key, node in unit.tasks.items()}


class ActivationError(RuntimeError):
    """An activation failed for a reason other than an exception in user code."""

    def __init__(self, message: str, *, unit: str, activation_id: str | None, status: str | None):
        super().__init__(message)
        self.unit, self.activation_id, self.status = unit, activation_id, status


#: how long closing a job waits for what it has under way (deletes, cancelled copies)
RELEASE_WAIT_SECONDS = 10.0


class UnitTooLarge(MemoryError):
    """A unit's inputs alone exceed the action's memory: refused before it is invoked."""


class Ran(NamedTuple):
    """A batch's successful activation: its id, and how long it ran as the worker measured it."""

    activation_id: str
    duration_s: float


class Job:
    """State of one ``get`` call: created before the first invoke, destroyed after the last.

    ``retries``: key -> extra attempts after an exception in user code (``dask.annotate(retries=N)``);
    platform failures get ``whisk.retries`` whatever the task. ``sizes``: key -> output bytes
    known before running (array chunks), for messages."""

    def __init__(self, backend: Backend, plan: Plan, retries: Mapping[Key, int] | None = None,
                 sizes: Mapping[Key, int] | None = None, runtime: dict[str, Any] | None = None):
        self.backend = backend
        #: the grant of the runtime every activation puts on its path first, if any
        self.runtime = runtime
        #: grants on the user's swift:// data the graph names (made by :meth:`prepare`)
        self.grants: dict[str, Any] | None = None
        self.plan = plan
        self.retries = dict(retries or {})
        self.sizes = dict(sizes or {})
        self.id = new_job_id()
        self.mac_key = secrets.token_bytes(32)
        self.store = open_job_store(dask.config.get("whisk.store"), self.id)
        #: source key -> where its frame is (an inline or stored descriptor)
        self.refs: dict[Key, dict[str, Any]] = {}
        #: unit name -> where its spec frame is
        self.specs: dict[str, dict[str, Any]] = {}
        self.stats: dict[str, dict[str, Any]] = {}
        #: bundle object -> descriptors of its members still held (it is deleted at zero)
        self.bundle_members: collections.Counter[str] = collections.Counter()
        #: unit name -> attempts started (retries and backup copies); units whose outputs are taken
        self.attempts: dict[str, int] = {}
        self.done: set[str] = set()
        #: unit name -> seconds the activation whose outputs were taken ran (its record's duration)
        self.unit_seconds: dict[str, float] = {}
        #: set while none of the job's coroutines runs on the loop (attempts, deletes): a
        #: cancelled copy still ends there after its future says cancelled
        self._settled = threading.Event()
        self._settled.set()
        self._running = 0  # the loop's own count (only the loop thread changes it)
        self.closed = False
        #: warnings the activations raised, each distinct one once, for the caller's thread to
        #: raise again (appended on the event loop, taken by the scheduler: a deque is safe)
        self.warnings: collections.deque[tuple] = collections.deque()
        self._warned: set[tuple] = set()
        # a function is worth storing once and naming only when more than one unit may use it
        self._shared = protocol.SharedFunctions() if len(plan.units) > 1 else None
        self._encoded = threading.Condition()
        self._encode_error: BaseException | None = None
        self._encoder: threading.Thread | None = None
        self._counting = threading.Lock()
        self.report = new_report(memory_mb=backend.memory_mb, **{
            k: v for k, v in plan.summary().items() if k in ("tasks", "units", "remade", "critical_path_units")})

    # --- before the first invoke (client thread) -------------------------------------------

    def prepare(self) -> None:
        """Serialise the client-held values and, of each kind of task, the first unit, so that
        what cannot be pickled fails here, before any invoke; the other units are serialised in
        dispatch order by a thread of their own while the first ones run (see :meth:`wait_specs`).
        First, the graph's swift:// paths are granted (refused here if they cannot be)."""
        self.grants = swift_grants.for_graph(self.plan)
        for key, value in self.plan.data.items():
            self.refs[key] = self._count(self._place(protocol.object_name(key),
                                                     self._encode(value, f"value of {key!r}")))
        in_order = sorted(self.plan.units.values(), key=lambda u: u.priority)
        seen: set[tuple[str, int]] = set()
        for unit in in_order:
            if not (kinds := task_kinds(unit)) <= seen:
                seen |= kinds
                self.specs[unit.name] = self._spec(unit)
        if len(self.specs) < len(in_order):  # a small job is all serialised already
            self._encoder = threading.Thread(target=self._encode_rest, args=(in_order,), daemon=True,
                                             name=f"dask-whisk-encode-{self.id}")
            self._encoder.start()

    def _spec(self, unit: Unit) -> dict[str, Any]:
        """Serialise and place ``unit``'s spec, and store the shared functions it is the first to use."""
        spec = protocol.UnitSpec(tasks=unit.tasks, inputs=unit.inputs, outputs=unit.outputs)
        frame = self._encode(spec, f"task {next(iter(unit.tasks))!r}", self._shared)
        for name in list(self._shared.new if self._shared else ()):  # stored before any spec naming it is read
            payload = self._shared.new.pop(name)
            sealed = protocol.seal(protocol.encode(payload, self.mac_key), self.mac_key, name)
            self._count(protocol.stored_ref(name, self.store.put(name, sealed)))
        return self._count(self._place(f"spec-{unit.name}", frame,
                                       inline_limit=protocol.INLINE_TOTAL_BYTES // 2))

    def _encode_rest(self, in_order: list[Unit]) -> None:
        try:
            for unit in in_order:
                if self.closed:
                    return
                if unit.name not in self.specs:
                    ref = self._spec(unit)
                    with self._encoded:
                        self.specs[unit.name] = ref
                        self._encoded.notify_all()
        except BaseException as exc:  # noqa: BLE001  (raised in the scheduler's thread)
            with self._encoded:
                self._encode_error = exc
                self._encoded.notify_all()

    def wait_specs(self, units: list[Unit]) -> None:
        """Block until ``units``' specs are serialised; raise the error that stopped serialising."""
        with self._encoded:
            self._encoded.wait_for(lambda: self._encode_error is not None
                                   or all(u.name in self.specs for u in units))
            if not all(u.name in self.specs for u in units):
                raise self._encode_error

    def _count(self, ref: dict[str, Any]) -> dict[str, Any]:
        with self._counting:  # the encoder, the event loop and this thread all count
            self.report.add_ref(ref)
        return ref

    def _encode(self, value: Any, what: str, shared: protocol.SharedFunctions | None = None) -> protocol.Frame:
        try:
            return protocol.encode(value, self.mac_key, shared=shared)
        except Exception as exc:
            raise protocol.SerializationError(
                f"Could not serialise the {what} for OpenWhisk: {type(exc).__name__}: {exc}. "
                "Everything a task uses must be picklable with cloudpickle."
            ) from exc

    def _place(self, name: str, parts: protocol.Frame,
               inline_limit: int = protocol.INLINE_VALUE_BYTES) -> dict[str, Any]:
        size = protocol.frame_size(parts)
        if size <= inline_limit:
            return protocol.inline_ref(protocol.join(parts))
        return protocol.stored_ref(name, self.store.put(name, protocol.seal(parts, self.mac_key, name)))

    # --- units in an activation (event loop thread) ---------------------------------------

    def _calls(self, units: list[Unit]) -> list[protocol.UnitCall]:
        """The units' entries for a new attempt: numbered per unit across retries and backups."""
        calls = []
        for unit in units:
            attempt = self.attempts[unit.name] = self.attempts.get(unit.name, 0) + 1
            calls.append(protocol.UnitCall(
                unit=unit.name, attempt=attempt, spec=self.specs[unit.name],
                inputs=[self.refs[self.plan.source(k)] for k in unit.inputs],
                outputs=[protocol.output_name(unit.name, attempt, i) for i in range(len(unit.outputs))],
            ))
        return calls

    async def _access(self, read: list[str], write: list[str]) -> dict[str, Any]:
        """The store's grant for an activation, off the event loop if getting it may block."""
        if not self.store.access_blocks:
            return self.store.worker_access(read, write)
        return await asyncio.get_running_loop().run_in_executor(None, self.store.worker_access, read, write)

    async def _invocation(self, calls: list[protocol.UnitCall]) -> tuple[dict[str, Any], list[str]]:
        """The invoke body for ``calls``, and the manifest it needs stored, if any (to delete)."""
        loop = asyncio.get_running_loop()
        # reads: anything of the job's (values are MAC-checked on read); writes: only the names
        # of these attempts. One grant each, however many inputs and outputs the units have.
        writes = [protocol.output_prefix(c.unit, c.attempt) for c in calls]
        access = await self._access([""], writes)
        inv = protocol.Invocation(job=self.id, mac_key=self.mac_key, store=access, units=calls,
                                  runtime=self.runtime, grants=self.grants)
        body = inv.to_json()
        if len(json.dumps(body, separators=(",", ":"))) <= protocol.PAYLOAD_BUDGET_BYTES:
            return body, []
        # too wide for one message: the entries and their grants go into a stored manifest
        name = f"m-{calls[0].unit}-a{calls[0].attempt}"
        frame = self._encode({"units": [c.to_json() for c in calls], "store": access}, "manifest")
        nbytes = await loop.run_in_executor(None, self.store.put, name,
                                            protocol.seal(frame, self.mac_key, name))
        manifest_access = await self._access([name], [])
        inv = protocol.Invocation(job=self.id, mac_key=self.mac_key, store=manifest_access,
                                  manifest=protocol.stored_ref(name, nbytes), runtime=self.runtime,
                                  grants=self.grants)
        return inv.to_json(), [name]

    async def run_units(self, units: list[Unit], backup: bool = False) -> Ran:
        """Run independent ``units`` in one activation, retrying platform failures (and user
        exceptions in tasks annotated with ``retries``) with a fresh attempt (fresh output names)
        each time; record their outputs unless another copy of the same units (a backup) did first.
        Every attempt is logged in the job's report.

        Raises the user's exception (rebuilt), :class:`ActivationError` or :class:`UnitTooLarge`.
        """
        with self._under_way():
            return await self._attempts(units, backup)

    @contextlib.contextmanager
    def _under_way(self) -> Iterator[None]:
        """Count a coroutine of this job as running on the loop, for :meth:`close` to wait on."""
        self._running += 1
        self._settled.clear()
        try:
            yield
        finally:
            self._running -= 1
            if not self._running:
                self._settled.set()

    async def _attempts(self, units: list[Unit], backup: bool) -> Ran:
        self._check_memory(units)
        attempts = 1 + max(0, int(dask.config.get("whisk.retries")))
        user_attempts = 1 + max((self.retries.get(k, 0) for u in units for k in u.keys), default=0)
        for attempt in range(1, max(attempts, user_attempts) + 1):
            calls = self._calls(units)
            params, manifest = await self._invocation(calls)
            written = [name for c in calls for name in c.outputs]
            written.append(protocol.result_name(calls[0].unit, calls[0].attempt))
            record: dict[str, Any] | None = None
            log = functools.partial(self._log, units, calls[0].attempt, backup, time.time())
            try:
                record = await self.backend.client.run(self.backend.action, params)
            except (WhiskConnectionError, WhiskTimeout, WhiskServerError) as exc:
                failure: BaseException = exc
            except asyncio.CancelledError:  # another copy won; this one's record never comes
                log(None, "cancelled")
                raise
            finally:
                await self._forget(manifest)
            if record is not None:
                response = record.get("response", {})
                result = response.get("result") or {}
                if response.get("status") == "success":
                    batch = protocol.BatchResult.from_json(await self._read_back(result))
                    stats = {**batch.stats, "units": [u.stats for u in batch.units]}
                    if all(u.name in self.done for u in units):
                        log(record, "superseded", stats)
                        await self._forget(written)  # a backup copy won: its outputs are the ones read
                    else:
                        log(record, "success", stats)
                        self._record(units, batch)
                        self.unit_seconds.update((u.name, record.get("duration", 0) / 1000) for u in units)
                    return Ran(record["activationId"],
                               float(batch.stats.get("duration_s", record.get("duration", 0) / 1000)))
                await self._forget(written)  # whatever this attempt wrote is never read
                if protocol.is_error_envelope(result):
                    failure = protocol.exception_from_error(result["error"], self.mac_key)
                    if attempt >= user_attempts:
                        log(record, "failed")
                        raise failure
                    logger.info("task %s raised %s; retrying it as annotated (attempt %d of %d)",
                                result["error"].get("key"), type(failure).__name__, attempt + 1,
                                user_attempts)
                else:
                    failure = await self._activation_error(units, record)
            else:
                await self._forget(written)
            user_error = record is not None and protocol.is_error_envelope(
                record.get("response", {}).get("result") or {})
            if not user_error and (attempt >= attempts or not retryable(record)):
                log(record, "failed" if record is not None else "lost")
                raise failure
            log(record, "retried" if record is not None else "lost")
            self.report.retries += 1
            await asyncio.sleep(random.uniform(0.5, 1.0) * min(RETRY_BACKOFF_MAX, RETRY_BACKOFF * 2 ** attempt))
        raise AssertionError("unreachable")

    def _log(self, units: list[Unit], attempt: int, backup: bool, submitted: float,
             record: dict[str, Any] | None, outcome: str, stats: dict[str, Any] | None = None) -> None:
        with self._counting:
            self.report.add_attempt(record, submitted=submitted, units=len(units),
                                    kind=key_split(units[0].keys[-1]), attempt=attempt,
                                    backup=backup, outcome=outcome, stats=stats)

    async def _read_back(self, result: dict[str, Any]) -> dict[str, Any]:
        """The result envelope itself, read from the store (and deleted) if it was stored."""
        if "stored_result" not in result:
            return result
        name = result["stored_result"]["stored"]
        loop = asyncio.get_running_loop()
        frame = await loop.run_in_executor(None, self.store.get, name)
        await self._forget([name])
        return protocol.decode(frame, self.mac_key, name)

    def _input_bytes(self, unit: Unit) -> int:
        """Bytes a unit reads: its spec (values embedded in tasks included) and its inputs."""
        return protocol.ref_nbytes(self.specs[unit.name]) + sum(
            protocol.ref_nbytes(self.refs[self.plan.source(k)]) for k in unit.inputs)

    def _check_memory(self, units: list[Unit]) -> None:
        """Refuse a unit whose inputs alone are more than the action's memory: it cannot succeed."""
        limit = self.backend.memory_mb * 1024 * 1024
        for unit in units:
            needed = self._input_bytes(unit)
            if needed > limit:
                raise UnitTooLarge(
                    f"Task {unit.keys[-1]!r} (unit {unit.name}) reads {needed / 2**20:,.0f} MiB of "
                    f"inputs and task data, more than the {self.backend.memory_mb} MB of memory of "
                    f"{self.backend.action}: use smaller chunks, or raise the action's memory with "
                    "`dask-whisk deploy --memory MB` (and whisk.action-memory)")

    def _record(self, units: list[Unit], batch: protocol.BatchResult) -> None:
        self.done.update(u.name for u in units)
        for unit, result in zip(units, batch.units, strict=True):
            for key, ref in zip(unit.outputs, result.outputs, strict=True):
                self.refs[key] = self._count(ref)
                if "offset" in ref:
                    self.bundle_members[ref["stored"]] += 1
            self.stats[unit.name] = result.stats
            for entry in map(tuple, result.warnings):
                if entry not in self._warned:
                    self._warned.add(entry)
                    self.warnings.append(entry)

    def raise_warnings(self) -> None:
        """Raise again, in the calling thread, the warnings activations reported since last
        time, as ``scheduler="sync"`` would have (so filters, ``pytest.warns`` and notebooks
        see them), each at the task's own file and line."""
        while self.warnings:
            category, message, filename, lineno = self.warnings.popleft()
            warnings.warn_explicit(message, protocol.warning_category(category), filename, lineno)

    async def _forget(self, names: list[str]) -> None:
        if names:
            await asyncio.get_running_loop().run_in_executor(None, self.store.delete, names)

    async def _activation_error(self, units: list[Unit], record: dict[str, Any]) -> ActivationError:
        activation_id = record.get("activationId")
        response = record.get("response", {})
        error = (response.get("result") or {}).get("error", response.get("result"))
        logs = record.get("logs") or []
        names = ", ".join(u.name for u in units[:3]) + (", ..." if len(units) > 3 else "")
        message = (
            f"Activation {activation_id} of {self.backend.action} (units {names}; task "
            f"{units[0].keys[0]!r}) failed with {response.get('status')!r}: {error}"
        )
        if "memory" in str(error):
            inputs = sum(map(self._input_bytes, units))
            outputs = [self.sizes.get(k) for u in units for k in u.keys]
            known = sum(n for n in outputs if n is not None)
            message += (f" Its units read {inputs / 2**20:,.1f} MiB of inputs and task data and "
                        f"make {known / 2**20:,.1f} MiB of values"
                        f"{'' if None not in outputs else ' (where known: array chunks)'}; use smaller chunks, "
                        "or raise the action's limits with `dask-whisk deploy --memory MB --timeout MS`.")
        elif "time limit" in str(error):
            message += " Raise the action's limits with `dask-whisk deploy --memory MB --timeout MS`."
        elif "Failed to pull container image" in str(error):
            message += (" The deployment cannot run the worker action's image: push it where the "
                        "invokers pull from, or deploy the full zip (`dask-whisk deploy`); a local "
                        "server runs an image only when started with `dask-whisk server --image "
                        "NAME=/path/to/python`.")
        if logs:
            message += "\nLast log lines:\n" + "\n".join(logs[-10:])
        return ActivationError(message, unit=units[0].name, activation_id=activation_id,
                               status=response.get("status"))

    # --- values and cleanup -----------------------------------------------------------------

    def release_soon(self, keys: Iterable[Key]) -> None:
        """:meth:`release` ``keys`` on the backend's loop, off the dispatch path (until close)."""
        self.backend.io.submit(self.release(list(keys)))

    async def release(self, keys: Iterable[Key]) -> None:
        """Forget values no unit will read again, deleting the stored ones (off the dispatch path).

        A failed delete does not fail the job (teardown removes the job's objects): it is logged."""
        if self.closed:
            return
        with self._under_way():
            await self._release(keys)

    async def _release(self, keys: Iterable[Key]) -> None:
        refs = [self.refs.pop(key) for key in keys if key in self.refs]
        names = [ref["stored"] for ref in refs if "stored" in ref and "offset" not in ref]
        for ref in refs:  # a bundle goes once the last of its members does
            if "offset" in ref:
                self.bundle_members[ref["stored"]] -= 1
                if not self.bundle_members[ref["stored"]]:
                    del self.bundle_members[ref["stored"]]
                    names.append(ref["stored"])
        try:
            await self._forget(names)
        except Exception as exc:  # noqa: BLE001  (logged; the job's teardown retries the delete)
            logger.warning("Could not delete %d released objects of job %s (%s: %s); they are "
                           "removed when the job ends", len(names), self.id, type(exc).__name__, exc)

    def _frame(self, source: Key) -> Any:
        return protocol.fetch_frames([self.refs[source]], self.store)[0]

    def result_bytes(self, keys: Iterable[Key]) -> int:
        """Bytes of the frames the client would fetch for ``keys`` (known before fetching)."""
        sources = {self.plan.source(k) for k in keys} - set(self.plan.data)
        return sum(protocol.ref_nbytes(self.refs[s]) for s in sources)

    def iter_values(self, keys: Iterable[Key], window: int = 8) -> Iterator[tuple[Key, Any]]:
        """``(key, value)`` for each of ``keys`` as it arrives, at most ``window`` fetched ahead,
        so that a consumer that drops each value holds a few frames, never all of them."""
        pending = []
        for key in keys:  # values the client holds need no fetch
            if self.plan.source(key) in self.plan.data:
                yield key, self.plan.data[self.plan.source(key)]
            else:
                pending.append(key)
        with ThreadPoolExecutor(max_workers=window, thread_name_prefix="dask-whisk-gather") as pool:
            futures: dict[Future, Key] = {}
            while pending or futures:
                while pending and len(futures) < window:
                    key = pending.pop(0)
                    futures[pool.submit(self._frame, self.plan.source(key))] = key
                finished, _ = wait(futures, return_when=FIRST_COMPLETED)
                for future in finished:
                    key = futures.pop(future)
                    ref = self.refs[self.plan.source(key)]
                    yield key, protocol.decode(future.result(), self.mac_key, protocol.ref_name(ref))
                del finished

    def values(self, keys: Iterable[Key]) -> dict[Key, Any]:
        """Decode the values of ``keys``; stored ones are fetched concurrently."""
        sources = {key: self.plan.source(key) for key in keys}
        remote = sorted({s for s in sources.values() if s not in self.plan.data}, key=repr)
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="dask-whisk-gather") as pool:
            fetched = protocol.fetch_frames([self.refs[s] for s in remote], self.store, pool.map)
        frames = dict(zip(remote, fetched, strict=True))
        decoded = {source: protocol.decode(data, self.mac_key, protocol.ref_name(self.refs[source]))
                   for source, data in frames.items()}
        return {key: self.plan.data[s] if s in self.plan.data else decoded[s] for key, s in sources.items()}

    def close(self) -> None:
        """Delete everything the job stored; called on success and on failure."""
        self.closed = True  # a release not yet started does nothing: the teardown deletes all
        if self._encoder is not None:
            self._encoder.join()  # it stops after the unit it is serialising
        # deletes under way and cancelled copies end before the job's objects go (and its report
        # is complete), or they outlive the job (and, in a script that ends, the interpreter's
        # executors); releases not yet begun return at once. (Cancelling would not wait: a
        # future of the loop cancels at once, running or not.)
        if self.backend.io.loop.is_running():
            self._settled.wait(RELEASE_WAIT_SECONDS)
        try:
            self.store.destroy()
        finally:
            self.store.close()
