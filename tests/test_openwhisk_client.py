"""The OpenWhisk REST client against the real local OpenWhisk-compatible server (no mocks)."""
from __future__ import annotations

import asyncio
import contextlib
import pickle
import socket
import uuid

import pytest

from dask_whisk.config import ClientSettings, WhiskConfig
from dask_whisk.openwhisk import (
    OpenWhiskClient,
    WhiskAuthError,
    WhiskBadRequest,
    WhiskConflict,
    WhiskConnectionError,
    WhiskError,
    WhiskNotFound,
    WhiskPayloadTooLarge,
    WhiskServerError,
    WhiskThrottled,
    WhiskTimeout,
)
from dask_whisk.server import GUEST_AUTH, FaultSettings, ServerSettings, start_server_process

KIND = "python:3.11"

ECHO = '''
import os
import time

def main(args):
    if args.get("sleep"):
        time.sleep(args["sleep"])
    print("hello from", os.environ.get("__OW_ACTIVATION_ID"))
    if args.get("fail"):
        return {"error": "asked to fail: " + str(args["fail"])}
    return {"echo": args.get("x"), "greeting": args.get("greeting"),
            "activation": os.environ.get("__OW_ACTIVATION_ID")}
'''


def arun(coro):
    """Run one coroutine to completion on a fresh event loop."""
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def server():
    """A server with research-sized limits and a short blocking wait (to exercise polling)."""
    with start_server_process(ServerSettings(
            invocations_per_minute=1_000_000, concurrent_invocations=1_000,
            max_blocking_wait_ms=1_500, max_code_bytes=64 * 1024)) as handle:
        yield handle


@pytest.fixture(scope="module")
def narrow_server():
    """OpenWhisk's default-style narrow concurrency: two activations in flight."""
    with start_server_process(ServerSettings(
            invocations_per_minute=1_000_000, concurrent_invocations=2)) as handle:
        yield handle


@pytest.fixture(scope="module")
def slow_rate_server():
    """Three invocations per minute."""
    with start_server_process(ServerSettings(
            invocations_per_minute=3, concurrent_invocations=30)) as handle:
        yield handle


@pytest.fixture(scope="module")
def faulty_server():
    """Injects 503s and whisk internal errors into 30% of invokes (seeded, so repeatable)."""
    faults = FaultSettings(fault_rate=0.3, kinds=("503", "whisk internal error"), seed=7)
    with start_server_process(ServerSettings(
            invocations_per_minute=1_000_000, concurrent_invocations=100, faults=faults)) as handle:
        yield handle


def config_for(handle) -> WhiskConfig:
    return WhiskConfig(apihost=handle.url, auth=handle.auth)


def client_for(handle, **settings) -> OpenWhiskClient:
    return OpenWhiskClient(config_for(handle), ClientSettings.from_dask_config(**settings))


async def ensure_echo(client: OpenWhiskClient, name: str = "echo") -> None:
    await client.put_action(name, code=ECHO, kind=KIND, limits={"timeout": 30_000})


def test_action_lifecycle(server):
    async def scenario():
        name = f"life {uuid.uuid4().hex[:8]}@x"  # a space and '@' are legal in entity names
        async with client_for(server) as client:
            created = await client.put_action(
                name, code=ECHO, kind=KIND, limits={"memory": 128},
                annotations={"purpose": "test"}, parameters={"greeting": "hi"}, overwrite=False)
            assert created["name"] == name
            assert created["exec"]["kind"] == KIND
            annotations = {a["key"]: a["value"] for a in created["annotations"]}
            assert annotations["purpose"] == "test"
            assert annotations["provide-api-key"] is False  # added by the server on create
            with pytest.raises(WhiskConflict) as conflict:
                await client.put_action(name, code=ECHO, kind=KIND, overwrite=False)
            assert conflict.value.status == 409 and conflict.value.request_id

            updated = await client.put_action(name, code=ECHO, kind=KIND, limits={"timeout": 5_000})
            assert updated["version"] != created["version"]
            assert updated["limits"]["memory"] == 128 and updated["limits"]["timeout"] == 5_000

            fetched = await client.get_action(name)
            assert fetched["exec"]["code"] == ECHO
            assert "code" not in (await client.get_action(name, code=False))["exec"]
            assert (await client.get_action(f"/_/{name}", code=False))["name"] == name  # /ns/name
            assert name in {a["name"] for a in await client.list_actions(limit=200)}

            record = await client.run(name, {"x": 1})  # default parameters merge under the call's
            assert record["response"]["result"]["greeting"] == "hi"

            deleted = await client.delete_action(name)
            assert deleted["name"] == name
            with pytest.raises(WhiskNotFound) as missing:
                await client.get_action(name)
            assert missing.value.status == 404
            assert "The requested resource does not exist." in str(missing.value)
            with pytest.raises(WhiskNotFound):
                await client.delete_action(name)
    arun(scenario())


def test_invoke_blocking_result_and_nonblocking(server):
    async def scenario():
        async with client_for(server) as client:
            await ensure_echo(client)
            done = await client.invoke("echo", {"x": 7}, blocking=True)
            assert done.status == 200 and done.done
            assert done.result["echo"] == 7
            assert done.record["activationId"] == done.activation_id == done.result["activation"]
            assert done.record["response"]["status"] == "success"

            only = await client.invoke("echo", {"x": 8}, blocking=True, result=True)
            assert only.status == 200 and only.record is None
            assert only.result["echo"] == 8 and len(only.activation_id) == 32

            queued = await client.invoke("echo", {"x": 9})
            assert queued.status == 202 and not queued.done and queued.record is None
            record = await wait_for_record(client, queued.activation_id)
            assert record["response"]["result"]["echo"] == 9

            result = await client.activation_result(queued.activation_id)
            assert result["success"] is True and result["result"]["echo"] == 9
            logs = await client.activation_logs(queued.activation_id)
            assert any(f"hello from {queued.activation_id}" in line for line in logs)
            listed = await client.list_activations(limit=50, name="echo")
            assert queued.activation_id in {a["activationId"] for a in listed}
    arun(scenario())


async def wait_for_record(client: OpenWhiskClient, activation_id: str) -> dict:
    for _ in range(400):
        try:
            return await client.get_activation(activation_id)
        except WhiskNotFound:
            await asyncio.sleep(0.05)
    raise AssertionError(f"activation {activation_id} never completed")


def test_run_polls_when_blocking_wait_ends_first(server):
    async def scenario():
        async with client_for(server) as client:
            await ensure_echo(client)
            early = await client.invoke("echo", {"sleep": 2.5, "x": 1}, blocking=True)
            assert early.status == 202 and early.record is None  # server's blocking wait is 1.5 s
            polls_before = client.stats.polls
            record = await client.run("echo", {"sleep": 2.5, "x": 2})
            assert record["response"]["success"] is True
            assert record["response"]["result"]["echo"] == 2
            assert client.stats.polls > polls_before
    arun(scenario())


def test_application_error_is_a_normal_return(server):
    async def scenario():
        async with client_for(server) as client:
            await ensure_echo(client)
            record = await client.run("echo", {"fail": "on purpose"})
            assert record["response"]["status"] == "application error"
            assert record["response"]["success"] is False
            assert record["response"]["result"] == {"error": "asked to fail: on purpose"}
            failed = await client.invoke("echo", {"fail": 1}, blocking=True)
            assert failed.status == 502 and failed.result == {"error": "asked to fail: 1"}
    arun(scenario())


def test_wrong_key_is_a_typed_error_without_the_key(server):
    subject = server.auth.split(":")[0]
    wrong_key = "W" * 64
    config = WhiskConfig(apihost=server.url, auth=f"{subject}:{wrong_key}")

    async def scenario():
        async with OpenWhiskClient(config) as client:
            with pytest.raises(WhiskAuthError) as info:
                await client.list_actions()
            with pytest.raises(WhiskAuthError):
                await client.run("echo", {})
            return info.value
    error = arun(scenario())
    assert error.status == 401
    assert "The supplied authentication is invalid" in error.message
    assert error.request_id and len(error.request_id) == 32
    for text in (str(error), repr(error), *map(str, error.args), repr(pickle.loads(pickle.dumps(error)))):
        assert wrong_key not in text and server.auth.split(":")[1] not in text
    assert "whisk.auth" in str(error)  # says what to check


def test_info_describes_runtimes_and_limits_without_credentials(server):
    wrong = WhiskConfig(apihost=server.url, auth=server.auth.split(":")[0] + ":" + "W" * 64)

    async def scenario():
        async with OpenWhiskClient(wrong) as client:
            info = await client.info()  # answered although the key is wrong: no auth needed
            with pytest.raises(WhiskAuthError):
                await client.limits()
            return info
    info = arun(scenario())
    kinds = {rt["kind"]: rt for family in info["runtimes"].values() for rt in family}
    assert KIND in kinds and kinds[KIND]["default"] is True
    assert info["api_paths"] == ["/api/v1"]
    assert info["limits"]["concurrent_actions"] == 1_000
    assert info["limits"]["actions_per_minute"] == 1_000_000
    assert info["limits"]["max_action_memory"] == 512 * 1024 * 1024


def test_info_sends_no_authorization_header_and_rejects_non_json():
    """A plain loopback HTTP server records what the client sends to ``/``."""
    from aiohttp import web

    seen: list[dict] = []

    async def root(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(text="<html>a gateway page</html>", content_type="text/html")

    async def scenario():
        app = web.Application()
        app.router.add_get("/", root)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        config = WhiskConfig(apihost=f"http://127.0.0.1:{port}", auth=GUEST_AUTH)
        try:
            async with OpenWhiskClient(config) as client:
                with pytest.raises(WhiskError) as caught:
                    await client.info()
                return caught.value
        finally:
            await runner.cleanup()
    error = arun(scenario())
    assert len(seen) == 1 and "Authorization" not in seen[0]
    assert "deployment description" in str(error) and GUEST_AUTH.split(":")[1] not in str(error)


def test_not_found_and_bad_request(server):
    async def scenario():
        async with client_for(server) as client:
            with pytest.raises(WhiskNotFound):
                await client.invoke("no-such-action", {}, blocking=True)
            with pytest.raises(WhiskNotFound):
                await client.run("no-such-action", {})
            with pytest.raises(WhiskNotFound):
                await client.get_activation(uuid.uuid4().hex)
            with pytest.raises(WhiskBadRequest) as bad:
                await client.get_activation("not-an-activation-id")
            assert bad.value.status == 400
    arun(scenario())


def test_payload_and_code_too_large(server):
    async def scenario():
        async with client_for(server) as client:
            await ensure_echo(client)
            with pytest.raises(WhiskPayloadTooLarge) as payload:
                await client.run("echo", {"x": "y" * (1 << 20)})
            assert payload.value.status == 413
            assert "Request larger than allowed" in payload.value.message
            with pytest.raises(WhiskPayloadTooLarge):
                await client.put_action("too-big", code="#" * (65 * 1024), kind=KIND)
    arun(scenario())


def test_connection_refused_names_the_host():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = WhiskConfig(apihost=f"http://127.0.0.1:{port}", auth=ServerSettings().auth)

    async def scenario():
        async with OpenWhiskClient(config) as client:
            with pytest.raises(WhiskConnectionError) as info:
                await client.run("echo", {})
            return info.value
    error = arun(scenario())
    assert error.status is None
    assert f"http://127.0.0.1:{port}" in str(error) and "whisk.apihost" in str(error)
    assert ServerSettings().auth.split(":")[1] not in str(error)
    assert error.__context__ is None and error.__cause__ is None  # aiohttp's request info stays out


def test_https_to_a_plain_http_server_says_to_write_http(server):
    # a wskprops APIHOST without a scheme means https: the hint must say how to fix it
    config = WhiskConfig(apihost=server.url.removeprefix("http://"), auth=server.auth)
    assert config.apihost.startswith("https://")

    async def scenario():
        async with OpenWhiskClient(config) as client:
            with pytest.raises(WhiskConnectionError) as caught:
                await client.limits()
            return str(caught.value)
    message = arun(scenario())
    assert "TLS handshake failed" in message and "http://host:port" in message
    assert server.auth.split(":")[1] not in message


def test_pacing_follows_namespace_limits(server, narrow_server):
    async def scenario():
        async with client_for(server) as client:
            assert await client.configure_pacing() == min(1_000, client.settings.connection_limit)
            assert client.invocations_per_minute == 1_000_000
        async with client_for(narrow_server) as client:
            await ensure_echo(client)
            assert await client.configure_pacing() == 2
            records = await asyncio.gather(*(client.run("echo", {"sleep": 0.2, "x": i}) for i in range(12)))
            assert [r["response"]["result"]["echo"] for r in records] == list(range(12))
            assert client.stats.throttled == 0  # paced to the limit: never rejected
        async with client_for(narrow_server, max_in_flight=1) as client:
            assert await client.configure_pacing() == 1
    arun(scenario())


def test_throttled_calls_are_retried_until_they_succeed(narrow_server):
    async def scenario():
        async with client_for(narrow_server) as client:
            await ensure_echo(client)
            # Pretend the namespace were wide open, so the server's 429s are what holds us back.
            await client.configure_pacing({"concurrentInvocations": 1_000, "invocationsPerMinute": 10**6})
            records = await asyncio.gather(*(client.run("echo", {"sleep": 0.2, "x": i}) for i in range(12)))
            assert [r["response"]["result"]["echo"] for r in records] == list(range(12))
            assert client.stats.throttled > 0
    arun(scenario())


def test_throttling_beyond_the_retry_budget_raises(narrow_server):
    async def scenario():
        async with client_for(narrow_server, retry_attempts=2, retry_max_seconds=1.0) as client:
            await ensure_echo(client)
            await client.configure_pacing({"concurrentInvocations": 1_000})
            sleepers = [await client.invoke("echo", {"sleep": 3}) for _ in range(2)]
            with pytest.raises(WhiskThrottled) as info:
                await client.invoke("echo", {"x": 1}, blocking=True)
            for sleeper in sleepers:  # leave the namespace idle for whoever comes next
                await wait_for_record(client, sleeper.activation_id)
            return info.value
    error = arun(scenario())
    assert error.status == 429 and "Too many concurrent requests" in error.message
    assert "max-in-flight" in str(error)


def test_unavailable_is_retried_and_internal_errors_are_records(faulty_server):
    async def scenario():
        async with client_for(faulty_server) as client:
            await ensure_echo(client)
            return [await client.run("echo", {"x": i}) for i in range(40)], client.stats
    records, stats = arun(scenario())
    assert stats.unavailable > 0  # every 503 was retried: each call still produced a record
    statuses = [r["response"]["status"] for r in records]
    assert set(statuses) == {"success", "whisk internal error"}
    for i, record in enumerate(records):
        if record["response"]["status"] == "success":
            assert record["response"]["result"]["echo"] == i


def test_rate_limiter_holds_calls_instead_of_hammering(slow_rate_server):
    async def scenario():
        async with client_for(slow_rate_server) as client:
            await ensure_echo(client)
            await client.configure_pacing()
            assert client.invocations_per_minute == 3
            for i in range(3):
                assert (await client.invoke("echo", {"x": i})).status == 202
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.invoke("echo", {"x": 3}), timeout=1.0)
            assert client.stats.throttled == 0  # the fourth call waited; it was never sent
    arun(scenario())


def test_hundreds_of_concurrent_runs_lose_none(server):
    count = 300

    async def scenario():
        async with client_for(server) as client:
            await ensure_echo(client)
            records = await asyncio.gather(*(client.run("echo", {"x": i}) for i in range(count)))
            return records, client.stats
    records, stats = arun(scenario())
    assert [r["response"]["result"]["echo"] for r in records] == list(range(count))
    assert len({r["activationId"] for r in records}) == count
    assert stats.throttled == 0


def test_errors_pickle_with_their_fields():
    error = WhiskConflict("resource already exists", status=409, request_id="r" * 32,
                          method="PUT", path="/api/v1/namespaces/_/actions/a")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is WhiskConflict and isinstance(copy, WhiskError)
    assert (copy.status, copy.request_id, copy.message, str(copy)) == (
        409, "r" * 32, "resource already exists", str(error))


# -- odd answers no OpenWhisk gives, from a small aiohttp server ------------------------------

NS = "/api/v1/namespaces/_"
WIDE_OPEN = {"concurrentInvocations": 100, "invocationsPerMinute": 10**6}


@contextlib.asynccontextmanager
async def odd_server(routes: dict, seen: list):
    """A loopback aiohttp server answering ``routes`` ({(method, path): handler}); every
    request's (method, path, Authorization present) is appended to ``seen``."""
    from aiohttp import web

    def recording(handler):
        async def handle(request):
            seen.append((request.method, request.path, "Authorization" in request.headers))
            return await handler(request)
        return handle

    app = web.Application()
    for (method, path), handler in routes.items():
        app.router.add_route(method, path, recording(handler))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def odd_client(url: str, **settings) -> OpenWhiskClient:
    return OpenWhiskClient(WhiskConfig(apihost=url, auth=GUEST_AUTH),
                           ClientSettings.from_dask_config(**settings))


def test_no_answer_within_the_read_timeout_is_a_whisk_timeout():
    from aiohttp import web

    seen: list = []

    async def scenario():
        release = asyncio.Event()

        async def silent(request):
            await release.wait()  # answers only once the client has given up
            return web.json_response({})

        async with odd_server({("GET", f"{NS}/limits"): silent}, seen) as url:
            try:
                async with odd_client(url) as client:
                    started = asyncio.get_running_loop().time()
                    with pytest.raises(WhiskTimeout) as caught:
                        await client._call("GET", "limits", read_timeout=0.5)
                    return caught.value, asyncio.get_running_loop().time() - started
            finally:
                release.set()
    error, waited = arun(scenario())
    assert type(error) is WhiskTimeout and error.status is None
    assert 0.5 <= waited < 10
    assert "sent no answer within" in str(error) and "GET /api/v1/namespaces/_/limits" in str(error)
    assert GUEST_AUTH.split(":")[1] not in str(error)
    assert error.__context__ is None and error.__cause__ is None
    assert seen == [("GET", f"{NS}/limits", True)]  # a timeout is not retried


def test_run_without_a_record_in_time_is_a_whisk_timeout():
    from aiohttp import web

    seen: list = []
    polled_at: list = []
    activation_id = "a" * 32

    async def accepted(request):
        return web.json_response({"activationId": activation_id}, status=202,
                                 headers={"x-openwhisk-activation-id": activation_id,
                                          "X-Request-ID": "invoke-request"})

    async def missing(request):  # the odd server runs on the client's own event loop
        polled_at.append(asyncio.get_running_loop().time())
        return web.json_response({"error": "The requested resource does not exist.", "code": "r"},
                                 status=404)

    async def scenario():
        routes = {("POST", f"{NS}/actions/slow"): accepted,
                  ("GET", f"{NS}/activations/{activation_id}"): missing}
        async with odd_server(routes, seen) as url, odd_client(url) as client:
            await client.configure_pacing(WIDE_OPEN)
            started = asyncio.get_running_loop().time()
            with pytest.raises(WhiskTimeout) as caught:
                await asyncio.wait_for(client.run("slow", {}, timeout=1.0), 30)
            return caught.value, started, asyncio.get_running_loop().time(), client.stats.polls
    error, started, ended, polls = arun(scenario())
    assert type(error) is WhiskTimeout
    assert f"Activation {activation_id} of 'slow' produced no record within 1 s" in str(error)
    assert error.request_id == "invoke-request"
    assert 1.0 <= ended - started < 15
    assert seen[0] == ("POST", f"{NS}/actions/slow", True)
    assert seen[1:] == [("GET", f"{NS}/activations/{activation_id}", True)] * len(seen[1:])
    assert len(polled_at) == len(seen) - 1 == polls  # each poll one GET
    assert polled_at[-1] >= started + 1.0  # polled until the deadline, not given up before


def test_redirects_are_reported_not_followed():
    from aiohttp import web

    seen: list = []

    def redirect(status: int, located: bool = True):
        async def handle(request):  # to the same server, which would answer there
            headers = {"Location": f"http://{request.host}/elsewhere"} if located else {}
            return web.Response(status=status, headers=headers)
        return handle

    async def elsewhere(request):
        return web.json_response({"concurrentInvocations": 1, "activationId": "b" * 32,
                                  "name": "gone", "exec": {}})

    async def scenario():
        routes = {("GET", "/elsewhere"): elsewhere, ("POST", "/elsewhere"): elsewhere,
                  ("GET", f"{NS}/limits"): redirect(302),
                  ("POST", f"{NS}/actions/moved"): redirect(307),
                  ("GET", f"{NS}/actions/gone"): redirect(301, located=False)}
        errors = []
        async with odd_server(routes, seen) as url, odd_client(url) as client:
            with pytest.raises(WhiskError) as caught:
                await client.limits()
            errors.append(caught.value)
            await client.configure_pacing(WIDE_OPEN)  # the limits route redirects
            with pytest.raises(WhiskError) as caught:
                await client.invoke("moved", {"x": 1}, blocking=True)
            errors.append(caught.value)
            with pytest.raises(WhiskError) as caught:
                await client.get_action("gone")
            errors.append(caught.value)
        return url, errors
    url, (limits, invoke, gone) = arun(scenario())
    for error, status in ((limits, 302), (invoke, 307), (gone, 301)):
        assert type(error) is WhiskError and error.status == status  # no subclass fits a 3xx
        assert "set the API host to where it redirects" in str(error)
    assert f"redirected to {url}/elsewhere" in str(limits) and f"{url}/elsewhere" in str(invoke)
    assert "redirected to (nowhere)" in str(gone)
    assert [path for _, path, _ in seen] == [f"{NS}/limits", f"{NS}/actions/moved",
                                             f"{NS}/actions/gone"]  # /elsewhere never asked


def test_5xx_without_an_activation_id_raises_and_with_one_is_returned():
    from aiohttp import web

    seen: list = []

    async def proxy(request):  # a gateway's own 502: HTML, no activation id
        return web.Response(status=502, text="<html><h1>502 Bad Gateway</h1></html>",
                            content_type="text/html")

    async def controller(request):  # OpenWhisk's controller failing before any activation
        return web.json_response({"error": "The server encountered an internal error.",
                                  "code": "ctl-request"}, status=500)

    async def unavailable(request):
        return web.json_response({"error": "System is overloaded.", "code": "busy"}, status=503)

    async def failed_activation(request):  # the activation's own whisk error: a record
        record = {"activationId": "c" * 32,
                  "response": {"status": "whisk internal error", "success": False,
                               "result": {"error": "boom"}}}
        return web.json_response(record, status=500, headers={"x-openwhisk-activation-id": "c" * 32})

    async def scenario():
        routes = {("POST", f"{NS}/actions/proxy"): proxy,
                  ("POST", f"{NS}/actions/controller"): controller,
                  ("POST", f"{NS}/actions/busy"): unavailable,
                  ("POST", f"{NS}/actions/failed"): failed_activation}
        raised = {}
        async with odd_server(routes, seen) as url, \
                odd_client(url, retry_attempts=2, retry_max_seconds=30) as client:
            await client.configure_pacing(WIDE_OPEN)
            for name in ("proxy", "controller", "busy"):
                with pytest.raises(WhiskServerError) as caught:
                    await client.invoke(name, {}, blocking=True)
                raised[name] = caught.value
            with pytest.raises(WhiskServerError) as caught:
                await client.run("proxy", {})
            raised["run proxy"] = caught.value
            returned = await client.invoke("failed", {}, blocking=True)
            record = await client.run("failed", {})
        return raised, returned, record
    raised, returned, record = arun(scenario())
    assert raised["proxy"].status == 502 and "502 Bad Gateway" in raised["proxy"].message
    assert raised["proxy"].request_id is None
    assert raised["run proxy"].status == 502
    assert raised["controller"].status == 500 and raised["controller"].request_id == "ctl-request"
    assert raised["controller"].message == "The server encountered an internal error."
    assert raised["busy"].status == 503 and raised["busy"].request_id == "busy"
    assert [path for _, path, _ in seen].count(f"{NS}/actions/busy") == 2  # retried to the budget
    assert returned.status == 500 and returned.activation_id == "c" * 32
    assert returned.result == {"error": "boom"}
    assert record["response"]["status"] == "whisk internal error"
