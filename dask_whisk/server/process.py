"""Run the local server as a child process: ``start_server_process(settings)`` -> its URL.

The child is ``python -m dask_whisk.server.main`` on port 0; its first stdout line gives the
URL. ``stop()`` ends it with SIGTERM (it kills its containers), then SIGKILL if it lingers;
containers die with it in any case (they ask Linux to kill them when their parent dies).
"""
from __future__ import annotations

import dataclasses
import os
import selectors
import subprocess
import sys
import time
import urllib.request

from .settings import AUTH_ENV, READY_PREFIX, ServerSettings

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0


class ServerProcess:
    """A running server child process: ``url``, ``auth`` (``uuid:key``), ``stop()``."""

    def __init__(self, process: subprocess.Popen, url: str, auth: str) -> None:
        self.process = process
        self.url = url
        self.auth = auth

    def __repr__(self) -> str:
        return f"ServerProcess(pid={self.process.pid}, url={self.url!r})"

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Terminate the server and its containers; safe to call more than once."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_server_process(settings: ServerSettings | None = None, *,
                         python: str = sys.executable,
                         timeout: float = START_TIMEOUT_SECONDS) -> ServerProcess:
    """Start a server with ``settings`` on a free port and return once it answers HTTP."""
    settings = dataclasses.replace(settings or ServerSettings(), port=0)
    env = dict(os.environ, **{AUTH_ENV: settings.auth})
    process = subprocess.Popen(
        [python, "-m", "dask_whisk.server.main", *settings.to_argv()],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env,
    )
    server = ServerProcess(process, "", settings.auth)
    try:
        server.url = _read_url(process, time.monotonic() + timeout)
        _wait_until_answering(server.url, time.monotonic() + timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _read_url(process: subprocess.Popen, deadline: float) -> str:
    line = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise TimeoutError("the dask-whisk server did not announce its URL in time")
            chunk = os.read(process.stdout.fileno(), 1)
            if not chunk:
                raise RuntimeError(
                    f"the dask-whisk server exited with status {process.wait()} before listening; "
                    "its stderr above says why"
                )
            line += chunk
    text = line.decode().strip()
    if not text.startswith(READY_PREFIX):
        raise RuntimeError(f"unexpected first line from the dask-whisk server: {text!r}")
    return text[len(READY_PREFIX):]


def _wait_until_answering(url: str, deadline: float) -> None:
    while True:
        try:
            with urllib.request.urlopen(url + "/", timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the dask-whisk server at {url} does not answer") from None
            time.sleep(0.05)
