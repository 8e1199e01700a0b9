"""Async REST client for Apache OpenWhisk: the only module that speaks HTTP to OpenWhisk.

One :class:`OpenWhiskClient` holds one pooled, keep-alive aiohttp session sized for thousands of
in-flight calls from one event loop. It paces invocations to the namespace's limits (a semaphore
for ``concurrentInvocations``, a sliding one-minute window for ``invocationsPerMinute``), retries
429 and 503 with bounded, jittered exponential backoff, and turns every other failure into a typed
:class:`WhiskError` that carries OpenWhisk's message and request id, never the credentials.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from yarl import URL

from .config import ClientSettings, WhiskConfig

logger = logging.getLogger(__name__)

#: the sliding window of the invocation rate limiter, a little over OpenWhisk's one-minute bucket
RATE_WINDOW_SECONDS = 60.5
#: OpenWhisk's default (and usual) longest blocking wait; beyond it a blocking invoke answers 202
MAX_BLOCKING_MS = 60_000
_RETRY_STATUSES = (429, 503)
_FIRST_BACKOFF = 0.1
_MAX_BACKOFF = 10.0
_FIRST_POLL = 0.05
_MAX_POLL = 2.0
_ERROR_TEXT_LIMIT = 500


class WhiskError(Exception):
    """An OpenWhisk request failed; ``status`` is the HTTP status (None if none was received)."""

    def __init__(self, message: str, *, status: int | None = None, request_id: str | None = None,
                 method: str | None = None, path: str | None = None) -> None:
        self.message = message
        self.status = status
        self.request_id = request_id
        self.method = method
        self.path = path
        super().__init__(self._describe())

    def _describe(self) -> str:
        where = []
        if self.status is not None:
            where.append(f"HTTP {self.status}")
        if self.method and self.path:
            where.append(f"{self.method} {self.path}")
        if self.request_id:
            where.append(f"request id {self.request_id}")
        return f"{self.message} [{', '.join(where)}]" if where else self.message

    def __reduce__(self):
        """Pickle by fields (the default would drop the keyword-only arguments)."""
        return _rebuild_error, (type(self), self.message, self.status, self.request_id,
                                self.method, self.path)


def _rebuild_error(cls, message, status, request_id, method, path):
    return cls(message, status=status, request_id=request_id, method=method, path=path)


class WhiskBadRequest(WhiskError):
    """400: OpenWhisk rejected the request's content (bad name, limits out of range, bad id)."""


class WhiskAuthError(WhiskError):
    """401 or 403: the API key is wrong, or not allowed to do this."""


class WhiskNotFound(WhiskError):
    """404: the action, activation or namespace does not exist."""


class WhiskConflict(WhiskError):
    """409: the entity already exists (create without overwrite) or changed concurrently."""


class WhiskPayloadTooLarge(WhiskError):
    """413: parameters or code exceed OpenWhisk's size limits."""


class WhiskThrottled(WhiskError):
    """429 that persisted through every retry the client allows."""


class WhiskServerError(WhiskError):
    """5xx other than an activation's own failure: OpenWhisk itself is unwell."""


class WhiskConnectionError(WhiskError):
    """No HTTP answer: OpenWhisk was unreachable or the connection broke."""


class WhiskTimeout(WhiskError):
    """No answer or no activation record within the allowed time."""


_BY_STATUS: dict[int, type[WhiskError]] = {
    400: WhiskBadRequest, 401: WhiskAuthError, 403: WhiskAuthError, 404: WhiskNotFound,
    409: WhiskConflict, 413: WhiskPayloadTooLarge, 429: WhiskThrottled,
}

_HINTS = {
    401: "check the API key ('whisk.auth', WHISK_AUTH or AUTH= in ~/.wskprops)",
    403: "the API key is valid but not entitled to this namespace or entity",
    429: "the namespace's rate limits were exceeded for longer than the client retries; raise "
         "them (wskadmin limits set) or lower 'whisk.max-in-flight'",
}


@dataclass(frozen=True)
class Invocation:
    """What an invoke returned: ``status`` 202 means not finished (only ``activation_id`` is known).

    For 200 (success) and 502/500 (the activation failed) ``record`` holds the whole activation
    record, or is None when ``result=True`` was asked; ``result`` holds the action's result.
    """

    status: int
    activation_id: str
    record: dict[str, Any] | None
    result: Any
    request_id: str | None

    @property
    def done(self) -> bool:
        """Whether the activation finished within the blocking wait."""
        return self.status != 202


@dataclass
class ClientStats:
    """Counters a scheduler can report: requests sent, 429/503 answers retried, polls made."""

    requests: int = 0
    throttled: int = 0
    unavailable: int = 0
    polls: int = 0


class _RateLimiter:
    """At most ``per_minute`` acquisitions in any sliding window of RATE_WINDOW_SECONDS."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._times: collections.deque[float] = collections.deque()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        async with self._lock:
            while True:
                now = loop.time()
                while self._times and now - self._times[0] >= RATE_WINDOW_SECONDS:
                    self._times.popleft()
                if len(self._times) < self.per_minute:
                    self._times.append(now)
                    return
                await asyncio.sleep(self._times[0] + RATE_WINDOW_SECONDS - now)


def _key_values(items: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """OpenWhisk's ``[{"key": k, "value": v}]`` form from a mapping (a list passes through)."""
    if items is None:
        return []
    if isinstance(items, Mapping):
        return [{"key": k, "value": v} for k, v in items.items()]
    return [dict(item) for item in items]


async def _sleep_jittered(backoff: float) -> float:
    """Sleep between half and all of ``backoff`` seconds; return the next (doubled, capped) one."""
    await asyncio.sleep(random.uniform(backoff / 2, backoff))
    return min(backoff * 2, _MAX_BACKOFF)


def _error_message(body: Any) -> str:
    """OpenWhisk's ``error`` text from a reply body, or the body itself, cut short."""
    if isinstance(body, Mapping) and "error" in body:
        error = body["error"]
        return error if isinstance(error, str) else json.dumps(error)[:_ERROR_TEXT_LIMIT]
    if isinstance(body, str):
        return body[:_ERROR_TEXT_LIMIT] or "(empty response body)"
    return json.dumps(body)[:_ERROR_TEXT_LIMIT]


@dataclass(frozen=True)
class _Reply:
    status: int
    body: Any
    request_id: str | None
    activation_id: str | None
    location: str | None = None


class OpenWhiskClient:
    """Async client for one OpenWhisk namespace; use ``async with`` or ``await close()``."""

    def __init__(self, config: WhiskConfig, settings: ClientSettings | None = None) -> None:
        self.config = config
        self.settings = settings or ClientSettings.from_dask_config()
        self.stats = ClientStats()
        #: HTTP Basic header of the API key, sent on every request but ``info()``
        self._authorization = "Basic " + base64.b64encode(config.auth.encode()).decode("ascii")
        self.max_concurrency = 0  # set by configure_pacing (explicitly, or at the first invoke)
        self.invocations_per_minute: int | None = None
        self._session: aiohttp.ClientSession | None = None
        self._semaphore = asyncio.Semaphore(1)  # replaced by configure_pacing before any invoke
        self._rate: _RateLimiter | None = None
        self._paced = False
        self._pacing_lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"OpenWhiskClient({self.config!r}, max_concurrency={self.max_concurrency})"

    async def __aenter__(self) -> OpenWhiskClient:
        self._open()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool; the client cannot be used afterwards."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.settings.connection_limit, limit_per_host=0,
                keepalive_timeout=30, ttl_dns_cache=300,
                ssl=not self.config.insecure,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, headers={"Accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=90),
            )
        return self._session

    # ----------------------------------------------------------------- pacing

    async def configure_pacing(self, limits: Mapping[str, Any] | None = None) -> int:
        """Size the in-flight semaphore and the rate limiter from the namespace's limits.

        ``limits`` defaults to what ``GET limits`` answers. Returns (and sets
        ``max_concurrency`` to) the smallest of ``concurrentInvocations``,
        ``whisk.max-in-flight`` and the connection limit: how wide a scheduler should fan out.
        """
        if limits is None:
            try:
                limits = await self.limits()
            except WhiskNotFound:
                limits = {}  # an old deployment without the limits route: rely on 429 retries
        concurrent = limits.get("concurrentInvocations")
        per_minute = limits.get("invocationsPerMinute")
        caps = [self.settings.connection_limit, self.settings.max_in_flight, concurrent]
        self.max_concurrency = max(1, min(int(c) for c in caps if c is not None))
        self.invocations_per_minute = int(per_minute) if per_minute is not None else None
        self._semaphore = asyncio.Semaphore(self.max_concurrency)
        self._rate = _RateLimiter(self.invocations_per_minute) if self.invocations_per_minute else None
        self._paced = True
        return self.max_concurrency

    async def _ensure_pacing(self) -> None:
        if self._paced:
            return
        if self._pacing_lock is None:
            self._pacing_lock = asyncio.Lock()
        async with self._pacing_lock:
            if not self._paced:
                await self.configure_pacing()

    # ----------------------------------------------------------------- transport

    def _entity_url(self, collection: str, name: str = "") -> tuple[str, str]:
        """(full URL, path for messages) of ``collection/name``; ``/ns/pkg/name`` picks its namespace."""
        base = self.config.namespace_url
        if name.startswith("/"):
            namespace, _, name = name[1:].partition("/")
            base = f"{self.config.api_url}/namespaces/{quote(namespace, safe='')}"
        path = f"{base}/{collection}"
        if name:
            path += "/" + quote(name, safe="/")
        return path, path[len(self.config.apihost):]

    async def _request(self, method: str, url: str, path: str, *,
                       query: Mapping[str, Any] | None = None, body: Any = None,
                       invoke: bool = False, read_timeout: float = 90.0,
                       authenticated: bool = True) -> _Reply:
        """Send one request, retrying 429/503 and broken keep-alive connections within budget."""
        session = self._open()
        if query:
            url += "?" + urlencode({k: str(v).lower() if isinstance(v, bool) else v
                                    for k, v in query.items() if v is not None})
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if authenticated:
            headers["Authorization"] = self._authorization
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=read_timeout)
        loop = asyncio.get_running_loop()
        started = loop.time()
        backoff = _FIRST_BACKOFF
        attempt = 0
        while True:
            attempt += 1
            if invoke and self._rate is not None:
                await self._rate.acquire()
            self.stats.requests += 1
            answer, failure, transient = await self._exchange(
                session, method, URL(url, encoded=True), path, data, headers, timeout)
            if failure is not None:
                if transient and not invoke and self._may_retry(attempt, started, backoff):
                    # A pooled keep-alive connection the server had closed: retry on a fresh one.
                    # Never an invoke: it may have run already (the job retries it afresh).
                    backoff = await _sleep_jittered(backoff)
                    continue
                raise failure  # raised outside any handler: no chained aiohttp exception
            status, raw, request_id, activation_id, location = answer
            body_value = self._decode(raw)
            if status in _RETRY_STATUSES:
                if status == 429:
                    self.stats.throttled += 1
                else:
                    self.stats.unavailable += 1
                if self._may_retry(attempt, started, backoff):
                    logger.debug("OpenWhisk answered %s to %s %s (attempt %d): %s; backing off",
                                 status, method, path, attempt, _error_message(body_value))
                    backoff = await _sleep_jittered(backoff)
                    continue
            if request_id is None and isinstance(body_value, Mapping):
                code = body_value.get("code")
                request_id = str(code) if code is not None else None
            return _Reply(status, body_value, request_id, activation_id, location)

    async def _exchange(self, session: aiohttp.ClientSession, method: str, url: URL, path: str,
                        data: bytes | None, headers: dict[str, str] | None,
                        timeout: aiohttp.ClientTimeout) -> tuple[Any, WhiskError | None, bool]:
        """One HTTP exchange: (answer, None, False), or (None, error, whether a retry may help).

        aiohttp's exceptions are translated, never chained: their request info holds headers.
        """
        try:
            async with session.request(method, url, data=data, headers=headers, timeout=timeout,
                                       allow_redirects=False) as response:
                raw = await response.read()
                answer = (response.status, raw, response.headers.get("X-Request-ID"),
                          response.headers.get("x-openwhisk-activation-id"),
                          response.headers.get("Location"))
            return answer, None, False
        except aiohttp.ClientConnectorError as exc:
            failure, transient = self._connection_error(exc, method, path), False
        except aiohttp.ConnectionTimeoutError:
            failure = WhiskConnectionError(
                f"Connecting to OpenWhisk at {self.config.apihost} timed out: check the API "
                "host and the network path to it", method=method, path=path)
            transient = False
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
                aiohttp.ClientPayloadError) as exc:
            failure = WhiskConnectionError(
                f"The connection to OpenWhisk at {self.config.apihost} broke: "
                f"{type(exc).__name__}", method=method, path=path)
            transient = True
        except asyncio.TimeoutError:
            failure = WhiskTimeout(
                f"OpenWhisk at {self.config.apihost} sent no answer within "
                f"{timeout.sock_read:.0f} s", method=method, path=path)
            transient = False
        except aiohttp.ClientError as exc:
            failure = WhiskConnectionError(
                f"Request to OpenWhisk at {self.config.apihost} failed: {type(exc).__name__}",
                method=method, path=path)
            transient = False
        return None, failure, transient

    def _may_retry(self, attempt: int, started: float, backoff: float) -> bool:
        elapsed = asyncio.get_running_loop().time() - started
        return (attempt < self.settings.retry_attempts
                and elapsed + backoff / 2 <= self.settings.retry_max_seconds)

    @staticmethod
    def _decode(raw: bytes) -> Any:
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")

    def _connection_error(self, exc: aiohttp.ClientConnectorError, method: str,
                          path: str) -> WhiskConnectionError:
        if isinstance(exc, aiohttp.ClientSSLError):
            hint = ("the TLS handshake failed; if it serves plain HTTP (as `dask-whisk server` "
                    "does), write the API host as http://host:port (without a scheme it means "
                    "https); for a self-signed certificate set 'whisk.insecure: true' "
                    "(DASK_WHISK__INSECURE=True)")
        else:
            hint = ("check that OpenWhisk is running there and that the API host "
                    "('whisk.apihost', WHISK_APIHOST or APIHOST= in ~/.wskprops) is right")
        reason = exc.os_error.strerror if exc.os_error and exc.os_error.strerror else type(exc).__name__
        return WhiskConnectionError(
            f"Cannot connect to OpenWhisk at {self.config.apihost} ({reason}): {hint}",
            method=method, path=path)

    def _raise_for(self, reply: _Reply, method: str, path: str) -> None:
        """Raise the typed WhiskError for a non-2xx reply."""
        if 300 <= reply.status < 400:
            raise WhiskError(
                f"OpenWhisk at {self.config.apihost} redirected to {reply.location or '(nowhere)'}: "
                "set the API host to where it redirects", status=reply.status,
                request_id=reply.request_id, method=method, path=path)
        if reply.status < 400:
            return
        cls = _BY_STATUS.get(reply.status, WhiskServerError if reply.status >= 500 else WhiskError)
        message = _error_message(reply.body)
        hint = _HINTS.get(reply.status)
        if hint:
            message = f"{message} ({hint})"
        raise cls(message, status=reply.status, request_id=reply.request_id, method=method,
                  path=path)

    async def _call(self, method: str, collection: str, name: str = "", **kwargs: Any) -> Any:
        url, path = self._entity_url(collection, name)
        reply = await self._request(method, url, path, **kwargs)
        self._raise_for(reply, method, path)
        return reply.body

    # ----------------------------------------------------------------- actions

    async def put_action(self, name: str, *, code: str | None = None, kind: str, main: str = "main",
                         binary: bool | None = None, image: str | None = None,
                         limits: Mapping[str, Any] | None = None,
                         annotations: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
                         parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
                         overwrite: bool = True) -> dict[str, Any]:
        """Create or update an action and return it as OpenWhisk stored it.

        ``code`` is source text or a base64 zip (``binary`` left to the server when None);
        ``image`` is a blackbox image (``kind="blackbox"``). Without ``overwrite`` an existing
        action raises WhiskConflict.
        """
        if code is None and image is None:
            raise ValueError(f"put_action({name!r}): give the action's code, or an image for kind 'blackbox'")
        exec_: dict[str, Any] = {"kind": kind, "main": main}
        if code is not None:
            exec_["code"] = code
        if binary is not None:
            exec_["binary"] = binary
        if image is not None:
            exec_["image"] = image
        body: dict[str, Any] = {"exec": exec_}
        if limits:
            body["limits"] = dict(limits)
        if annotations is not None:
            body["annotations"] = _key_values(annotations)
        if parameters is not None:
            body["parameters"] = _key_values(parameters)
        return await self._call("PUT", "actions", name, body=body,
                                query={"overwrite": overwrite} if overwrite else None)

    async def get_action(self, name: str, code: bool = True) -> dict[str, Any]:
        """The action's definition; ``code=False`` leaves out its (possibly large) code."""
        return await self._call("GET", "actions", name, query=None if code else {"code": False})

    async def delete_action(self, name: str) -> dict[str, Any]:
        """Delete an action; returns the deleted definition. Raises WhiskNotFound if absent."""
        return await self._call("DELETE", "actions", name)

    async def list_actions(self, limit: int = 30, skip: int = 0) -> list[dict[str, Any]]:
        """One page of the namespace's actions (OpenWhisk caps ``limit`` at 200)."""
        return await self._call("GET", "actions", query={"limit": limit, "skip": skip})

    # ----------------------------------------------------------------- invocations

    async def invoke(self, name: str, params: Mapping[str, Any] | None = None, *,
                     blocking: bool = False, result: bool = False,
                     timeout_ms: int | None = None) -> Invocation:
        """Invoke an action once (paced to the namespace limits, 429/503 retried).

        Non-blocking, or blocking past ``timeout_ms`` (default: the deployment's maximum wait,
        60 s unless raised; a larger value is a WhiskBadRequest): status 202 with only the id.
        A failed activation (502, or 500 carrying an activation id) is returned, not raised.
        A connection dropped mid-request is retried, so an action may (rarely) run twice.
        """
        await self._ensure_pacing()
        if blocking:
            async with self._semaphore:
                return await self._invoke(name, params, blocking=True, result=result,
                                          timeout_ms=timeout_ms)
        return await self._invoke(name, params, blocking=False, result=False, timeout_ms=timeout_ms)

    async def _invoke(self, name: str, params: Mapping[str, Any] | None, *, blocking: bool,
                      result: bool, timeout_ms: int | None) -> Invocation:
        url, path = self._entity_url("actions", name)
        query: dict[str, Any] = {"blocking": blocking}
        if blocking:
            query.update(result=result, timeout=None if timeout_ms is None else int(timeout_ms))
        wait_ms = MAX_BLOCKING_MS if timeout_ms is None else max(timeout_ms, 0)
        reply = await self._request("POST", url, path, query=query, body=dict(params or {}),
                                    invoke=True, read_timeout=wait_ms / 1000 + 30)
        body = reply.body
        activation_id = reply.activation_id
        if activation_id is None and not result and isinstance(body, Mapping):
            activation_id = body.get("activationId")
        if reply.status == 202 and activation_id:
            return Invocation(202, str(activation_id), None, None, reply.request_id)
        # 502 and 500 are the activation's own failure only when they name an activation:
        # a proxy's 502 or a controller's 500 carry no activation id and raise below.
        if activation_id and (reply.status == 200 or reply.status >= 500):
            if result or not isinstance(body, Mapping):
                return Invocation(reply.status, str(activation_id), None, body, reply.request_id)
            value = (body.get("response") or {}).get("result")
            return Invocation(reply.status, str(activation_id), dict(body), value, reply.request_id)
        self._raise_for(reply, "POST", path)
        raise WhiskError(f"OpenWhisk answered an invoke with HTTP {reply.status} and no activation id",
                         status=reply.status, request_id=reply.request_id, method="POST", path=path)

    async def run(self, name: str, params: Mapping[str, Any] | None = None, *,
                  timeout: float | None = None) -> dict[str, Any]:
        """Run an action to completion and return its whole activation record, failed or not.

        A blocking invoke; if OpenWhisk's blocking wait ends first (202), the record is polled
        with gentle backoff. Holds one in-flight slot throughout. Raises WhiskTimeout when no
        record exists after ``timeout`` seconds (default ``whisk.client.run-timeout``).
        """
        await self._ensure_pacing()
        limit = self.settings.run_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        async with self._semaphore:
            deadline = loop.time() + limit  # time queued for a slot is not the activation's
            invocation = await self._invoke(name, params, blocking=True, result=False,
                                            timeout_ms=None)
            if invocation.record is not None:
                return invocation.record
            delay = _FIRST_POLL
            while True:
                try:
                    return await self.get_activation(invocation.activation_id)
                except WhiskNotFound:
                    pass  # the record is written when the activation completes
                except (WhiskServerError, WhiskConnectionError, WhiskTimeout) as exc:
                    # a GET is safe to repeat; the deadline bounds how long
                    logger.debug("polling activation %s failed (%s); polling on",
                                 invocation.activation_id, exc)
                self.stats.polls += 1
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise WhiskTimeout(
                        f"Activation {invocation.activation_id} of {name!r} produced no record "
                        f"within {limit:.0f} s", request_id=invocation.request_id)
                await asyncio.sleep(min(random.uniform(delay / 2, delay), remaining))
                delay = min(delay * 1.5, _MAX_POLL)

    # ----------------------------------------------------------------- activations

    async def get_activation(self, activation_id: str) -> dict[str, Any]:
        """The activation record, logs included; WhiskNotFound until the activation finished."""
        return await self._call("GET", "activations", activation_id)

    async def activation_result(self, activation_id: str) -> dict[str, Any]:
        """``{"result", "success", "status", "size"}`` of a finished activation."""
        return await self._call("GET", "activations", f"{activation_id}/result")

    async def activation_logs(self, activation_id: str) -> list[str]:
        """The activation's log lines (``"<ISO time> stdout: line"``)."""
        body = await self._call("GET", "activations", f"{activation_id}/logs")
        return list(body.get("logs", [])) if isinstance(body, Mapping) else []

    async def list_activations(self, limit: int = 30, skip: int = 0, name: str | None = None, *,
                               docs: bool = False, since: int | None = None,
                               upto: int | None = None) -> list[dict[str, Any]]:
        """One page of activations, newest first; ``docs=True`` for whole records."""
        query = {"limit": limit, "skip": skip, "name": name, "since": since, "upto": upto,
                 "docs": docs or None}
        return await self._call("GET", "activations", query=query)

    async def limits(self) -> dict[str, Any]:
        """The namespace's limits (``invocationsPerMinute``, ``concurrentInvocations``, ...)."""
        return await self._call("GET", "limits")

    async def info(self) -> dict[str, Any]:
        """What ``GET {apihost}/`` says of the deployment: its ``runtimes`` and ``limits``.

        Sent without credentials (OpenWhisk serves it to anyone), so it tells whether the API
        answers at all apart from whether the key is accepted. WhiskError when it is not a
        JSON object (a gateway that exposes only /api/v1, say).
        """
        path = "/"
        reply = await self._request("GET", self.config.apihost + path, path, authenticated=False)
        self._raise_for(reply, "GET", path)
        if not isinstance(reply.body, Mapping):
            raise WhiskError(f"{self.config.apihost}/ answered something other than OpenWhisk's "
                             "deployment description (a JSON object)", status=reply.status,
                             request_id=reply.request_id, method="GET", path=path)
        return dict(reply.body)


__all__ = [
    "OpenWhiskClient", "Invocation", "ClientStats", "WhiskError", "WhiskBadRequest",
    "WhiskAuthError", "WhiskNotFound", "WhiskConflict", "WhiskPayloadTooLarge", "WhiskThrottled",
    "WhiskServerError", "WhiskConnectionError", "WhiskTimeout",
]
