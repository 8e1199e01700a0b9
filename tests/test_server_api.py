"""The local OpenWhisk-compatible server's REST API, checked with raw HTTP against openwhisk.md."""
from __future__ import annotations

import asyncio
import re
import sys
import time
import uuid

from _server_fixtures import RawWhisk, run_raw, server_factory, server_process  # noqa: F401 (fixtures)
from dask_whisk.server import GUEST_AUTH

LOG_LINE = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z (stdout|stderr): ")
KIND = f"python:3.{sys.version_info.minor}"
ECHO = "def main(args):\n    print('echo', sorted(args))\n    return {'args': args}\n"
SLEEP = "import time\ndef main(args):\n    time.sleep(args.get('s', 1))\n    return {'slept': args.get('s', 1)}\n"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def annotations(record: dict) -> dict:
    return {a["key"]: a["value"] for a in record["annotations"]}


def test_root_api_paths_and_auth(server_process):
    async def body():
        async with RawWhisk(server_process.url, None) as anon:
            status, info, headers = await anon.request("GET", "/")
            assert status == 200 and info["api_paths"] == ["/api/v1"]
            kinds = {r["kind"]: r["default"] for r in info["runtimes"]["python"]}
            assert kinds[KIND] is True
            assert info["limits"]["max_action_memory"] == 512 * 1024 * 1024
            assert re.fullmatch(r"[0-9a-zA-Z]{32}", headers["X-Request-ID"])
            status, api, _ = await anon.request("GET", "/api/v1")  # what `wsk property get` reads
            assert status == 200 and {"description", "api_version", "api_version_path", "build",
                                      "buildno", "swagger_paths"} <= set(api)
            status, error, headers = await anon.request("GET", "/api/v1/namespaces")
            assert status == 401 and headers["WWW-Authenticate"] == 'Basic realm="OpenWhisk secure realm"'
            assert error["code"] == headers["X-Request-ID"]
        async with RawWhisk(server_process.url, GUEST_AUTH[:-1] + "x") as wrong:
            status, error, _ = await wrong.request("GET", "actions")
            assert (status, error["error"]) == (401, "The supplied authentication is invalid")
        async with RawWhisk(server_process.url, server_process.auth) as ow:
            status, namespaces, _ = await ow.request("GET", "/api/v1/namespaces")
            assert (status, namespaces) == (200, ["guest"])
            status, limits, _ = await ow.request("GET", "limits")
            assert limits["maxActionMemory"] == 512 and limits["maxParameterSize"] == "1048576 B"
            status, _, headers = await ow.request("GET", "actions", headers={"X-Request-ID": "mine42"})
            assert status == 200 and headers["X-Request-ID"] == "mine42"
            status, error, headers = await ow.request("GET", "actions/no-such-action")
            assert status == 404 and error == {"error": "The requested resource does not exist.",
                                               "code": headers["X-Request-ID"]}
            status, error, _ = await ow.request("GET", "activations/not-an-id")
            assert status == 400

    asyncio.run(body())


def test_action_create_get_update_list_delete(server_process):
    name = unique("crud")

    async def scenario(ow):
        put = {"exec": {"kind": "python:default", "code": ECHO}, "limits": {"timeout": 5000},
               "parameters": [{"key": "p", "value": 1}]}
        status, created, _ = await ow.request("PUT", f"actions/{name}", put)
        assert status == 200 and created["version"] == "0.0.1"
        assert created["exec"] == {"kind": KIND, "code": ECHO, "binary": False}
        assert created["limits"] == {"timeout": 5000, "memory": 256, "logs": 10, "concurrency": 1}
        assert {"key": "provide-api-key", "value": False} in created["annotations"]
        assert {"key": "exec", "value": KIND} in created["annotations"]
        status, error, _ = await ow.request("PUT", f"actions/{name}", put)
        assert (status, error["error"]) == (409, "resource already exists")
        status, updated, _ = await ow.request("PUT", f"actions/{name}", {"limits": {"memory": 128}},
                                              params={"overwrite": "true"})
        assert updated["version"] == "0.0.2" and updated["exec"]["code"] == ECHO
        assert updated["limits"] == {"timeout": 5000, "memory": 128, "logs": 10, "concurrency": 1}
        assert updated["parameters"] == [{"key": "p", "value": 1}]
        status, without_code, _ = await ow.request("GET", f"actions/{name}", params={"code": "false"})
        assert "code" not in without_code["exec"]
        status, with_code, _ = await ow.request("GET", f"actions/{name}")
        assert with_code["exec"]["code"] == ECHO
        status, listed, _ = await ow.request("GET", "actions", params={"limit": "200"})
        summary = next(a for a in listed if a["name"] == name)
        assert set(summary) == {"namespace", "name", "version", "publish", "annotations",
                                "updated", "limits", "exec"}  # OpenWhisk's summary view
        assert summary["exec"] == {"binary": False}
        status, result, _ = await ow.invoke(name, {"q": 2}, result=True)
        assert (status, result) == (200, {"args": {"p": 1, "q": 2}})
        status, _, _ = await ow.request("DELETE", f"actions/{name}")
        assert status == 200
        status, _, _ = await ow.request("POST", f"actions/{name}", {})
        assert status == 404

    run_raw(server_process, scenario)


def test_put_validation_messages(server_process):
    name = unique("bad")

    async def scenario(ow):
        async def put(payload):
            return await ow.request("PUT", f"actions/{name}", payload, params={"overwrite": "true"})

        code = {"kind": KIND, "code": ECHO}
        status, error, _ = await put({"exec": code, "limits": {"memory": 1024}})
        assert status == 400 and error["error"].endswith(
            "requirement failed: memory 1024 MB exceeds allowed threshold of 512 MB")
        status, error, _ = await put({"exec": code, "limits": {"timeout": 50}})
        assert status == 400 and error["error"].endswith(
            "requirement failed: duration 50 milliseconds below allowed threshold of 100 milliseconds")
        status, error, _ = await put({"exec": code, "limits": {"concurrency": 2}})
        assert status == 400
        status, error, _ = await put({"exec": {"kind": "nodejs:20", "code": "x"}})
        assert status == 400 and error["error"].startswith(
            "The request content was malformed:\nThe specified runtime 'nodejs:20' is not "
            "supported by this platform. Valid values are: '")
        assert f"'{KIND}'" in error["error"] and error["error"].endswith("'.")
        status, error, _ = await put({"exec": {"kind": "python:3.5", "code": ECHO}})
        assert status == 400 and "runtime 'python:3.5' is not supported" in error["error"]
        status, error, _ = await ow.request("PUT", "actions/bad$name", {"exec": code})
        assert status == 400
        status, error, _ = await ow.request("PUT", f"actions/{name}", data=b"{}",
                                            headers={"Content-Type": "text/plain"})
        assert status == 415
        status, error, _ = await ow.request("PUT", f"actions/{name}", {})
        assert (status, error["error"]) == (400, "exec undefined")

    run_raw(server_process, scenario)


def test_code_size_limit(server_factory):
    handle = server_factory(max_code_bytes=1000)

    async def scenario(ow):
        code = ECHO + "#" * 1000
        status, error, _ = await ow.request("PUT", "actions/big", {"exec": {"kind": KIND, "code": code}})
        assert status == 413 and f"{len(code)} > 1000 bytes" in error["error"]

    run_raw(handle, scenario)


def test_invoke_nonblocking_then_records_results_and_logs(server_process):
    name = unique("nb")

    async def scenario(ow):
        await ow.put_action(name, SLEEP)
        status, accepted, headers = await ow.request("POST", f"actions/{name}", {"s": 0.6})
        assert status == 202 and re.fullmatch(r"[0-9a-f]{32}", accepted["activationId"])
        activation_id = accepted["activationId"]
        assert headers["x-openwhisk-activation-id"] == activation_id
        status, _, _ = await ow.request("GET", f"activations/{activation_id}")
        assert status == 404  # written only when the activation finishes
        deadline = time.monotonic() + 20
        while status == 404 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            status, record, _ = await ow.request("GET", f"activations/{activation_id}")
        assert status == 200 and record["response"]["result"] == {"slept": 0.6}
        assert record["response"]["status"] == "success" and record["response"]["success"] is True
        assert record["duration"] == record["end"] - record["start"] >= 600
        notes = annotations(record)
        assert notes["path"] == f"guest/{name}" and notes["kind"] == KIND
        assert notes["timeout"] is False and "initTime" in notes and "waitTime" in notes
        status, result, _ = await ow.request("GET", f"activations/{activation_id}/result")
        assert result == {"result": {"slept": 0.6}, "success": True, "status": "success",
                          "size": len('{"slept": 0.6}')}
        status, logs, _ = await ow.request("GET", f"activations/{activation_id}/logs")
        assert logs == {"logs": []}

    run_raw(server_process, scenario)


def test_blocking_invoke_outcomes(server_process):
    echo, failing, none, big = (unique(p) for p in ("echo", "fail", "none", "big"))

    async def scenario(ow):
        await ow.put_action(echo, ECHO)
        await ow.put_action(failing, "def main(args):\n    raise ValueError('bad input ' + str(args['x']))\n")
        await ow.put_action(none, "def main(args):\n    return None\n")
        await ow.put_action(big, "def main(args):\n    return {'s': 'x' * 2_000_000}\n")
        status, record, headers = await ow.invoke(echo, {"a": 1})
        assert status == 200 and record["response"]["result"] == {"args": {"a": 1}}
        assert headers["x-openwhisk-activation-id"] == record["activationId"]
        assert len(record["logs"]) == 1 and LOG_LINE.match(record["logs"][0])
        assert record["logs"][0].endswith("stdout: echo ['a']")
        status, record, _ = await ow.invoke(failing, {"x": 7})
        assert status == 502 and record["response"]["status"] == "application error"
        assert record["response"]["result"] == {"error": "bad input 7"}
        assert any("Traceback" in line and "stderr" in line for line in record["logs"])
        status, result, _ = await ow.invoke(failing, {"x": 8}, result=True)
        assert (status, result) == (502, {"error": "bad input 8"})
        assert "initTime" not in annotations((await ow.invoke(failing, {"x": 9}))[1])  # kept warm
        status, record, _ = await ow.invoke(none)
        assert status == 502 and record["response"]["status"] == "action developer error"
        assert record["response"]["result"]["error"].startswith(
            "The action did not produce a valid JSON or JSON Array response")
        status, record, _ = await ow.invoke(big)
        assert status == 502 and record["response"]["status"] == "application error"
        assert record["response"]["result"]["error"].startswith(
            "The action produced a response that exceeded the allowed length: ")
        assert "> 1048576 bytes." in record["response"]["result"]["error"]
        status, error, _ = await ow.request("POST", f"actions/{echo}", data=b"{" + b" " * 1048576 + b"}",
                                            headers={"Content-Type": "application/json"})
        assert status == 413 and error["error"] == "Request larger than allowed: 1048578 > 1048576 bytes."
        status, error, _ = await ow.invoke(echo, timeout=70000)
        assert status == 400
        status, error, _ = await ow.request("POST", f"actions/{echo}", [1, 2])
        assert status == 400

    run_raw(server_process, scenario)


def test_blocking_wait_ends_with_202(server_process):
    name = unique("wait")

    async def scenario(ow):
        await ow.put_action(name, SLEEP)
        started = time.monotonic()
        status, accepted, _ = await ow.invoke(name, {"s": 2}, timeout=300)
        assert status == 202 and "activationId" in accepted and time.monotonic() - started < 1.5

    run_raw(server_process, scenario)


def test_environment_and_isolation(server_process):
    plain, keyed = unique("env"), unique("envkey")
    code = ("import os, tempfile\n"
            "def main(args):\n"
            "    open('here.txt', 'w').write('x')\n"
            "    return {'env': {k: v for k, v in os.environ.items()}, 'cwd': os.getcwd(),\n"
            "            'tmp': tempfile.gettempdir()}\n")

    async def scenario(ow):
        await ow.put_action(plain, code)
        await ow.put_action(keyed, code, annotations=[{"key": "provide-api-key", "value": True}])
        status, record, headers = await ow.invoke(plain)
        first = record["response"]["result"]
        env = first["env"]
        assert env["__OW_API_HOST"] == server_process.url
        assert env["__OW_NAMESPACE"] == "guest" and env["__OW_ACTION_NAME"] == f"/guest/{plain}"
        assert env["__OW_ACTION_VERSION"] == "0.0.1"
        assert env["__OW_ACTIVATION_ID"] == record["activationId"]
        assert env["__OW_TRANSACTION_ID"] == headers["X-Request-ID"]
        # The server stamps the deadline when it sends /run: after the cold /init (start +
        # initTime, both its own clock readings) and before the record's end, plus the limit.
        notes = annotations(record)
        limit = notes["limits"]["timeout"]
        assert limit == 60_000  # the default time limit
        assert (record["start"] + notes["initTime"] + limit
                <= int(env["__OW_DEADLINE"]) <= record["end"] + limit)
        assert "__OW_API_KEY" not in env
        assert "DASK_WHISK_SERVER_AUTH" not in env and GUEST_AUTH not in str(env)
        assert first["tmp"] == "/tmp"  # the container's own /tmp, not a TMPDIR variable
        status, record, _ = await ow.invoke(plain)  # warm: the deadline is start + limit
        deadline = int(record["response"]["result"]["env"]["__OW_DEADLINE"])
        assert "initTime" not in annotations(record)
        assert record["start"] + limit <= deadline <= record["end"] + limit
        status, record, _ = await ow.invoke(keyed)
        second = record["response"]["result"]
        assert second["env"]["__OW_API_KEY"] == server_process.auth
        assert second["cwd"] != first["cwd"]  # each container has its own directory

    run_raw(server_process, scenario)


def test_warm_reuse_and_new_version_is_cold(server_process):
    name = unique("warm")

    async def scenario(ow):
        await ow.put_action(name, ECHO)
        first = (await ow.invoke(name))[1]
        second = (await ow.invoke(name))[1]
        assert "initTime" in annotations(first) and "initTime" not in annotations(second)
        await ow.put_action(name, ECHO + "\n")
        third = (await ow.invoke(name))[1]
        assert third["version"] == "0.0.2" and "initTime" in annotations(third)

    run_raw(server_process, scenario)


def test_timeout_and_memory_limits(server_process):
    slow, hungry, crasher = unique("slow"), unique("oom"), unique("crash")

    async def scenario(ow):
        # A limit roomy enough for a cold /init on a loaded machine (it is the init's limit too)
        limit = 3000
        await ow.put_action(slow, SLEEP, limits={"timeout": limit})
        status, record, _ = await ow.invoke(slow, {"s": 30})
        assert status == 502 and record["response"]["status"] == "action developer error"
        assert record["response"]["result"] == {
            "error": f"The action exceeded its time limits of {limit} milliseconds."}
        notes = annotations(record)
        assert notes["timeout"] is True
        # Stopped at its limit, not after its 30 s sleep: the server's own run time (its
        # duration less its cold initTime) is the limit (less 1 ms for the rounding of the
        # two millisecond readings) plus the kill and the log drain, 1.5 s under any load.
        run_ms = record["duration"] - notes["initTime"]
        assert limit - 1 <= run_ms < limit + 1500, record
        status, record, _ = await ow.invoke(slow, {"s": 0})
        assert status == 200 and "initTime" in annotations(record)  # the container was destroyed
        await ow.put_action(hungry, "def main(args):\n    b = bytearray(400 * 1024 * 1024)\n"
                                    "    import time; time.sleep(3)\n    return {'n': len(b)}\n",
                            limits={"memory": 128})
        status, record, _ = await ow.invoke(hungry)
        assert status == 502 and record["response"] == {
            "status": "action developer error", "success": False, "size": 61,
            "result": {"error": "The action exhausted its memory and was aborted."}}
        await ow.put_action(crasher, "import os\ndef main(args):\n    os._exit(3)\n")
        status, record, _ = await ow.invoke(crasher)  # the launcher died; the runtime says so
        assert record["response"]["result"] == {"error": "command exited"}

    run_raw(server_process, scenario)


def test_zip_action_with_vendored_package_and_failed_init(server_process, tmp_path):
    import base64
    import io
    import zipfile

    def zipped(files: dict) -> str:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for path, text in files.items():
                archive.writestr(path, text)
        return base64.b64encode(buffer.getvalue()).decode()

    name, broken = unique("zip"), unique("zipbad")

    async def scenario(ow):
        code = zipped({"__main__.py": "import vendored\ndef go(args):\n    return {'v': vendored.VALUE}\n",
                       "vendored/__init__.py": "VALUE = 42\n"})
        action = await ow.put_action(name, code, main="go")
        assert action["exec"]["binary"] is True and action["exec"]["main"] == "go"
        status, result, _ = await ow.invoke(name, result=True)
        assert (status, result) == (200, {"v": 42})
        await ow.put_action(broken, zipped({"other.py": "x = 1\n"}))
        status, record, _ = await ow.invoke(broken)
        assert status == 502 and record["response"]["status"] == "action developer error"
        assert record["response"]["result"]["error"] == (
            "The action failed to generate or locate a binary. See logs for details.")
        assert any("__main__.py" in line for line in record["logs"])  # the reason: in the logs

    run_raw(server_process, scenario)


def test_activation_list_newest_first_and_filters(server_process):
    name = unique("list")

    async def scenario(ow):
        await ow.put_action(name, ECHO)
        ids = [(await ow.invoke(name, {"i": i}))[1]["activationId"] for i in range(4)]
        status, listed, _ = await ow.request("GET", "activations", params={"name": name})
        assert [r["activationId"] for r in listed] == ids[::-1]
        assert set(listed[0]) == {"namespace", "name", "version", "publish", "annotations",
                                  "activationId", "start", "end", "duration", "statusCode"}
        assert listed[0]["statusCode"] == 0
        status, page, _ = await ow.request("GET", "activations",
                                           params={"name": name, "limit": "2", "skip": "1", "docs": "true"})
        assert [r["activationId"] for r in page] == ids[2:0:-1]
        assert page[0]["response"]["result"] == {"args": {"i": 2}}
        status, error, _ = await ow.request("GET", "activations", params={"limit": "201"})
        assert status == 400

    run_raw(server_process, scenario)


def _raw_exchange(url: str, head: str, body: bytes = b"", timeout: float = 5.0) -> tuple[int, bytes]:
    """Send a hand-written request (head without the blank line) over a socket; (status, body).
    The socket's timeout makes a server that waits for a body it was never sent fail the test."""
    import socket
    import urllib.parse

    split = urllib.parse.urlsplit(url)
    with socket.create_connection((split.hostname, split.port), timeout=timeout) as sock:
        sock.sendall(head.encode() + b"\r\n\r\n" + body)
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < _length(reply):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    return int(status_line.split()[1]), rest.split(b"\r\n\r\n", 1)[1]


def _length(reply: bytes) -> int:
    for line in reply.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_payload_limit_is_read_from_content_length_and_bad_json_is_a_400(server_process):
    """A declared 2 MB invoke is refused with 413 before its body is read (none is sent: a
    server that waited for it would time the socket out), with or without credentials; a body
    without Content-Length stops being read past 1 MiB; malformed or deeply nested JSON is a 400."""
    import base64
    import json

    name = unique("echo")
    run_raw(server_process, lambda ow: ow.put_action(name, ECHO, kind=KIND))
    credentials = base64.b64encode(server_process.auth.encode()).decode()
    target = f"POST /api/v1/namespaces/_/actions/{name}?blocking=true HTTP/1.1\r\nHost: x"
    json_type = "Content-Type: application/json"
    started = time.monotonic()
    status, body = _raw_exchange(server_process.url, f"{target}\r\nAuthorization: Basic {credentials}"
                                 f"\r\n{json_type}\r\nContent-Length: 2000000")
    assert status == 413 and json.loads(body)["error"] == \
        "Request larger than allowed: 2000000 > 1048576 bytes."
    status, body = _raw_exchange(server_process.url, f"{target}\r\n{json_type}\r\nContent-Length: 2000000")
    assert status == 401
    assert time.monotonic() - started < 4, "the server read (or waited for) a body it should refuse"

    async def scenario(ow):
        async def chunks():
            for _ in range(20):
                yield b" " * 65536 + b"\n"
        status, error, _ = await ow.request("POST", f"actions/{name}", data=chunks(),
                                            headers={"Content-Type": "application/json"})
        assert status == 413 and error["error"].startswith("Request larger than allowed: ")
        for bad in (b"[" * 100_000 + b"]" * 100_000, b'{"x": ', b"\xff\xfe{}"):
            status, error, _ = await ow.request("POST", f"actions/{name}", data=bad,
                                                headers={"Content-Type": "application/json"})
            assert status == 400 and error["error"].startswith("The request content was malformed"), \
                (bad[:10], status, error)
        status, record, _ = await ow.invoke(name, {"still": "fine"}, result=True)
        assert status == 200 and record["args"] == {"still": "fine"}

    run_raw(server_process, scenario)
