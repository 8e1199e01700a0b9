"""The REST API of the local server (aiohttp.web), shaped like OpenWhisk's controller.

Routes under ``/api/v1``, HTTP Basic auth with one ``uuid:key``, ``X-Request-ID`` on every
response, ``{"error", "code"}`` bodies for every non-2xx, and the invoke semantics of
OpenWhisk (202 / 200 / 502 / 500, ``result``, ``timeout``, throttles before anything else).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import re
import uuid

from aiohttp import web

from .entities import ActionStore, ApiError, check_name
from .faults import FaultInjector
from .invoker import STATUS_NAMES, Invoker
from .runtimes import Runtimes
from .settings import ServerSettings

REALM = 'Basic realm="OpenWhisk secure realm"'
NOT_SUPPLIED = "The resource requires authentication, which was not supplied with the request"
INVALID_AUTH = "The supplied authentication is invalid"
ACTIVATION_ID = re.compile(r"\A[0-9a-f]{32}\Z")
REQUEST_ID = re.compile(r"\A[\w-]{1,128}\Z")
STATUS_CODES = {name: code for code, name in STATUS_NAMES.items()}
LIST_MAX = 200
LIST_DEFAULT = 30
JSON_TYPE = "application/json"
#: what ``GET /api/v1`` reports as the build (``wsk property get --apibuild`` shows it)
BUILD_DATE = "dask-whisk local server"
BUILD_NO = "local"
#: the HTTP status of a finished blocking invoke, by activation status code
BLOCKING_STATUS = {0: 200, 1: 502, 2: 502, 3: 500}

WHISK_KEY = web.AppKey("whisk", "WhiskServer")


def json_response(body: object, status: int = 200, headers: dict | None = None) -> web.Response:
    """``body`` as a JSON response (OpenWhisk answers ``application/json`` everywhere)."""
    return web.Response(body=json.dumps(body).encode(), status=status,
                        content_type=JSON_TYPE, headers=headers)


class WhiskServer:
    """The state behind the routes: settings, actions, invoker, faults."""

    def __init__(self, settings: ServerSettings, runtimes: Runtimes) -> None:
        self.settings = settings
        self.runtimes = runtimes
        self.faults = FaultInjector(settings.faults)
        self.actions = ActionStore(settings, runtimes)
        self.invoker = Invoker(settings, self.faults)
        self._basic = "Basic " + base64.b64encode(settings.auth.encode()).decode()

    def authenticate(self, request: web.Request) -> None:
        """401 unless the request carries this server's key (compared in constant time)."""
        header = request.headers.get("Authorization")
        if header is None or not header.startswith("Basic "):
            raise ApiError(401, NOT_SUPPLIED)
        if not hmac.compare_digest(header.encode(), self._basic.encode()):
            raise ApiError(401, INVALID_AUTH)

    def namespace(self, request: web.Request) -> None:
        """403 unless the path names this server's namespace (or ``_``)."""
        if request.match_info["ns"] not in ("_", self.settings.namespace):
            raise ApiError(403, "The supplied authentication is not authorized to access this resource.")

    def info(self) -> dict:
        """The deployment description of ``GET /``: runtimes and limits."""
        s = self.settings
        return {
            "description": "OpenWhisk (dask-whisk local server)",
            "support": {"github": "https://github.com/apache/openwhisk/issues",
                        "slack": "http://slack.openwhisk.org"},
            "api_paths": ["/api/v1"],
            "runtimes": self.runtimes.manifest(),
            "limits": {
                "actions_per_minute": s.invocations_per_minute,
                "triggers_per_minute": s.invocations_per_minute,
                "concurrent_actions": s.concurrent_invocations,
                "sequence_length": 50,
                "min_action_duration": s.min_timeout_ms, "max_action_duration": s.max_timeout_ms,
                "min_action_memory": s.min_memory_mb * 1024 * 1024,
                "max_action_memory": s.max_memory_mb * 1024 * 1024,
                "min_action_logs": 0, "max_action_logs": s.max_logs_mb * 1024 * 1024,
            },
        }

    def limits(self) -> dict:
        """The namespace's limits, as ``GET .../limits`` reports them."""
        s = self.settings
        return {
            "invocationsPerMinute": s.invocations_per_minute,
            "concurrentInvocations": s.concurrent_invocations,
            "firesPerMinute": s.invocations_per_minute,
            "minActionMemory": s.min_memory_mb, "maxActionMemory": s.max_memory_mb,
            "minActionLogs": 0, "maxActionLogs": s.max_logs_mb,
            "minActionTimeout": s.min_timeout_ms, "maxActionTimeout": s.max_timeout_ms,
            "minActionConcurrency": 1, "maxActionConcurrency": 1,
            "maxParameterSize": f"{s.max_payload_bytes} B",
            "maxPayloadSize": f"{s.max_payload_bytes} B",
        }


def error_response(status: int, message: str, request_id: str) -> web.Response:
    """OpenWhisk's error body; a 401 also names the realm, as the controller does."""
    headers = {"WWW-Authenticate": REALM} if status == 401 else None
    return json_response({"error": message, "code": request_id}, status, headers)


@web.middleware
async def whisk_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Request ids, authentication and OpenWhisk error bodies around every route."""
    given = request.headers.get("X-Request-ID")
    request_id = given if given and REQUEST_ID.match(given) else uuid.uuid4().hex
    request["request_id"] = request_id
    try:
        if request.path.startswith("/api/v1/namespaces"):
            request.app[WHISK_KEY].authenticate(request)
        response = await handler(request)
    except ApiError as exc:
        response = error_response(exc.status, exc.message, request_id)
    except web.HTTPException as exc:
        if exc.status == 404:
            message = "The requested resource does not exist."
        elif exc.status == 405:
            message = "HTTP method not allowed, supported methods: " + exc.headers.get("Allow", "")
        else:
            message = exc.reason
        response = error_response(exc.status, message, request_id)
    response.headers["X-Request-ID"] = request_id
    return response


async def _json_body(request: web.Request, limit: int | None = None) -> object:
    """The request's JSON body (None when empty); 413 over ``limit`` (from Content-Length before
    any byte is read, else while reading), 415 when not JSON, 400 when malformed or too deep."""
    declared = request.content_length
    if limit is not None and declared is not None and declared > limit:
        raise ApiError(413, f"Request larger than allowed: {declared} > {limit} bytes.")
    raw = await _read_at_most(request, limit) if limit is not None else await request.read()
    if not raw.strip():
        return None
    if request.content_type != JSON_TYPE:
        raise ApiError(415, "The request's Content-Type is not supported. Expected:\napplication/json")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"The request content was malformed:\n{exc}") from None
    except RecursionError:
        raise ApiError(400, "The request content was malformed:\nJSON nested too deeply") from None


async def _read_at_most(request: web.Request, limit: int) -> bytes:
    """The body of a request without (or with a false) Content-Length, stopping past ``limit``."""
    chunks, size = [], 0
    while chunk := await request.content.read(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"Request larger than allowed: {size} > {limit} bytes.")
    return b"".join(chunks)


def _int_query(request: web.Request, name: str, default: int | None, collection: str) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ApiError(400, f"The value '{value}' is not an integer for {collection}.") from None


def _list_window(request: web.Request, collection: str) -> tuple[int, int]:
    limit = _int_query(request, "limit", LIST_DEFAULT, collection)
    skip = _int_query(request, "skip", 0, collection)
    if not 0 <= limit <= LIST_MAX:
        raise ApiError(400, f"The value '{limit}' is not in the range of 0 to {LIST_MAX} for {collection}.")
    if skip < 0:
        raise ApiError(400, f"The value '{skip}' is not greater than or equal to 0 for {collection}.")
    return skip, limit or LIST_MAX


def _whisk(request: web.Request) -> WhiskServer:
    whisk = request.app[WHISK_KEY]
    whisk.namespace(request)
    return whisk


async def get_info(request: web.Request) -> web.Response:
    """GET /: the platform's description, limits and runtimes, as OpenWhisk's root answers."""
    return json_response(request.app[WHISK_KEY].info())


async def get_api(request: web.Request) -> web.Response:
    """GET /api/v1: the API's version document."""
    return json_response({"description": "OpenWhisk API", "api_version": "1.0.0",
                          "api_version_path": "v1", "build": BUILD_DATE, "buildno": BUILD_NO,
                          "swagger_paths": {"ui": "/api/v1/docs", "api-docs": "/api/v1/api-docs"}})


async def get_namespaces(request: web.Request) -> web.Response:
    """GET /api/v1/namespaces: the one namespace this server holds."""
    return json_response([request.app[WHISK_KEY].settings.namespace])


async def get_limits(request: web.Request) -> web.Response:
    """GET /namespaces/_/limits: the namespace's limits, which clients size their fan-out to."""
    return json_response(_whisk(request).limits())


async def list_actions(request: web.Request) -> web.Response:
    """GET /namespaces/_/actions: action summaries, in OpenWhisk's skip/limit window."""
    whisk = _whisk(request)
    skip, limit = _list_window(request, "actions")
    return json_response([a.summary() for a in whisk.actions.list(skip, limit)])


async def put_action(request: web.Request) -> web.Response:
    """PUT an action (create, or update with overwrite=true); warm containers of it retire."""
    whisk = _whisk(request)
    name = request.match_info["name"]
    body = await _json_body(request)
    action = whisk.actions.put(name, body, request.query.get("overwrite") == "true")
    whisk.invoker.pool.retire(name)
    return json_response(action.view())


async def get_action(request: web.Request) -> web.Response:
    """GET one action, with its code unless code=false."""
    whisk = _whisk(request)
    name = request.match_info["name"]
    check_name(name)
    action = whisk.actions.get(name)
    return json_response(action.view(code=request.query.get("code") != "false"))


async def delete_action(request: web.Request) -> web.Response:
    """DELETE an action and retire its containers."""
    whisk = _whisk(request)
    name = request.match_info["name"]
    check_name(name)
    action = whisk.actions.delete(name)
    whisk.invoker.pool.retire(name)
    return json_response(action.view())


async def invoke_action(request: web.Request) -> web.Response:
    """Invoke: 202 with the id, or (blocking) the record once done within the wait."""
    whisk = _whisk(request)
    if whisk.faults.latency_seconds:
        await asyncio.sleep(whisk.faults.latency_seconds)
    name = request.match_info["name"]
    check_name(name)
    params = await _json_body(request, whisk.settings.max_payload_bytes)
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ApiError(400, "The request content was malformed:\nthe body must be a JSON object")
    blocking = request.query.get("blocking") == "true"
    wait_ms = _blocking_wait_ms(request, whisk.settings.max_blocking_wait_ms) if blocking else 0
    fault = whisk.faults.draw()
    if fault == "429":
        raise ApiError(429, "Too many requests (injected fault).")
    if fault == "503":
        raise ApiError(503, "System is overloaded, try again later. (injected fault)")
    rejection = whisk.invoker.throttle()
    if rejection is not None:
        raise ApiError(429, rejection)
    action = whisk.actions.get(name)
    activation = whisk.invoker.submit(action, params, request["request_id"], fault)
    headers = {"x-openwhisk-activation-id": activation.id}
    if fault == "drop":
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(activation.done), wait_ms / 1000.0)
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=500)  # never sent: the connection is gone
    if blocking:
        try:
            record = await asyncio.wait_for(asyncio.shield(activation.done), wait_ms / 1000.0)
        except asyncio.TimeoutError:
            pass
        else:
            status = BLOCKING_STATUS[STATUS_CODES[record["response"]["status"]]]
            body = record["response"]["result"] if request.query.get("result") == "true" else record
            return json_response(body, status, headers)
    return json_response({"activationId": activation.id}, 202, headers)


def _blocking_wait_ms(request: web.Request, longest: int) -> int:
    """How long a blocking invoke waits: its ``timeout`` query (1..longest ms), else ``longest``."""
    given = request.query.get("timeout")
    if not given:
        return longest
    try:
        wait_ms = int(given)
    except ValueError:
        wait_ms = -1
    if not 0 < wait_ms <= longest:
        raise ApiError(400, f"Timeout must be number of milliseconds up to {longest}.")
    return wait_ms


def _record(request: web.Request) -> dict:
    whisk = _whisk(request)
    activation_id = request.match_info["id"]
    if not ACTIVATION_ID.match(activation_id):
        raise ApiError(400, "The activation id is not valid.")
    record = whisk.invoker.records.get(activation_id)
    if record is None:
        raise ApiError(404, "The requested resource does not exist.")
    return record


async def get_activation(request: web.Request) -> web.Response:
    """GET an activation record."""
    return json_response(_record(request))


async def get_activation_result(request: web.Request) -> web.Response:
    """GET an activation's response (status, success, result)."""
    return json_response(_record(request)["response"])


async def get_activation_logs(request: web.Request) -> web.Response:
    """GET an activation's log lines."""
    return json_response({"logs": _record(request)["logs"]})


async def list_activations(request: web.Request) -> web.Response:
    """GET activations newest first, filtered by name and since/upto, summaries unless docs=true."""
    whisk = _whisk(request)
    skip, limit = _list_window(request, "activations")
    since = _int_query(request, "since", None, "activations")
    upto = _int_query(request, "upto", None, "activations")
    records = whisk.invoker.records.query(name=request.query.get("name") or None, since=since,
                                          upto=upto, skip=skip, limit=limit)
    if request.query.get("docs") != "true":
        records = [_summary(r) for r in records]
    return json_response(records)


def _summary(record: dict) -> dict:
    """An activation as a list shows it (OpenWhisk's summary view: statusCode, no result)."""
    summary = {k: v for k, v in record.items() if k not in ("logs", "response", "subject")}
    summary["statusCode"] = STATUS_CODES[record["response"]["status"]]
    return summary


def make_app(settings: ServerSettings, runtimes: Runtimes) -> web.Application:
    """The aiohttp application; start ``app[WHISK_KEY].invoker`` once the URL is known."""
    app = web.Application(middlewares=[whisk_middleware],
                          client_max_size=settings.max_code_bytes + 4 * 1024 * 1024)
    app[WHISK_KEY] = WhiskServer(settings, runtimes)
    ns = "/api/v1/namespaces/{ns}"
    app.router.add_get("/", get_info)
    app.router.add_get("/api/v1", get_api)
    app.router.add_get("/api/v1/namespaces", get_namespaces)
    app.router.add_get(f"{ns}/limits", get_limits)
    app.router.add_get(f"{ns}/actions", list_actions)
    app.router.add_put(f"{ns}/actions/{{name:.+}}", put_action)
    app.router.add_get(f"{ns}/actions/{{name:.+}}", get_action)
    app.router.add_delete(f"{ns}/actions/{{name:.+}}", delete_action)
    app.router.add_post(f"{ns}/actions/{{name:.+}}", invoke_action)
    app.router.add_get(f"{ns}/activations", list_activations)
    app.router.add_get(f"{ns}/activations/{{id}}", get_activation)
    app.router.add_get(f"{ns}/activations/{{id}}/result", get_activation_result)
    app.router.add_get(f"{ns}/activations/{{id}}/logs", get_activation_logs)

    async def stop_invoker(app: web.Application) -> None:
        await app[WHISK_KEY].invoker.stop()

    app.on_cleanup.append(stop_invoker)
    return app
