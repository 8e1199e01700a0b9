"""The program inside one local container: OpenWhisk's Python runtime proxy, /init and /run.

Started by ``container.py`` as ``python runtime.py FD PARENT_PID`` with an already listening
loopback socket on file descriptor FD. It answers as OpenWhisk's ActionLoop proxy with the Python
runtime's compile step does: /init unpacks the code into ``action/<n>/bin`` (``__main__.py``
renamed ``main__.py``), checks it, and starts ``launcher.py`` there as ``exec__.py`` with only the
action's environment; /run passes each activation to it as one line and relays its one-line
answer. The action's failures are told in the same words, with the details only in the logs.
After each activation (and a failed /init) it writes ``SENTINEL`` on stdout and stderr so the
invoker can cut the streams into per-activation logs. Stdlib only and Python 3.8+ syntax,
because it runs under whichever interpreter serves the action's kind.

Connections are served on threads, so another local user holding one open cannot stall the
server's own; /init and /run run on the main thread, one at a time (the launcher it starts dies
with that thread, see ``_die_with_parent``).
"""
from __future__ import annotations

import ast
import base64
import hmac
import importlib.machinery
import io
import json
import os
import queue
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SENTINEL = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX"
#: the per-container secret the server passes by environment and sends on every request: the
#: loopback port is open to every local user, and only the server that started us may use it
SECRET_ENV, SECRET_HEADER = "DASK_WHISK_CONTAINER_SECRET", "X-Dask-Whisk-Container"
_SECRET = ""
#: the ActionLoop proxy release whose answers this runtime reproduces (``__OW_PROXY_VERSION``)
PROXY_VERSION = "1.17.1"
LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launcher.py")
ENTRY_LINE = "from main__ import main as main"
#: the action's start script: the folder's own ``exec``, run with the action's environment only
EXEC_SCRIPT = """#!/bin/bash
export PYTHONIOENCODING=UTF-8
cd "$(dirname "$0")"
exec {python} exec__.py "$@"
"""
#: the bodies of a failed /init: the reason goes to the logs only
BUILD_FAILED = "The action failed to generate or locate a binary. See logs for details."
START_FAILED = "Cannot start action. Check logs for details."
EXITED_DURING_INIT = "Command exited abruptly during initialization."
#: the container's own temporary folder (in its working directory), seen as /tmp
PRIVATE_TMP = "tmp"
CLONE_NEWNS, CLONE_NEWUSER, MS_BIND, MS_REC, MS_PRIVATE = 0x20000, 0x10000000, 4096, 16384, 1 << 18


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to kill this process when its parent dies, so no container outlives the server.

    The signal follows the death of the parent *thread*: the launcher is therefore started from
    this process's main thread, which lives as long as the process.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _private_tmp(folder: str) -> bool:
    """Make ``/tmp`` this container's own ``folder`` for it and the action (a mount namespace, as
    each OpenWhisk container has its own /tmp); False where the kernel does not allow it.

    Needs a single-threaded process (a user namespace, when not root). Paths outside /tmp are
    the machine's own, so the container must not live under /tmp itself.
    """
    import ctypes

    folder = os.path.abspath(folder)
    if folder == "/tmp" or folder.startswith("/tmp/"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(CLONE_NEWNS | (0 if uid == 0 else CLONE_NEWUSER)) != 0:
        return False
    if uid != 0:  # be the same user inside the new user namespace
        for name, text in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (uid, uid)),
                           ("gid_map", "%d %d 1" % (gid, gid))):
            with open("/proc/self/" + name, "w") as f:
                f.write(text)
    # mounts made here stay here: first make every mount private, then bind ours over /tmp
    return (libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0
            and libc.mount(folder.encode(), b"/tmp", None, MS_BIND, None) == 0)


def _answer(status: int, body: dict) -> tuple[int, bytes]:
    """A reply as the proxy writes it: compact JSON and a newline."""
    return status, json.dumps(body, separators=(",", ":")).encode("utf-8") + b"\n"


def _end_of_activation(error: str = "") -> None:
    """Mark the end of an activation's logs on both streams, after ``error`` on stderr."""
    if error:
        os.write(2, (error + "\n").encode("utf-8", "replace"))
    for fd in (1, 2):
        os.write(fd, (SENTINEL + "\n").encode())


def _object_or_array(answer: bytes) -> bool:
    """Whether ``answer`` is a JSON object, array or null (the proxy's test of a result)."""
    def refuse(constant: str) -> None:
        raise ValueError(constant)
    try:
        value = json.loads(answer, parse_constant=refuse)
    except ValueError:
        return False
    return value is None or isinstance(value, (dict, list))


class BuildError(Exception):
    """The code cannot be made into a runnable action; the message goes to the logs."""


class Proxy:
    """The action of this container: built and started by /init, given each /run."""

    #: where the action's temporary files go when /tmp cannot be made private (TMPDIR), else ''
    tmpdir = ""

    def __init__(self) -> None:
        self.initialized = False
        self.launcher: subprocess.Popen | None = None
        self.answers: io.BufferedReader | None = None
        self.builds = 0

    def init(self, body: bytes) -> tuple[int, bytes]:
        """Build the action from the /init message and start it; the status and body to answer."""
        if self.initialized:
            return _answer(403, {"error": "Cannot initialize the action more than once."})
        try:
            value = json.loads(body).get("value") or {}
            code, binary = value.get("code") or "", bool(value.get("binary"))
            if not isinstance(code, str) or not isinstance(value.get("env") or {}, dict):
                raise ValueError("the code must be a string and env an object")
        except (ValueError, AttributeError) as exc:
            return _answer(400, {"error": "Error unmarshaling request: %s" % exc})
        if not code:
            return _answer(403, {"error": "Missing main/no code to execute."})
        env = self._environment(value.get("env") or {})
        try:
            payload = base64.b64decode(code) if binary else code.encode("utf-8")
        except ValueError as exc:
            return _answer(400, {"error": "cannot decode the request: %s" % exc})
        try:
            folder = self._build(payload, value.get("main") or "main")
        except BuildError as exc:
            _end_of_activation(str(exc))
            return _answer(502, {"error": BUILD_FAILED})
        failure = self._start(folder, env)
        if failure:
            shutil.rmtree(os.path.dirname(folder), ignore_errors=True)
            _end_of_activation(failure)
            return _answer(502, {"error": START_FAILED})
        self.initialized = True
        return _answer(200, {"ok": True})

    @staticmethod
    def _environment(init_env: dict) -> dict:
        """What the launcher's process gets: the ``__OW_*`` variables and /init's ``env``."""
        env = {k: v for k, v in os.environ.items() if k.startswith("__OW_")}
        env.update(__OW_PROXY_VERSION=PROXY_VERSION, __OW_WAIT_FOR_ACK="1",
                   __OW_EXECUTION_ENV="openwhisk/action-python-v3.%d" % sys.version_info[1])
        for key, value in init_env.items():
            env[str(key)] = value if isinstance(value, str) else json.dumps(value)
        if Proxy.tmpdir:
            env["TMPDIR"] = Proxy.tmpdir
        return env

    def _build(self, payload: bytes, main: str) -> str:
        """Unpack the code into a new ``action/<n>/bin`` with its launcher; raise BuildError."""
        self.builds += 1
        root = os.path.join("action", str(self.builds))
        source, folder = os.path.join(root, "src"), os.path.join(root, "bin")
        os.makedirs(source)
        if payload[:4] == b"PK\x03\x04":
            try:
                with zipfile.ZipFile(io.BytesIO(payload)) as archive:
                    archive.extractall(source)
            except (zipfile.BadZipFile, OSError, ValueError) as exc:
                raise BuildError("cannot unzip the action: %s" % exc) from None
        else:
            with open(os.path.join(source, "exec"), "wb") as f:
                f.write(payload)
        for old, new in (("exec", "__main__.py"), ("__main__.py", "main__.py")):
            if os.path.exists(os.path.join(source, old)):
                os.rename(os.path.join(source, old), os.path.join(source, new))
        with open(LAUNCHER) as f:
            launcher = f.read().replace(ENTRY_LINE, "from main__ import %s as main" % main)
        with open(os.path.join(source, "exec__.py"), "w") as f:
            f.write(launcher)
        os.rename(source, folder)
        script = os.path.join(folder, "exec")
        with open(script, "w") as f:
            f.write(EXEC_SCRIPT.format(python=shlex.quote(sys.executable)))
        os.chmod(script, 0o755)
        problems = _check(folder)
        if problems:
            raise BuildError(problems)
        return folder

    def _start(self, folder: str, env: dict) -> str:
        """Start the launcher and wait for its acknowledgement; the failure, or ''."""
        read_end, write_end = os.pipe()

        def in_child() -> None:  # after fork: answers on fd 3, and die with this thread
            os.dup2(write_end, 3)
            _die_with_parent(parent)

        parent = os.getpid()
        try:  # every other descriptor of this process is non-inheritable: the child gets 0-3 only
            self.launcher = subprocess.Popen(
                [os.path.join(folder, "exec")], stdin=subprocess.PIPE, env=env,
                close_fds=False, preexec_fn=in_child)
        except OSError as exc:
            os.close(read_end)
            return "cannot start the action: %s" % exc
        finally:
            os.close(write_end)
        self.answers = os.fdopen(read_end, "rb")
        ack = self.answers.readline()
        if not ack.endswith(b"\n"):
            self._reap()
            return EXITED_DURING_INIT
        try:
            ok = json.loads(ack).get("ok") is True
        except (ValueError, AttributeError):
            ok = False
        return "" if ok else "The action did not initialize properly."

    def run(self, body: bytes) -> tuple[int, bytes]:
        """Hand one activation to the launcher; its answer, or the proxy's error."""
        if self.launcher is None:
            return _answer(500, {"error": "no action defined yet"})
        if self.launcher.poll() is not None:
            return _answer(500, {"error": "command exited"})
        try:
            self.launcher.stdin.write(body.replace(b"\n", b"") + b"\n")
            self.launcher.stdin.flush()
            answer = self.answers.readline()
        except OSError:
            answer = b""
        _end_of_activation()
        if not answer.endswith(b"\n"):
            self._reap()
            return _answer(400, {"error": "command exited"})
        if not _object_or_array(answer):
            return _answer(502, {"error": "The action did not return a dictionary or array."})
        return 200, answer

    def _reap(self) -> None:
        """Forget a launcher that has ended (its process reaped, its pipes closed)."""
        launcher, self.launcher = self.launcher, None
        launcher.kill()
        launcher.wait()
        launcher.stdin.close()
        self.answers.close()


def _check(folder: str) -> str:
    """What stops the built action from loading: a virtualenv without its activation script, no
    ``__main__.py``, a syntax error; '' when none."""
    problems = []
    virtualenv = os.path.join(folder, "virtualenv")
    if os.path.isdir(virtualenv) and not os.path.exists(
            os.path.join(virtualenv, "bin", "activate_this.py")):
        problems.append("Invalid virtualenv: the zip has no virtualenv/bin/activate_this.py.")
    spec = importlib.machinery.PathFinder.find_spec("main__", [folder])
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        problems.append("The action has no __main__.py: the zip file must include one at its root.")
    else:
        try:
            with open(spec.origin, "rb") as f:
                ast.parse(f.read(), "__main__.py")
        except (SyntaxError, ValueError) as exc:
            problems.append("%s: %s" % (type(exc).__name__, exc))
    return "\n".join(problems)


class Handler(BaseHTTPRequestHandler):
    """Serves /init and /run over keep-alive HTTP/1.1, one at a time: /init on the main thread
    (the launcher dies with the thread that started it), /run on the connection's own."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    proxy = Proxy()

    def log_message(self, format: str, *args: object) -> None:
        """No access log: stderr belongs to the action's logs."""

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        """Check the server's secret, then answer /init or /run."""
        if not hmac.compare_digest(self.headers.get(SECRET_HEADER, ""), _SECRET):
            self._reply(*_answer(403, {"error": "Only the server that started this container may use it."}))
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/init":
            with _one_at_a_time:
                self._reply(*_on_main_thread(self.proxy.init, body))
        elif self.path == "/run":
            with _one_at_a_time:
                self._reply(*self.proxy.run(body))
        else:
            self._reply(*_answer(404, {"error": "Unknown path %s" % self.path}))


#: held while the proxy answers a request: the launcher takes one activation at a time
_one_at_a_time = threading.Lock()
#: work for the main thread: (function, argument, slot for the answer, event set when done)
_work: queue.Queue = queue.Queue()


def _on_main_thread(function, argument):
    """Run ``function(argument)`` on the main thread (after any earlier request) and return it."""
    answer: list = []
    done = threading.Event()
    _work.put((function, argument, answer, done))
    done.wait()
    return answer[0]


def serve(fd: int, parent_pid: int) -> None:
    """Serve the runtime protocol on the listening socket ``fd`` until killed."""
    global _SECRET
    _SECRET = os.environ.pop(SECRET_ENV, "")
    if not _SECRET:
        sys.exit("runtime.py: no container secret in the environment")
    _die_with_parent(parent_pid)
    if not _private_tmp(PRIVATE_TMP):  # before any thread starts
        Proxy.tmpdir = os.path.abspath(PRIVATE_TMP)
    os.set_inheritable(fd, False)  # the action must not get the container's port
    listener = socket.socket(fileno=fd)
    server = ThreadingHTTPServer(listener.getsockname(), Handler, bind_and_activate=False)
    server.daemon_threads = True
    server.socket.close()
    server.socket = listener
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    while True:
        function, argument, answer, done = _work.get()
        answer.append(function(argument))
        done.set()


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
