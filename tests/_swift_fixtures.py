"""A real Swift for the test session, and a fault-injecting HTTP proxy to put in front of it.

``swift_env`` uses ST_AUTH/ST_USER/ST_KEY when set (``make test`` starts swift-saio), otherwise
starts swift-saio in a temporary directory and stops it when the session ends.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from dask_whisk.store import saio

__all__ = ["SwiftEnv", "FaultyProxy", "swift_env", "faulty_proxy", "short_token_swift",
           "SHORT_TOKEN_LIFE"]

#: seconds a token of ``short_token_swift`` stays valid
SHORT_TOKEN_LIFE = 3


@dataclass(frozen=True)
class SwiftEnv:
    """Where the session's Swift is and the v1 credentials of its test account."""

    auth_url: str
    user: str
    key: str

    def options(self, **extra) -> dict:
        """Keyword arguments for ``open_job_store('swift', ...)`` pointing at this Swift."""
        return {"auth_url": self.auth_url, "user": self.user, "key": self.key, **extra}


@pytest.fixture(scope="session")
def swift_env() -> Iterator[SwiftEnv]:
    """A running Swift: the one in ST_AUTH/ST_USER/ST_KEY, or a swift-saio started for the session."""
    if os.environ.get("ST_AUTH") and os.environ.get("ST_USER") and os.environ.get("ST_KEY"):
        yield SwiftEnv(os.environ["ST_AUTH"], os.environ["ST_USER"], os.environ["ST_KEY"])
        return
    with _saio() as env:
        yield env


@contextlib.contextmanager
def _saio(**options) -> Iterator[SwiftEnv]:
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # tmpfs: no fsync, faster
    directory = tempfile.mkdtemp(prefix="dask-whisk-test-saio-", dir=shm)
    try:
        info = saio.start(directory, port=saio.free_port(), **options)
        yield SwiftEnv(info.auth_url, info.user, info.key)
    finally:
        saio.stop(directory)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def short_token_swift() -> Iterator[SwiftEnv]:
    """A swift-saio of its own whose tokens expire after SHORT_TOKEN_LIFE seconds."""
    with _saio(token_life=SHORT_TOKEN_LIFE) as env:
        yield env


class FaultyProxy:
    """A real HTTP proxy to Swift that fails the next N requests (HTTP status or connection reset).

    Auth responses are rewritten so the storage URL points at the proxy too.
    """

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.failures: list[int | str] = []
        self.requests = 0
        self.port = saio.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def fail_next(self, *failures: int | str) -> None:
        """Answer the next requests with these statuses, or 'reset' to drop the connection."""
        with self._lock:
            self.failures.extend(failures)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self.requests += 1
            failure = self.failures.pop(0) if self.failures else None
        body = await request.read()
        if failure == "reset":
            request.transport.abort()
            return web.Response(status=503)
        if failure is not None:
            return web.Response(status=int(failure), text="injected failure\n")
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "content-length", "transfer-encoding")}
        async with self._session.request(request.method, self.upstream + request.path_qs,
                                         headers=headers, data=body or None,
                                         auto_decompress=False) as resp:
            payload = await resp.read()
            out = {k: v for k, v in resp.headers.items()
                   if k.lower() not in ("content-length", "transfer-encoding", "connection",
                                        "content-encoding")}
            if "X-Storage-Url" in out:
                out["X-Storage-Url"] = out["X-Storage-Url"].replace(self.upstream, self.url)
            return web.Response(status=resp.status, headers=out, body=payload)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def setup() -> web.AppRunner:
            self._session = aiohttp.ClientSession(auto_decompress=False)
            app = web.Application(client_max_size=1024**3)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            return runner

        self._runner = self._loop.run_until_complete(setup())
        self._started.set()
        self._loop.run_forever()

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        async def teardown() -> None:
            await self._runner.cleanup()
            await self._session.close()

        asyncio.run_coroutine_threadsafe(teardown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def faulty_proxy(swift_env) -> Iterator[FaultyProxy]:
    """A fault-injecting proxy in front of the session's Swift, on a free port."""
    upstream = swift_env.auth_url.split("/auth/")[0]
    with FaultyProxy(upstream) as proxy:
        yield proxy
