"""The local server's Python runtime answers as OpenWhisk's real one (ActionLoop proxy 1.17.1 with
the Python runtime's compile step and launcher) does, where user code misbehaves.

Each case is checked twice over HTTP: against one container's runtime (/init and /run: status,
body, logs, whether the process lives on) and, for what a user sees, against the server's REST
API (the activation record, and whether the next activation finds the container warm).
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import sys
import time
import tempfile
import uuid
import zipfile
from pathlib import Path

import aiohttp
import pytest

from _server_fixtures import run_raw, server_process  # noqa: F401 (fixtures)
from dask_whisk.server import container as container_module
from dask_whisk.server.container import Container
from dask_whisk.store.local import shared_tempdir
from dask_whisk.server.runtime import BUILD_FAILED, EXITED_DURING_INIT, START_FAILED

KIND = f"python:3.{sys.version_info.minor}"
NOT_AN_OBJECT = "The action did not return a dictionary or array."


def zipped(files: dict[str, str]) -> str:
    """A base64 zip action holding ``files``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return base64.b64encode(buffer.getvalue()).decode()


class Runtime:
    """One local container, spoken to directly: /init and /run as the invoker sends them."""

    def __init__(self, container: Container) -> None:
        self.container = container

    async def post(self, path: str, message: dict) -> tuple[int, object]:
        status, body = await self.container.post(path, json.dumps(message).encode(), 30.0)
        return status, json.loads(body)

    async def init(self, code: str, *, binary: bool = False, main: str = "main") -> tuple[int, object]:
        self.container.begin(1 << 20)
        return await self.post("/init", {"value": {"name": "a", "main": main, "code": code,
                                                   "binary": binary, "env": {"__OW_API_HOST": "x"}}})

    async def run(self, value: object = None, **fields: str) -> tuple[int, object]:
        self.container.begin(1 << 20)
        return await self.post("/run", {"value": {} if value is None else value,
                                        "activation_id": uuid.uuid4().hex, **fields})

    async def logs(self) -> list[str]:
        """This activation's log lines (their text); fails unless both end-of-activation markers
        arrive (``end`` would wait a minute for them, see the ``containers`` fixture)."""
        lines = await asyncio.wait_for(self.container.end(complete=True), 10)
        return [line.split(": ", 1)[1] for line in lines]


@pytest.fixture
def containers(monkeypatch) -> Path:
    """A folder for containers where a server keeps them: outside /tmp, which each makes private.
    Missing end markers would hold a container's logs for a minute."""
    monkeypatch.setattr(container_module, "LOG_SETTLE_SECONDS", 60.0)
    with tempfile.TemporaryDirectory(dir=shared_tempdir()) as folder:
        yield Path(folder)


def with_runtime(folder: Path, scenario) -> None:
    """Run ``scenario(runtime)`` against a fresh container of the host's Python kind."""
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            container = Container(("a", "0.0.1"), 256, folder, session)
            await container.start(sys.executable)
            try:
                await scenario(Runtime(container))
            finally:
                await container.destroy()
    asyncio.run(main())


def test_run_before_init_and_init_without_code(containers):
    async def scenario(rt: Runtime) -> None:
        assert await rt.run() == (500, {"error": "no action defined yet"})
        assert await rt.init("") == (403, {"error": "Missing main/no code to execute."})
        assert await rt.init("def main(args):\n    return args\n") == (200, {"ok": True})
        assert await rt.init("def main(args):\n    return args\n") == (
            403, {"error": "Cannot initialize the action more than once."})
        assert await rt.run({"a": 1}) == (200, {"a": 1})

    with_runtime(containers, scenario)


BROKEN_INITS = {
    "syntax error": (dict(code="def main(args)\n    return args\n"), BUILD_FAILED, "SyntaxError"),
    "zip without __main__.py": (dict(code=zipped({"other.py": "x = 1\n"}), binary=True),
                                BUILD_FAILED, "__main__.py"),
    "virtualenv without activate_this.py": (
        dict(code=zipped({"__main__.py": "def main(args):\n    return args\n",
                          "virtualenv/lib/placeholder.txt": "x"}), binary=True),
        BUILD_FAILED, "activate_this.py"),
    "failing import": (dict(code="import no_such_module_here\ndef main(args):\n    return args\n"),
                       START_FAILED, "ModuleNotFoundError: No module named 'no_such_module_here'"),
    "missing entry point": (dict(code="def main(args):\n    return args\n", main="go"),
                            START_FAILED, "ImportError: cannot import name 'go'"),
}


@pytest.mark.parametrize("case", list(BROKEN_INITS))
def test_a_failed_init_answers_the_generic_text_and_logs_the_reason(containers, case):
    fields, body, detail = BROKEN_INITS[case]

    async def scenario(rt: Runtime) -> None:
        assert await rt.init(**fields) == (502, {"error": body})
        logs = await rt.logs()  # both end markers arrive: the logs are complete
        assert any(detail in line for line in logs), logs
        if body == START_FAILED:
            assert logs[-1] == EXITED_DURING_INIT
        assert rt.container.alive  # the proxy itself lives on; the invoker destroys it
        assert await rt.run() == (500, {"error": "no action defined yet"})

    with_runtime(containers, scenario)


def test_results_that_are_not_an_object_or_array(containers):
    code = ("import sys\n"
            "def main(args):\n"
            "    kind = args['kind']\n"
            "    print('returning', kind)\n"
            "    return {'str': 'text', 'int': 7, 'none': None, 'nan': {'x': float('nan')},\n"
            "            'list': [1, 2], 'set': {'a': {1, 2}}}[kind]\n")

    async def scenario(rt: Runtime) -> None:
        assert (await rt.init(code))[0] == 200
        for kind in ("str", "int", "nan"):  # the launcher lives on after each
            assert await rt.run({"kind": kind}) == (502, {"error": NOT_AN_OBJECT})
            assert await rt.logs() == [f"returning {kind}"]
        assert await rt.run({"kind": "none"}) == (200, None)
        assert await rt.run({"kind": "list"}) == (200, [1, 2])
        # a set cannot be written as JSON: the launcher ends, the runtime does not
        assert await rt.run({"kind": "set"}) == (400, {"error": "command exited"})
        logs = await rt.logs()
        assert logs[0] == "returning set" and any("TypeError" in line for line in logs)
        assert rt.container.alive
        assert await rt.run({"kind": "list"}) == (500, {"error": "no action defined yet"})

    with_runtime(containers, scenario)


@pytest.mark.parametrize("ending", ["sys.exit(3)", "raise KeyboardInterrupt"])
def test_an_action_that_exits_ends_its_launcher_not_the_container(containers, ending):
    code = f"import sys\ndef main(args):\n    print('leaving')\n    {ending}\n"

    async def scenario(rt: Runtime) -> None:
        assert (await rt.init(code))[0] == 200
        assert await rt.run() == (400, {"error": "command exited"})
        assert (await rt.logs())[0] == "leaving"  # the end markers were written
        assert rt.container.alive
        assert await rt.run() == (500, {"error": "no action defined yet"})

    with_runtime(containers, scenario)


def test_an_exception_is_an_error_field_and_the_launcher_lives_on(containers):
    code = "def main(args):\n    if args.get('fail'):\n        raise ValueError('bad ' + args['fail'])\n    return {'ok': 1}\n"

    async def scenario(rt: Runtime) -> None:
        assert (await rt.init(code))[0] == 200
        assert await rt.run({"fail": "input"}) == (200, {"error": "bad input"})
        assert any("Traceback" in line for line in await rt.logs())
        assert await rt.run() == (200, {"ok": 1})

    with_runtime(containers, scenario)


LAYOUT = """import os, sys, tempfile
def main(args):
    open('/tmp/mine.txt', 'w').write('private')
    return {'env': dict(os.environ), 'argv': sys.argv, 'cwd': os.getcwd(), 'value': args,
            'tmp': tempfile.gettempdir(), 'listing': sorted(os.listdir('/tmp')),
            'files': sorted(os.listdir('.'))}
"""


def test_environment_layout_and_arguments(containers):
    async def scenario(rt: Runtime) -> None:
        assert (await rt.init(LAYOUT))[0] == 200
        status, seen = await rt.run(["not", "a", "dict"], namespace="guest", deadline="123")
        assert status == 200
        env = seen["env"]
        assert env.pop("__OW_API_HOST") == "x"  # /init's env
        assert env.pop("__OW_PROXY_VERSION") == "1.17.1"
        assert env.pop("__OW_EXECUTION_ENV") == f"openwhisk/action-python-v3.{sys.version_info.minor}"
        assert env.pop("PYTHONIOENCODING") == "UTF-8"
        assert env.pop("PWD") == seen["cwd"]
        activation = {k: env.pop(k) for k in list(env) if k.startswith("__OW_")}
        assert activation == {"__OW_WAIT_FOR_ACK": "1", "__OW_NAMESPACE": "guest",
                              "__OW_DEADLINE": "123", "__OW_ACTIVATION_ID": activation["__OW_ACTIVATION_ID"]}
        # what is left comes from the shell and Python's own locale coercion: no PATH, HOME, LANG
        assert set(env) <= {"OLDPWD", "SHLVL", "LC_CTYPE"}, env
        assert seen["argv"] == ["exec__.py"] and seen["value"] == ["not", "a", "dict"]
        assert seen["cwd"].endswith("/action/1/bin")
        assert {"main__.py", "exec__.py", "exec"} <= set(seen["files"]) and "__main__.py" not in seen["files"]
        assert seen["tmp"] == "/tmp" and seen["listing"] == ["mine.txt"]  # /tmp is the container's own
        assert (rt.container.workdir / "tmp" / "mine.txt").read_text() == "private"

    with_runtime(containers, scenario)


def test_a_virtualenv_is_activated_through_its_activate_this(containers):
    activate = ("import os, sys\n"
                "base = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))\n"
                "sys.path.insert(0, os.path.join(base, 'site'))\n"
                "os.environ['VIRTUAL_ENV'] = base\n")
    code = zipped({"__main__.py": "import only_in_venv, os\n"
                                  "def main(args):\n    return {'v': only_in_venv.V, 'venv': os.environ['VIRTUAL_ENV']}\n",
                   "virtualenv/bin/activate_this.py": activate,
                   "virtualenv/site/only_in_venv.py": "V = 5\n"})

    async def scenario(rt: Runtime) -> None:
        assert await rt.init(code, binary=True) == (200, {"ok": True})
        status, seen = await rt.run()
        assert status == 200 and seen["v"] == 5 and seen["venv"].endswith("/action/1/bin/virtualenv")

    with_runtime(containers, scenario)


def test_what_a_user_sees_through_the_rest_api(server_process):
    """The same misbehaviours, as activation records: developer errors in the runtime's words,
    the reason in the logs, and a fresh (cold) container for the next activation."""
    name = f"misbehave-{uuid.uuid4().hex[:8]}"
    broken = f"broken-{uuid.uuid4().hex[:8]}"
    code = ("import sys\n"
            "def main(args):\n"
            "    if args.get('exit'):\n        sys.exit(1)\n"
            "    return 'text' if args.get('text') else {'ok': True}\n")

    def notes(record: dict) -> dict:
        return {a["key"]: a["value"] for a in record["annotations"]}

    async def scenario(ow) -> None:
        await ow.put_action(name, code)
        await ow.put_action(broken, "def main(args)\n    return args\n")
        status, record, _ = await ow.invoke(name, {"text": True})
        assert status == 502 and record["response"]["status"] == "action developer error"
        assert record["response"]["result"] == {"error": NOT_AN_OBJECT}
        status, record, _ = await ow.invoke(name)
        assert status == 200 and "initTime" in notes(record)  # a developer error destroyed it
        status, record, _ = await ow.invoke(name, {"exit": True})
        assert record["response"]["result"] == {"error": "command exited"}
        status, record, _ = await ow.invoke(name)
        assert status == 200 and "initTime" in notes(record)
        status, record, _ = await ow.invoke(broken)
        assert record["response"] == {"status": "action developer error", "success": False,
                                      "result": {"error": BUILD_FAILED}, "size": len(json.dumps({"error": BUILD_FAILED}))}
        assert any("SyntaxError" in line for line in record["logs"])

    run_raw(server_process, scenario)


def test_shared_tempdir_is_outside_the_containers_private_tmp():
    shared = shared_tempdir()
    assert shared != "/tmp" and not shared.startswith("/tmp/")


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children of all its threads, recursively)."""
    found: set[int] = set()
    try:
        for thread in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{thread}/children") as f:
                for child in map(int, f.read().split()):
                    found |= {child} | _descendants(child)
    except OSError:
        pass
    return found


def test_a_killed_server_takes_its_containers_and_their_actions_with_it():
    """SIGKILL gives the server no chance to clean up: the runtime (told by the kernel that its
    parent died) and the action's launcher, busy in a long activation, die all the same."""
    from dask_whisk.server import ServerSettings, start_server_process

    name = f"sleeper-{uuid.uuid4().hex[:8]}"
    with start_server_process(ServerSettings(port=0)) as server:
        async def start_sleeping(ow) -> None:
            await ow.put_action(name, "import time\ndef main(args):\n    time.sleep(60)\n    return {}\n")
            await ow.request("POST", f"actions/{name}", {}, params={"blocking": "false"})
        run_raw(server, start_sleeping)
        deadline = time.monotonic() + 20
        while not any(b"exec__.py" in _cmdline(p) for p in _descendants(server.process.pid)):
            assert time.monotonic() < deadline, "the action's launcher never started"
            time.sleep(0.1)
        below = _descendants(server.process.pid)
        assert any(b"runtime.py" in _cmdline(p) for p in below), below
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(10)
        deadline = time.monotonic() + 10
        while any(os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in below):
            assert time.monotonic() < deadline, f"still running after the server died: {below}"
            time.sleep(0.1)


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
