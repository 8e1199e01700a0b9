"""The embedded default is private to its user: its own key per start, never on a command line;
an explicitly started server says when it accepts the public guest key."""
import asyncio
import base64
import select
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
        said, _, _ = select.select([process.stderr], [], [], 10)
        warning = process.stderr.readline() if said else ""
    finally:
        process.terminate()
        process.wait(10)
    assert "published guest key" in warning and "127.0.0.1" in warning
