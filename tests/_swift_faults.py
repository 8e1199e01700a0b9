"""A fault-injecting HTTP reverse proxy in front of a real Swift, for chaos tests.

:class:`SwiftFaultProxy` forwards every request to the real Swift proxy server and fails a
configurable, seeded fraction of them, and/or exactly the next few (:meth:`fail_next`). Faults:

``503``          answer 503 without forwarding (Swift overloaded; the request had no effect)
``reset``        close the connection without answering, before forwarding (no effect)
``reset-after``  forward, then close the connection without answering: the request took effect
                 but the client never learns it (a retried DELETE then finds nothing, and so on)
``truncate``     forward, send the status, headers and half the body, then close (mid-body reset;
                 not in the default mix; an answer without a body passes unharmed, uncounted)

An integer other than 503 given to :meth:`fail_next` is answered as that status. The v1 auth
answer's ``X-Storage-Url`` points at the real Swift: it is rewritten to the proxy's URL, so
every later request, TempURL ones included, comes through the proxy too (Keystone catalogues are
not rewritten: v1 auth only). It runs an aiohttp server on its own event loop in a daemon thread::

    with fault_proxy(upstream, rate=0.05, seed=7) as proxy:
        open_job_store("swift", job_id, auth_url=proxy.auth_url, user=..., key=...)
        ...
        proxy.faults  # Counter: kind -> how many were injected
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import threading
import urllib.parse
from collections.abc import Iterable, Iterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from dask_whisk.store import saio

__all__ = ["DEFAULT_KINDS", "KINDS", "SwiftFaultProxy", "fault_proxy"]

KINDS = ("503", "reset", "reset-after", "truncate")
DEFAULT_KINDS = ("503", "reset", "reset-after")

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                         "te", "trailer", "upgrade", "content-length", "host", "expect"})


class SwiftFaultProxy:
    """A reverse proxy to ``upstream`` (scheme://host:port of the Swift proxy) that injects faults.

    ``rate`` is the probability that a request (any request, auth included) is failed, drawn
    from ``random.Random(seed)`` in arrival order; the kind is drawn uniformly from ``kinds``.
    Faults queued with :meth:`fail_next` come first and do not consume random draws.
    """

    def __init__(self, upstream: str, rate: float = 0.0, seed: int | None = 0,
                 kinds: Iterable[str] = DEFAULT_KINDS, port: int | None = None):
        kinds = tuple(str(k) for k in kinds)
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or not kinds:
            raise ValueError(f"Unknown fault kinds {unknown}: use some of {KINDS}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be between 0 and 1, got {rate}")
        split = urllib.parse.urlsplit(upstream)
        self.upstream = f"{split.scheme}://{split.netloc}"
        self.rate, self.kinds = rate, kinds
        self._rng = random.Random(seed)
        #: faults to inject before any random ones: statuses, or 'reset' etc.
        self.failures: list[int | str] = []
        #: requests received, and faults injected by kind
        self.requests = 0
        self.faults: collections.Counter[str] = collections.Counter()
        #: (method, path without query, fault kind) of every injected fault, in order
        self.log: list[tuple[str, str, str]] = []
        #: (method, path without query, body) of every request received, in order: in front of
        #: any HTTP server (an OpenWhisk's too), what that server was sent
        self.received: list[tuple[str, str, bytes]] = []
        self.port = port or saio.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name=f"swift-fault-proxy-{self.port}")

    @property
    def auth_url(self) -> str:
        """The v1 auth URL through the proxy (what ST_AUTH would be)."""
        return f"{self.url}/auth/v1.0"

    @property
    def injected(self) -> int:
        """Faults injected so far, all kinds."""
        return sum(self.faults.values())

    def fail_next(self, *failures: int | str) -> None:
        """Fail the next requests, in order: an HTTP status, or one of the kinds above."""
        for failure in failures:
            if not isinstance(failure, int) and failure not in KINDS:
                raise ValueError(f"Unknown fault {failure!r}")
        with self._lock:
            self.failures.extend(failures)

    def set_rate(self, rate: float) -> None:
        """Change the random fault rate from now on (0 turns random faults off)."""
        with self._lock:
            self.rate = rate

    def _draw(self) -> str | None:
        with self._lock:
            self.requests += 1
            if self.failures:
                return str(self.failures.pop(0))
            if self.rate and self._rng.random() < self.rate:
                return self._rng.choice(self.kinds)
            return None

    def _count(self, request: web.Request, kind: str) -> None:
        with self._lock:
            self.faults[kind] += 1
            self.log.append((request.method, request.path, kind))  # no query: no signatures

    def _rewrite(self, headers: CIMultiDict) -> None:
        """Point storage URLs of an auth answer at the proxy."""
        for name in ("X-Storage-Url", "X-Server-Management-Url"):
            if name in headers:
                split = urllib.parse.urlsplit(headers[name])
                headers[name] = urllib.parse.urlunsplit(
                    ("http", f"127.0.0.1:{self.port}", split.path, split.query, split.fragment))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        fault = self._draw()
        body = await request.read()
        with self._lock:
            self.received.append((request.method, request.path, body))
        if fault is not None and fault not in ("reset-after", "truncate"):
            self._count(request, fault)
            if fault == "reset":
                request.transport.abort()
                return web.Response(status=503)  # never sent: the connection is gone
            return web.Response(status=int(fault), text="injected failure\n")
        headers = CIMultiDict((k, v) for k, v in request.headers.items()
                              if k.lower() not in _HOP_BY_HOP)
        async with self._session.request(
                request.method, URL(self.upstream + request.raw_path, encoded=True),
                headers=headers, data=body if request.body_exists else None,
                allow_redirects=False, auto_decompress=False) as resp:
            payload = await resp.read()
            out = CIMultiDict((k, v) for k, v in resp.headers.items()
                              if k.lower() not in _HOP_BY_HOP)
        self._rewrite(out)
        if fault == "reset-after":
            self._count(request, fault)
            request.transport.abort()
            return web.Response(status=503)
        if fault == "truncate" and len(payload) >= 2:
            self._count(request, fault)
            answer = web.StreamResponse(status=resp.status, headers=out)
            answer.content_length = len(payload)
            await answer.prepare(request)
            await answer.write(payload[:len(payload) // 2])
            request.transport.abort()
            return answer
        if request.method == "HEAD" or resp.status in (204, 304):
            # no body, but the length of the object stays what Swift said
            answer = web.StreamResponse(status=resp.status, headers=out)
            if "Content-Length" in resp.headers and resp.status not in (204, 304):
                answer.content_length = int(resp.headers["Content-Length"])
            await answer.prepare(request)
            await answer.write_eof()
            return answer
        return web.Response(status=resp.status, headers=out, body=payload)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def setup() -> web.AppRunner:
            self._session = aiohttp.ClientSession(
                auto_decompress=False, connector=aiohttp.TCPConnector(limit=64),
                timeout=aiohttp.ClientTimeout(total=120))
            app = web.Application(client_max_size=1024**3)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            return runner

        try:
            self._runner = self._loop.run_until_complete(setup())
        except BaseException as exc:  # reported by __enter__
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()

    def __enter__(self) -> SwiftFaultProxy:
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("the Swift fault proxy did not start within 30 s")
        if self._error is not None:
            raise RuntimeError(f"the Swift fault proxy failed to start: {self._error!r}")
        return self

    def __exit__(self, *exc) -> None:
        async def teardown() -> None:
            await self._runner.cleanup()
            await self._session.close()

        asyncio.run_coroutine_threadsafe(teardown(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()


@contextlib.contextmanager
def fault_proxy(upstream: str, rate: float = 0.0, seed: int | None = 0,
                kinds: Iterable[str] = DEFAULT_KINDS) -> Iterator[SwiftFaultProxy]:
    """A running :class:`SwiftFaultProxy` in front of ``upstream`` (its URL is ``.url``)."""
    with SwiftFaultProxy(upstream, rate=rate, seed=seed, kinds=kinds) as proxy:
        yield proxy
