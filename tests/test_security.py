"""The embedded default is private to its user: its own key per start, never on a command line;
an explicitly started server says when it accepts the public guest key."""
import asyncio
import base64
import os
import selectors
import subprocess
import sys
from pathlib import Path

import aiohttp
import dask

from dask_whisk import backend, whisk_get
from dask_whisk.server.settings import GUEST_AUTH


async def status_with(url: str, auth: str) -> int:
    header = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/api/v1/namespaces/_/actions", headers=header) as response:
            return response.status


def test_the_embedded_server_has_its_own_key_and_refuses_the_guest_key(local_store_root):
    assert dask.delayed(sum)([1, 2]).compute(scheduler=whisk_get) == 3
    server = backend._embedded_server
    assert server.auth != GUEST_AUTH
    assert asyncio.run(status_with(server.url, GUEST_AUTH)) == 401
    assert asyncio.run(status_with(server.url, server.auth)) == 200
    cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes().decode()
    assert server.auth.split(":")[1] not in cmdline, "the key is visible to every local user"


def test_an_explicit_server_says_it_accepts_the_public_guest_key():
    process = subprocess.Popen([sys.executable, "-m", "dask_whisk.cli", "server", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().startswith("dask-whisk server listening on http://127.0.0.1:")
        with selectors.DefaultSelector() as selector:  # select() cannot watch fds above 1023
            selector.register(process.stderr, selectors.EVENT_READ)
            warning = process.stderr.readline() if selector.select(timeout=10) else ""
    finally:
        process.terminate()
        process.wait(10)
    assert "published guest key" in warning and "127.0.0.1" in warning


def container_ports(server_pid: int) -> list[int]:
    """Loopback ports the server's container processes listen on (from /proc)."""
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    inodes = set()
    for child in children:
        for fd in Path(f"/proc/{child}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
            ports.append(int(fields[1].split(":")[1], 16))
    return ports


def test_a_container_answers_only_its_own_server(local_store_root):
    """A container's loopback port is open to every local user: without its server's secret,
    /init and /run are refused (and the job still works)."""
    assert dask.delayed(sum)([1, 2]).compute(scheduler=whisk_get) == 3  # a warm container
    ports = container_ports(backend._embedded_server.process.pid)
    assert ports, "no container found: the test proves nothing"

    async def post(port: int, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}{path}", json={"value": {}}) as answer:
                return answer.status, await answer.text()

    for port in ports:
        for path in ("/init", "/run"):
            status, text = asyncio.run(post(port, path))
            assert status == 403 and "Only the server" in text, (path, status, text)
    assert dask.delayed(sum)([3, 4]).compute(scheduler=whisk_get) == 7
