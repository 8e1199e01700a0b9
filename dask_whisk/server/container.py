"""One local container: an OS process running ``runtime.py``, spoken to over loopback HTTP.

Like an OpenWhisk action container it has its own working directory, gives the action only the
environment OpenWhisk's runtime gives (nothing of the server's or the client's), serves one
activation at a time, and its stdout/stderr are cut into per-activation logs in OpenWhisk's
``<time> stdout: line`` form. Its memory is that of its whole process tree (the runtime, the
action's launcher and whatever the action starts).
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import shutil
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

import aiohttp

from .runtime import PRIVATE_TMP, SECRET_ENV, SECRET_HEADER, SENTINEL

RUNTIME_SCRIPT = str(Path(__file__).with_name("runtime.py"))
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
#: variables of the server's environment the runtime process inherits (the action gets none)
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE")
#: how long to wait, after /run answered, for the end-of-activation marker on both streams
LOG_SETTLE_SECONDS = 2.0
TRUNCATED_LOGS = "Logs were truncated because the total bytes size exceeds the limit of {} bytes."
DEVELOPER_ERROR_LOGS = "The action did not initialize or run as expected. Log data might be missing."

_ids = itertools.count(1)


class ContainerGone(Exception):
    """The container process died during a request; ``reason`` says why (timeout, oom, crash)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _tree_rss(pid: int) -> int:
    """Resident bytes of process ``pid`` and its descendants (what a container's cgroup counts)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            total = int(f.read().split()[1]) * PAGE_SIZE
        children = []
        for thread in os.listdir(f"/proc/{pid}/task"):  # children are listed by the thread that forked
            with open(f"/proc/{pid}/task/{thread}/children", "rb") as f:
                children += [int(child) for child in f.read().split()]
    except (OSError, IndexError, ValueError):
        return 0
    return total + sum(_tree_rss(child) for child in children)


def _log_time() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Logs:
    """The log lines of the activation a container is serving, capped at ``limit_bytes``."""

    def __init__(self, limit_bytes: int) -> None:
        self.lines: list[str] = []
        self.limit_bytes = limit_bytes
        self.size = 0
        self.truncated = False

    def add(self, stream: str, text: str) -> None:
        """Add a line of ``stream``, or the truncation notice once past the limit."""
        if self.truncated:
            return
        self.size += len(text)
        if self.size > self.limit_bytes:
            self.truncated = True
            self.lines.append(f"{_log_time()} stderr: {TRUNCATED_LOGS.format(self.limit_bytes)}")
            return
        self.lines.append(f"{_log_time()} {stream}: {text}")


class Container:
    """A runtime process serving one action version; created cold, then reused warm."""

    def __init__(self, key: tuple[str, str], memory_mb: int, base_dir: Path,
                 session: aiohttp.ClientSession) -> None:
        self.id = next(_ids)
        self.key = key  # (action name, version): a container serves only this
        self.memory_mb = memory_mb
        self.workdir = base_dir / f"container-{self.id}"
        self.session = session
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0
        self.last_used = time.monotonic()
        self.kill_reason: str | None = None
        self.logs = Logs(10 * 1024 * 1024)
        self._expected_ends = 0
        self._ends = {"stdout": 0, "stderr": 0}
        self._ended = asyncio.Event()
        self._readers: list[asyncio.Task] = []

    @property
    def alive(self) -> bool:
        """Whether the runtime process is still running."""
        return self.process is not None and self.process.returncode is None

    async def start(self, python: str) -> None:
        """Start the runtime under ``python`` (its image's interpreter) on a fresh listening
        socket; /init may be sent right away."""
        tmp = self.workdir / PRIVATE_TMP  # the runtime makes it the container's /tmp
        await asyncio.get_running_loop().run_in_executor(None, tmp.mkdir, 0o700, True)
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        # only this server may talk to the container: its loopback port is open to every user
        self.secret = secrets.token_hex(16)
        env[SECRET_ENV] = self.secret
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)
            self.port = listener.getsockname()[1]
            fd = listener.fileno()
            self.process = await asyncio.create_subprocess_exec(
                python, RUNTIME_SCRIPT, str(fd), str(os.getpid()),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, cwd=self.workdir, env=env,
                pass_fds=(fd,), limit=1024 * 1024,
            )
        finally:
            listener.close()
        self._readers = [
            asyncio.create_task(self._read(self.process.stdout, "stdout")),
            asyncio.create_task(self._read(self.process.stderr, "stderr")),
        ]

    async def _read(self, stream: asyncio.StreamReader, name: str) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over the reader's limit: dropped, as a runtime would
                continue
            if not raw:
                return
            text = raw.decode("utf-8", "replace").rstrip("\n")
            if text == SENTINEL:
                self._ends[name] += 1
                if min(self._ends.values()) >= self._expected_ends:
                    self._ended.set()
            else:
                self.logs.add(name, text)

    def begin(self, log_limit_bytes: int) -> None:
        """Start collecting the logs of a new activation."""
        self.logs = Logs(log_limit_bytes)

    async def end(self, complete: bool) -> list[str]:
        """Finish the activation's logs: wait for the end markers if the runtime wrote them."""
        if complete:
            self._expected_ends += 1
            if min(self._ends.values()) < self._expected_ends:
                self._ended.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._ended.wait(), LOG_SETTLE_SECONDS)
        else:
            for reader in self._readers:  # drain what the dead process wrote before it died
                try:
                    await asyncio.wait_for(asyncio.shield(reader), LOG_SETTLE_SECONDS)
                except asyncio.TimeoutError:
                    break
            self.logs.lines.append(f"{_log_time()} stderr: {DEVELOPER_ERROR_LOGS}")
        self.last_used = time.monotonic()
        return self.logs.lines

    async def post(self, path: str, body: bytes, timeout_s: float) -> tuple[int, bytes]:
        """POST to the runtime; raise ``ContainerGone`` when the process dies or times out."""
        try:
            return await asyncio.wait_for(self._post(path, body), timeout_s)
        except asyncio.TimeoutError:
            self.kill("timeout")
            raise ContainerGone("timeout") from None
        except aiohttp.ClientError:
            if self.alive and self.kill_reason is None:
                # the process may be exiting: give it a moment to be reaped
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.process.wait(), 1.0)
            self.kill(self.kill_reason or "crash")
            raise ContainerGone(self.kill_reason) from None

    async def _post(self, path: str, body: bytes) -> tuple[int, bytes]:
        async with self.session.post(
            f"http://127.0.0.1:{self.port}{path}", data=body,
            headers={"Content-Type": "application/json", SECRET_HEADER: self.secret},
        ) as response:
            return response.status, await response.read()

    def rss_bytes(self) -> int:
        """Resident memory of the container's process tree, read from /proc (0 once it is gone)."""
        return _tree_rss(self.process.pid) if self.process is not None else 0

    def kill(self, reason: str) -> None:
        """Kill the process at once (SIGKILL); the first reason given is the one reported."""
        if self.kill_reason is None:
            self.kill_reason = reason
        if self.alive:
            self.process.kill()

    async def destroy(self) -> None:
        """Kill the process, reap it and remove its working directory."""
        self.kill(self.kill_reason or "removed")
        if self.process is not None:
            await self.process.wait()
        for reader in self._readers:
            reader.cancel()
        await asyncio.get_running_loop().run_in_executor(
            None, shutil.rmtree, self.workdir, True
        )

