"""The program inside one local container: OpenWhisk's Python action runtime, /init and /run.

Started by ``container.py`` as ``python runtime.py FD`` with an already listening loopback socket
on file descriptor FD. Stdlib only and Python 3.8+ syntax, because it runs under whichever
interpreter serves the action's kind. After each activation it writes ``SENTINEL`` on stdout
and stderr so the invoker can cut the streams into per-activation logs.

Connections are served on threads, so another local user holding one open cannot stall the
server's own; the action's code runs on the main thread, one /init or /run at a time, as under
OpenWhisk's launcher (signal handlers work there).
"""
from __future__ import annotations

import base64
import hmac
import importlib.util
import io
import json
import os
import queue
import signal
import socket
import sys
import threading
import traceback
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SENTINEL = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX"
#: the per-container secret the server passes by environment and sends on every request: the
#: loopback port is open to every local user, and only the server that started us may use it
SECRET_ENV, SECRET_HEADER = "DASK_WHISK_CONTAINER_SECRET", "X-Dask-Whisk-Container"
_SECRET = ""
#: the top-level /run fields that become ``__OW_<NAME>`` environment variables
RUN_ENV_FIELDS = ("namespace", "action_name", "action_version", "activation_id",
                  "transaction_id", "deadline", "api_key")


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to kill this process when the server dies, so no container outlives it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


class Action:
    """The initialised action of this container: its ``main`` function, set once by /init."""

    def __init__(self) -> None:
        self.main = None
        self.env: dict = {}

    def init(self, value: dict) -> None:
        """Install the code (plain source or base64 zip) in the working directory and load it."""
        code = value.get("code")
        if not isinstance(code, str) or not code:
            raise ValueError("Missing code in the initialisation message.")
        action_dir = os.path.join(os.getcwd(), "action")
        os.makedirs(action_dir, exist_ok=True)
        if value.get("binary"):
            try:
                archive = zipfile.ZipFile(io.BytesIO(base64.b64decode(code)))
            except (ValueError, zipfile.BadZipFile) as exc:
                raise ValueError("Invalid zip file: %s" % exc) from None
            archive.extractall(action_dir)
            module_file = os.path.join(action_dir, "__main__.py")
            if not os.path.isfile(module_file):
                raise ValueError("Zip file does not include mandatory files (__main__.py).")
            activate = os.path.join(action_dir, "virtualenv", "bin", "activate_this.py")
            if os.path.isfile(activate):
                with open(activate) as f:
                    exec(compile(f.read(), activate, "exec"), {"__file__": activate})
        else:
            module_file = os.path.join(action_dir, "main__.py")
            with open(module_file, "w") as f:
                f.write(code)
        sys.path.insert(0, action_dir)
        self.env = {str(k): str(v) for k, v in (value.get("env") or {}).items()}
        os.environ.update(self.env)
        spec = importlib.util.spec_from_file_location("main__", module_file)
        module = importlib.util.module_from_spec(spec)
        sys.modules["main__"] = module
        spec.loader.exec_module(module)
        name = value.get("main") or "main"
        main = getattr(module, name, None)
        if not callable(main):
            raise ValueError("Action entrypoint '%s' is not a function in the action code." % name)
        self.main = main

    def run(self, message: dict) -> bytes:
        """Call ``main(value)`` with the ``__OW_*`` environment of this activation set."""
        for field in RUN_ENV_FIELDS:
            os.environ.pop("__OW_" + field.upper(), None)
            if message.get(field) is not None:
                os.environ["__OW_" + field.upper()] = str(message[field])
        args = message.get("value")
        if not isinstance(args, dict):
            args = {}
        try:
            result = self.main(args)
        except Exception as exc:  # the action's own failure: an application error
            traceback.print_exc()
            result = {"error": str(exc)}
        try:
            return json.dumps(result, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError):  # not JSON: the invoker reports a developer error
            return repr(result).encode("utf-8", "replace")[:4096]


def _end_of_activation() -> None:
    """Flush both streams and mark the end of this activation's logs."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
            stream.write(SENTINEL + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass


class Handler(BaseHTTPRequestHandler):
    """Serves /init and /run, one at a time, over keep-alive HTTP/1.1."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    action = Action()

    def log_message(self, format: str, *args: object) -> None:
        """No access log: stderr belongs to the action's logs."""

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._reply(status, json.dumps({"error": message}).encode("utf-8"))

    def do_POST(self) -> None:
        if not hmac.compare_digest(self.headers.get(SECRET_HEADER, ""), _SECRET):
            self._error(403, "Only the server that started this container may use it.")
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            message = json.loads(self.rfile.read(length) or b"{}")
        except ValueError as exc:
            self._error(400, "Invalid JSON in request: %s" % exc)
            return
        if self.path == "/init":
            self._init(message.get("value") or {})
        elif self.path == "/run":
            self._run(message)
        else:
            self._error(404, "Unknown path %s" % self.path)

    def _init(self, value: dict) -> None:
        status, body = _on_main_thread(self._do_init, value)
        self._reply(status, body)

    def _do_init(self, value: dict) -> tuple[int, bytes]:
        if self.action.main is not None:
            return 403, b'{"error": "Cannot initialize the action more than once."}'
        try:
            self.action.init(value)
        except BaseException as exc:  # any failure of user code at import time
            traceback.print_exc()
            _end_of_activation()
            return 502, json.dumps({"error": "Cannot start action: %s" % exc}).encode("utf-8")
        return 200, b'{"ok": true}'

    def _run(self, message: dict) -> None:
        status, body = _on_main_thread(self._do_run, message)
        self._reply(status, body)

    def _do_run(self, message: dict) -> tuple[int, bytes]:
        if self.action.main is None:
            return 403, b'{"error": "Cannot run the action: it was not initialized."}'
        body = self.action.run(message)
        _end_of_activation()
        return 200, body


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
    _SECRET = os.environ.pop(SECRET_ENV, "")  # before any action code could read it
    if not _SECRET:
        sys.exit("runtime.py: no container secret in the environment")
    _die_with_parent(parent_pid)
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    listener = socket.socket(fileno=fd)
    server = ThreadingHTTPServer(listener.getsockname(), Handler, bind_and_activate=False)
    server.daemon_threads = True
    server.socket.close()
    server.socket = listener
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    while True:
        function, argument, answer, done = _work.get()
        answer.append(function(argument))  # what escapes (sys.exit in an action) ends the process
        done.set()


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
