"""Fixtures for the local OpenWhisk-compatible server: running servers and a raw HTTP helper.

The lead's conftest imports these with ``from _server_fixtures import *``.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import tempfile
from pathlib import Path

import aiohttp
import pytest

from dask_whisk.deploy import local_images
from dask_whisk.server import ServerProcess, ServerSettings, start_server_process
from dask_whisk.store.local import shared_tempdir

__all__ = ["shared_folder", "own_local_store", "server_process", "server_factory", "server_npm_dir", "RawWhisk", "run_raw", "ROOMY", "THIS_PYTHON",
           "whisk_on"]

#: the image of this Python environment, on which the small worker zip runs (as on the
#: embedded server)
THIS_PYTHON = local_images()
#: research-style limits, so only tests that want a throttle meet one
ROOMY = dict(invocations_per_minute=1_000_000, concurrent_invocations=10_000, user_memory_mb=4096,
             images=THIS_PYTHON)


def shared_folder() -> Path:
    """A new private folder that the local server's containers see too (their /tmp is their own):
    for a local store, or files tasks leave for each other."""
    return Path(tempfile.mkdtemp(prefix="dask-whisk-test-", dir=shared_tempdir()))


@pytest.fixture(scope="module")
def own_local_store():
    """A local store root for one module's jobs and runtimes (a runtime stays in the store,
    which the session's ``local_store_root`` must not keep: it is checked empty after jobs)."""
    import shutil

    import dask

    root = shared_folder()
    with dask.config.set({"whisk.store": "local", "whisk.local.root": str(root)}):
        yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def server_process() -> ServerProcess:
    """One shared server (port 0, roomy limits) for the session; tests use distinct action names."""
    with start_server_process(ServerSettings(**ROOMY)) as handle:
        yield handle


@pytest.fixture
def server_factory():
    """Start servers with given settings (``server_factory(concurrent_invocations=2)``); all stop after."""
    with contextlib.ExitStack() as stack:
        yield lambda **settings: stack.enter_context(start_server_process(ServerSettings(**settings)))


@pytest.fixture(scope="session")
def server_npm_dir() -> Path:
    """Where ``make test`` installed the npm ``openwhisk`` client; fails clearly when absent."""
    value = os.environ.get("DASK_WHISK_NPM_DIR")
    if not value:
        pytest.fail("DASK_WHISK_NPM_DIR is not set: run the tests with `make test`, which installs "
                    "the npm openwhisk client into .cache/npm and sets it")
    path = Path(value)
    if not (path / "node_modules" / "openwhisk" / "package.json").is_file():
        pytest.fail(f"{path}/node_modules/openwhisk is missing: run `make npm` (or `make test`)")
    return path


class RawWhisk:
    """Raw aiohttp requests to a server (no OpenWhisk client in between), for exact checks."""

    def __init__(self, url: str, auth: str | None) -> None:
        self.url = url
        self.headers = {}
        if auth is not None:
            self.headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "RawWhisk":
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.session.close()

    async def request(self, method: str, path: str, body: object = None, *, data: bytes | None = None,
                      headers: dict | None = None, params: dict | None = None):
        """(status, parsed JSON body, headers) of ``method`` on ``path`` (below /api/v1 unless absolute)."""
        url = self.url + (path if path.startswith("/") else "/api/v1/namespaces/_/" + path)
        kwargs = {"json": body} if body is not None else {"data": data}
        async with self.session.request(method, url, params=params,
                                        headers={**self.headers, **(headers or {})}, **kwargs) as r:
            with contextlib.suppress(ValueError, aiohttp.ContentTypeError):
                return r.status, await r.json(content_type=None), r.headers
            return r.status, None, r.headers

    async def put_action(self, name: str, code: str, **fields) -> dict:
        """Create or update a Python action; fails the test unless the server answers 200."""
        exec_ = {"kind": fields.pop("kind", "python:default"), "code": code}
        if "main" in fields:
            exec_["main"] = fields.pop("main")
        body = {"exec": exec_, **fields}
        status, action, _ = await self.request("PUT", f"actions/{name}", body,
                                               params={"overwrite": "true"})
        assert status == 200, action
        return action

    async def invoke(self, name: str, params: dict | None = None, **query):
        """Blocking invoke: (status, body, headers)."""
        q = {"blocking": "true", **{k: str(v).lower() for k, v in query.items()}}
        return await self.request("POST", f"actions/{name}", params or {}, params=q)


def run_raw(server: ServerProcess, scenario):
    """Run ``await scenario(ow)`` with a RawWhisk session on ``server``; return its result."""
    async def run():
        async with RawWhisk(server.url, server.auth) as ow:
            return await scenario(ow)

    return asyncio.run(run())


@contextlib.contextmanager
def whisk_on(**settings):
    """Start a server with ``settings`` (roomy limits unless given), deploy the small worker zip
    to it (as the embedded server gets: no virtualenv to upload), and point ``whisk_get`` at it
    for the block. Yields the ServerProcess."""
    import dask

    from dask_whisk.config import WhiskConfig
    from dask_whisk.deploy import deploy_worker_action
    from dask_whisk.openwhisk import OpenWhiskClient

    async def deploy(server):
        async with OpenWhiskClient(WhiskConfig(apihost=server.url, auth=server.auth)) as client:
            await deploy_worker_action(client, dask.config.get("whisk.action"), local=True,
                                       log=lambda _: None)

    with start_server_process(ServerSettings(**{**ROOMY, **settings})) as server:
        asyncio.run(deploy(server))
        with dask.config.set({"whisk.apihost": server.url, "whisk.auth": server.auth}):
            yield server
