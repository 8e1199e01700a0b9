"""Where jobs run: an OpenWhisk (configured, or the embedded local server) with the worker action
deployed, and the event loop thread that does all of a job's network waiting.

One :class:`Backend` per process, configuration and action name, created on first use and kept
warm: its HTTP connections, its deployed action and, for the embedded default, its local server
outlive a job. The scheduler's own thread stays synchronous, as Dask's are.
"""
from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import secrets
import threading
import uuid
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import dask.config

from . import config as whisk_config

logger = logging.getLogger("dask_whisk")
T = TypeVar("T")

#: activations in flight when the namespace states no concurrency limit
UNBOUNDED_IN_FLIGHT = 1000

#: limits of the embedded local server: a research-style deployment sized for one machine
EMBEDDED_LIMITS = {
    "invocations_per_minute": 1_000_000,
    "concurrent_invocations": 1_000,
    "user_memory_mb": 4096,
}


class EventLoopThread:
    """An asyncio loop in a daemon thread; coroutines are submitted from any other thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="dask-whisk-io", daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedule ``coro`` on the loop; returns a thread-safe future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result."""
        return self.submit(coro).result()

    def stop(self) -> None:
        """Cancel what still runs on the loop (its callers' futures end cancelled), stop the
        loop and join its thread."""
        if self.loop.is_running():
            async def cancel_all() -> None:
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(timeout=5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)


class Backend:
    """A ready OpenWhisk namespace with the worker action deployed."""

    def __init__(self, whisk: whisk_config.WhiskConfig, *, embedded: bool):
        self.whisk = whisk
        self.embedded = embedded
        self.action = dask.config.get("whisk.action")
        self.io = EventLoopThread()
        self.client = None
        self.max_in_flight = UNBOUNDED_IN_FLIGHT
        #: activations that really run at once: the namespace's concurrency, or on the embedded
        #: server the containers its memory pool holds (more in flight only queue)
        self.parallelism = UNBOUNDED_IN_FLIGHT
        #: the worker action's memory limit (MB), as deployed
        self.memory_mb = int(dask.config.get("whisk.action-memory") or 256)
        try:
            self.io.run(self._prepare())
        except BaseException:
            self.close()
            raise

    async def _prepare(self) -> None:
        from .deploy import ensure_worker_action
        from .openwhisk import OpenWhiskClient

        self.client = OpenWhiskClient(self.whisk)
        action = await ensure_worker_action(
            self.client, self.action, local=self.embedded,
            memory_mb=dask.config.get("whisk.action-memory"),
            timeout_ms=dask.config.get("whisk.action-timeout"),
        )
        self.max_in_flight = await self.client.configure_pacing() or UNBOUNDED_IN_FLIGHT
        self.parallelism = self.max_in_flight
        memory_mb = (action.get("limits") or {}).get("memory")
        self.memory_mb = int(memory_mb or self.memory_mb)
        if self.embedded and memory_mb:
            self.parallelism = min(self.parallelism, max(1, EMBEDDED_LIMITS["user_memory_mb"] // memory_mb))

    def close(self) -> None:
        """Close connections and stop the loop thread; safe to call more than once."""
        if not self.io.loop.is_running():
            return
        try:
            if self.client is not None:
                self.io.run(self.client.close())
        finally:
            self.io.stop()


_lock = threading.Lock()
_backends: dict[tuple[whisk_config.WhiskConfig | None, str], Backend] = {}
_embedded_server = None


def _embedded_whisk() -> whisk_config.WhiskConfig:
    """The embedded local server's configuration, starting the server on first use and again
    if it has died (its containers and activations die with it; jobs in flight fail)."""
    global _embedded_server
    if _embedded_server is not None and _embedded_server.process.poll() is not None:
        logger.warning("The embedded OpenWhisk-compatible server exited (status %s): starting a new one",
                       _embedded_server.process.returncode)
        _embedded_server = None
        for key in [k for k in _backends if k[0] is None]:
            _backends.pop(key).close()
    if _embedded_server is None:
        from .deploy import local_image, local_images
        from .server import ServerSettings, start_server_process

        # a key of its own per start, handed to the server by environment (never on a command
        # line other users can read): the published guest key would let any local user in
        auth = f"{uuid.uuid4()}:{secrets.token_hex(32)}"  # OpenWhisk's shape: uuid:64 alphanumerics
        # the worker runs on an image of this very environment, so nothing is uploaded but
        # the small zip; stock python:3.x actions there see only what a real image has
        _embedded_server = start_server_process(
            ServerSettings(port=0, auth=auth, images=local_images(), **EMBEDDED_LIMITS))
        atexit.register(_embedded_server.stop)
        logger.info(
            "No OpenWhisk configured: using the embedded local OpenWhisk-compatible server at %s, "
            "the worker running as a blackbox action on %s, an image of this Python environment "
            "(set WHISK_APIHOST/WHISK_AUTH or ~/.wskprops to use a real OpenWhisk)",
            _embedded_server.url, local_image(),
        )
    return whisk_config.WhiskConfig(apihost=_embedded_server.url, auth=_embedded_server.auth,
                                    origin="embedded")


def get_backend() -> Backend:
    """The backend for the current configuration, created once (the embedded one: while its
    server lives; any one again once closed)."""
    found = whisk_config.find_whisk_config()
    key = (found, dask.config.get("whisk.action"))
    with _lock:
        if found is None:
            whisk = _embedded_whisk()
        if key in _backends and not _backends[key].io.loop.is_running():
            del _backends[key]  # closed (by a user, or at a restart of the embedded server)
        if key not in _backends:
            _backends[key] = Backend(whisk if found is None else found, embedded=found is None)
            atexit.register(_backends[key].close)
        return _backends[key]
