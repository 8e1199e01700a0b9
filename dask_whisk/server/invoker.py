"""The invoker: throttles, a container pool sized by memory, and running one activation.

Capacity is ``user_memory_mb`` split into containers of the action's memory; work beyond it
waits in a FIFO queue (its wait shows as ``waitTime``). A container serves one activation at a
time, is reused warm for the same action version, evicted when idle or when memory is needed
for another action, and destroyed after a developer or whisk error. Time and memory limits are
enforced by killing the container process, as the OpenWhisk invoker does.
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from ..store.local import shared_tempdir
from .container import Container, ContainerGone
from .entities import Action
from .images import IMAGE_PULL_ERROR, StockImages
from .faults import ACTIVATION_FAULTS, FaultInjector
from .records import ActivationRecords
from .settings import ServerSettings

log = logging.getLogger(__name__)

SUCCESS, APPLICATION_ERROR, DEVELOPER_ERROR, INTERNAL_ERROR = 0, 1, 2, 3
STATUS_NAMES = {
    SUCCESS: "success", APPLICATION_ERROR: "application error",
    DEVELOPER_ERROR: "action developer error", INTERNAL_ERROR: "whisk internal error",
}
MEMORY_EXHAUSTED = "The action exhausted its memory and was aborted."
ABNORMAL_INIT = "The action did not initialize and exited unexpectedly."
ABNORMAL_RUN = "The action did not produce a valid response and exited unexpectedly."
NO_RESOURCES = "Failed to provision resources to run the action."
#: characters of an oversized result quoted in the truncation message
TRUNCATED_QUOTE = 1024
MIB = 1024 * 1024


def now_ms() -> int:
    """The time in epoch milliseconds, as activation records give it."""
    return int(time.time() * 1000)


def timeout_message(timeout_ms: int, init: bool) -> str:
    """OpenWhisk's words for an activation stopped at its time limit."""
    return (f"The action exceeded its time limits of {timeout_ms} milliseconds"
            + (" during initialization." if init else "."))


def _gone(gone: ContainerGone, timeout_ms: int, init: bool) -> tuple[int, dict, bool]:
    """(status, result, timed out) of a container that died during /init or /run."""
    if gone.reason == "timeout":
        return DEVELOPER_ERROR, {"error": timeout_message(timeout_ms, init=init)}, True
    if gone.reason == "oom":
        return DEVELOPER_ERROR, {"error": MEMORY_EXHAUSTED}, False
    return DEVELOPER_ERROR, {"error": ABNORMAL_INIT if init else ABNORMAL_RUN}, False


class ImageMissing(Exception):
    """A blackbox action names an image this server was not given (``--image``)."""


class Throttles:
    """Per-namespace invocation rate (wall-clock minute buckets) and concurrency limits."""

    def __init__(self, per_minute: int, concurrent: int) -> None:
        self.per_minute = per_minute
        self.concurrent = concurrent
        self._minute = -1
        self._count = 0

    def check(self, in_flight: int) -> str | None:
        """The 429 message when this invoke must be rejected (rejected calls count too)."""
        minute = int(time.time() // 60)
        if minute != self._minute:
            self._minute, self._count = minute, 0
        self._count += 1
        if self._count > self.per_minute:
            return f"Too many requests in the last minute (count: {self._count}, allowed: {self.per_minute})."
        if in_flight >= self.concurrent:
            return f"Too many concurrent requests in flight (count: {in_flight}, allowed: {self.concurrent})."
        return None


@dataclass
class Activation:
    """One accepted invocation, from acceptance until its record is written."""

    id: str
    action: Action
    params: dict
    transaction_id: str
    fault: str | None
    received: int = field(default_factory=now_ms)
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class ContainerPool:
    """Containers within ``capacity_mb``; FIFO queue for work that does not fit."""

    def __init__(self, capacity_mb: int, base_dir: Path, session: aiohttp.ClientSession) -> None:
        self.capacity_mb = capacity_mb
        self.used_mb = 0
        self.base_dir = base_dir
        self.session = session
        self.free: dict[tuple[str, str], list[Container]] = collections.defaultdict(list)
        self.busy: set[Container] = set()
        self._queue: collections.deque[tuple[Action, asyncio.Future]] = collections.deque()
        self._removals: set[asyncio.Task] = set()

    async def acquire(self, action: Action) -> tuple[Container, bool]:
        """A container for ``action`` and whether it is new (cold); waits while the pool is full."""
        if action.limits["memory"] > self.capacity_mb:
            raise MemoryError(NO_RESOURCES)
        if not self._queue:
            placed = self._place(action)
            if placed is not None:
                return placed
        waiter = asyncio.get_running_loop().create_future()
        self._queue.append((action, waiter))
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result()[0], keep=False)
            raise

    def _place(self, action: Action) -> tuple[Container, bool] | None:
        free = self.free.get(action.key)
        while free:
            container = free.pop()
            if container.alive:
                self.busy.add(container)
                return container, False
            self._remove(container)
        memory = action.limits["memory"]
        if self.used_mb + memory > self.capacity_mb:
            idle = sorted((c for cs in self.free.values() for c in cs), key=lambda c: c.last_used)
            for container in idle:  # evict least recently used idle containers of other actions
                if self.used_mb + memory <= self.capacity_mb:
                    break
                self.free[container.key].remove(container)
                self._remove(container)
            if self.used_mb + memory > self.capacity_mb:
                return None
        container = Container(action.key, memory, self.base_dir, self.session)
        self.used_mb += memory
        self.busy.add(container)
        return container, True

    def release(self, container: Container, keep: bool) -> None:
        """Return a container after an activation: warm for reuse, or destroyed."""
        self.busy.discard(container)
        if keep and container.alive:
            self.free[container.key].append(container)
        else:
            self._remove(container)
        self._dispatch()

    def _dispatch(self) -> None:
        while self._queue:
            action, waiter = self._queue[0]
            if waiter.cancelled():
                self._queue.popleft()
                continue
            placed = self._place(action)
            if placed is None:
                return
            self._queue.popleft()
            waiter.set_result(placed)

    def _remove(self, container: Container) -> None:
        self.used_mb -= container.memory_mb
        task = asyncio.create_task(container.destroy())
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    def retire(self, name: str) -> None:
        """Remove the idle containers of every version of ``name`` (it was updated or deleted)."""
        for key in [k for k in self.free if k[0] == name]:
            for container in self.free.pop(key):
                self._remove(container)
        self._dispatch()

    def reap_idle(self, idle_seconds: float) -> None:
        """Remove containers idle for longer than ``idle_seconds`` (and any that died)."""
        limit = time.monotonic() - idle_seconds
        for key, containers in list(self.free.items()):
            for container in [c for c in containers if c.last_used < limit or not c.alive]:
                containers.remove(container)
                self._remove(container)
            if not containers:
                del self.free[key]
        self._dispatch()

    def enforce_memory(self) -> None:
        """Kill busy containers whose resident memory exceeds their action's memory limit."""
        for container in self.busy:
            if container.alive and container.rss_bytes() > container.memory_mb * MIB:
                container.kill("oom")

    async def close(self) -> None:
        """Cancel the activations waiting for a container and destroy every container."""
        for _, waiter in self._queue:
            waiter.cancel()
        self._queue.clear()
        for container in [c for cs in self.free.values() for c in cs] + list(self.busy):
            self._remove(container)
        self.free.clear()
        self.busy.clear()
        if self._removals:
            await asyncio.gather(*self._removals, return_exceptions=True)


class Invoker:
    """Accepts invocations, runs them in the pool, and keeps their records."""

    def __init__(self, settings: ServerSettings, faults: FaultInjector) -> None:
        self.settings = settings
        self.faults = faults
        self.api_host = ""
        self.records = ActivationRecords(settings.max_activation_records)
        self.throttles = Throttles(settings.invocations_per_minute, settings.concurrent_invocations)
        self.in_flight: dict[str, Activation] = {}
        self._tasks: set[asyncio.Task] = set()
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._session: aiohttp.ClientSession | None = None
        self.pool: ContainerPool | None = None
        self.images: StockImages | None = None
        self._housekeeping: list[asyncio.Task] = []

    async def start(self, api_host: str) -> None:
        """Create the pool and start its idle reaper and memory watchdog."""
        self.api_host = api_host
        self._tmp = tempfile.TemporaryDirectory(prefix="dask-whisk-server-", dir=shared_tempdir())
        connector = aiohttp.TCPConnector(limit=0, force_close=False, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        self.pool = ContainerPool(self.settings.user_memory_mb, Path(self._tmp.name), self._session)
        self.images = StockImages(Path(self._tmp.name) / "images")
        self._housekeeping = [
            asyncio.create_task(self._every(min(1.0, self.settings.idle_container_seconds / 4),
                                            lambda: self.pool.reap_idle(self.settings.idle_container_seconds))),
            asyncio.create_task(self._every(self.settings.memory_poll_ms / 1000.0,
                                            self.pool.enforce_memory)),
        ]

    async def stop(self) -> None:
        """Stop every activation and container, and remove the containers' directories."""
        for task in self._housekeeping + list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._housekeeping, *self._tasks, return_exceptions=True)
        for activation in self.in_flight.values():  # blocking invokes waiting on them end now
            if not activation.done.done():
                activation.done.cancel()
        if self.pool is not None:
            await self.pool.close()
        if self._session is not None:
            await self._session.close()
        if self._tmp is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._tmp.cleanup)

    @staticmethod
    async def _every(seconds: float, step) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                step()
            except Exception:  # housekeeping must go on; the failure is logged
                log.exception("invoker housekeeping failed")

    def throttle(self) -> str | None:
        """The 429 message if an invoke must be rejected now, else None."""
        return self.throttles.check(len(self.in_flight))

    def submit(self, action: Action, params: dict, transaction_id: str,
               fault: str | None = None) -> Activation:
        """Accept an activation; it runs in the background and its ``done`` gives the record."""
        activation = Activation(uuid.uuid4().hex, action, params, transaction_id,
                                fault if fault in ACTIVATION_FAULTS else None)
        self.in_flight[activation.id] = activation
        task = asyncio.create_task(self._activate(activation))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return activation

    async def _activate(self, activation: Activation) -> None:
        try:
            record = await self._execute(activation)
        except Exception as exc:  # a bug here must still end the activation, as status 3
            log.exception("activation %s failed in the invoker", activation.id)
            record = self._record(activation, now_ms(), INTERNAL_ERROR,
                                  {"error": f"Internal error in the local invoker: {exc}"},
                                  [], None, False)
        self.records.add(record)
        del self.in_flight[activation.id]
        if not activation.done.done():
            activation.done.set_result(record)

    async def _execute(self, activation: Activation) -> dict:
        action = activation.action
        timeout_ms = action.limits["timeout"]
        try:
            container, cold = await self.pool.acquire(action)
        except MemoryError:
            return self._record(activation, now_ms(), INTERNAL_ERROR, {"error": NO_RESOURCES},
                                [], None, False)
        start = now_ms()
        container.begin(action.limits["logs"] * MIB)
        init_ms = None
        if activation.fault == "whisk internal error":
            self.pool.release(container, keep=not cold)
            return self._record(activation, start, INTERNAL_ERROR,
                                {"error": "injected fault: whisk internal error"}, [], None, False)
        if cold:
            failure = await self._init(container, action, timeout_ms)
            init_ms = now_ms() - start
            if failure is not None:
                status, result, timed_out = failure
                logs = await container.end(complete=container.alive)
                self.pool.release(container, keep=False)
                return self._record(activation, start, status, result, logs, init_ms, timed_out)
        status, result, timed_out = await self._run(container, activation, timeout_ms)
        logs = await container.end(complete=container.alive and container.kill_reason is None)
        self.pool.release(container, keep=status in (SUCCESS, APPLICATION_ERROR))
        return self._record(activation, start, status, result, logs, init_ms, timed_out)

    async def _init(self, container: Container, action: Action, timeout_ms: int):
        """Start the process and send /init; None on success, else (status, result, timed out)."""
        try:
            await container.start(await self._python(action))
        except ImageMissing as exc:
            return DEVELOPER_ERROR, {"error": str(exc)}, False
        except OSError as exc:
            log.error("cannot start a container process: %s", exc)
            return INTERNAL_ERROR, {"error": NO_RESOURCES}, False
        value = {"name": action.name, "main": action.exec.get("main", "main"),
                 "code": action.exec.get("code", ""), "binary": action.exec["binary"],
                 "env": {"__OW_API_HOST": self.api_host}}
        body = json.dumps({"value": value}).encode()
        try:
            status, reply = await container.post("/init", body, timeout_ms / 1000.0)
        except ContainerGone as gone:
            return _gone(gone, timeout_ms, init=True)
        if status != 200:  # the container is destroyed once its logs are in
            error = _error_of(reply) or f"The action failed during initialization: {reply[:1024].decode('utf-8', 'replace')}"
            return DEVELOPER_ERROR, {"error": error}, False
        return None

    async def _python(self, action: Action) -> str:
        """The interpreter of the image ``action`` runs on: a registered blackbox image, or the
        stock image of its ``python:3.x`` kind."""
        if action.exec["kind"] == "blackbox":
            if not action.interpreter:
                raise ImageMissing(IMAGE_PULL_ERROR.format(action.exec["image"]))
            return action.interpreter
        return await self.images.python(action.interpreter)

    async def _run(self, container: Container, activation: Activation, timeout_ms: int):
        """Send /run; returns (status, result, timed out)."""
        action = activation.action
        params = {p["key"]: p["value"] for p in action.parameters}
        params.update(activation.params)
        message = {
            "value": params, "namespace": action.namespace,
            "action_name": f"/{action.namespace}/{action.name}", "action_version": action.version,
            "activation_id": activation.id, "transaction_id": activation.transaction_id,
            "deadline": str(now_ms() + timeout_ms),
        }
        if action.annotation("provide-api-key") is True:
            message["api_key"] = self.settings.auth
        body = json.dumps(message).encode()
        if self.faults.hangs():
            await asyncio.sleep(timeout_ms / 1000.0)
            container.kill("timeout")
            return DEVELOPER_ERROR, {"error": timeout_message(timeout_ms, init=False)}, True
        if activation.fault == "crash":  # the process dies as the activation reaches it
            container.kill("crash")
        try:
            status, reply = await container.post("/run", body, timeout_ms / 1000.0)
        except ContainerGone as gone:
            return _gone(gone, timeout_ms, init=False)
        if activation.fault == "application error":
            return APPLICATION_ERROR, {"error": "injected fault: application error"}, False
        if activation.fault == "action developer error":
            container.kill("injected fault")
            return DEVELOPER_ERROR, {"error": "injected fault: action developer error"}, False
        if status != 200:  # the container is destroyed once its logs are in
            return DEVELOPER_ERROR, {"error": _error_of(reply) or ABNORMAL_RUN}, False
        return self._result(reply)

    def _result(self, reply: bytes):
        limit = self.settings.max_payload_bytes
        try:
            result = json.loads(reply)
        except ValueError:
            result = None
        if not isinstance(result, (dict, list)):
            text = reply[:TRUNCATED_QUOTE].decode("utf-8", "replace")
            return DEVELOPER_ERROR, {
                "error": f"The action did not produce a valid JSON or JSON Array response: {text}"
            }, False
        if len(reply) > limit:
            quote = reply[:TRUNCATED_QUOTE].decode("utf-8", "replace")
            return APPLICATION_ERROR, {
                "error": f"The action produced a response that exceeded the allowed length: "
                         f"{len(reply)} > {limit} bytes. The truncated response was: {quote}"
            }, False
        if isinstance(result, dict) and "error" in result:
            return APPLICATION_ERROR, {"error": result["error"]}, False
        return SUCCESS, result, False

    def _record(self, activation: Activation, start: int, status: int, result: object,
                logs: list[str], init_ms: int | None, timed_out: bool) -> dict:
        action = activation.action
        end = now_ms()
        annotations = [
            {"key": "path", "value": f"{action.namespace}/{action.name}"},
            {"key": "waitTime", "value": max(0, start - activation.received)},
            {"key": "kind", "value": action.exec["kind"]},
            {"key": "timeout", "value": timed_out},
            {"key": "limits", "value": dict(action.limits)},
        ]
        if init_ms is not None:
            annotations.append({"key": "initTime", "value": init_ms})
        return {
            "namespace": action.namespace, "name": action.name, "version": action.version,
            "subject": action.namespace, "publish": False, "activationId": activation.id,
            "start": start, "end": end, "duration": end - start,
            "response": {"status": STATUS_NAMES[status], "success": status == SUCCESS, "result": result,
                         "size": len(json.dumps(result))},
            "logs": logs, "annotations": annotations,
        }


def _error_of(reply: bytes) -> object:
    """The ``error`` field of a runtime's JSON reply, if it has one."""
    try:
        body = json.loads(reply)
    except ValueError:
        return None
    return body.get("error") if isinstance(body, dict) else None
