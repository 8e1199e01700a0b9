"""What an action's Python sees on the local server: a ``python:3.x`` kind is OpenWhisk's stock
image (the standard library and the stock packages, none of the server's dask or numpy), a
blackbox action runs on an image the server was given, and an unknown image fails as a pull."""
from __future__ import annotations

import importlib.metadata
import sys
import uuid

import pytest

from _server_fixtures import THIS_PYTHON, run_raw, server_process  # noqa: F401 (fixtures)
from dask_whisk.cli import main as cli_main
from dask_whisk.deploy import local_image
from dask_whisk.server.main import image_option

PROBE = """import importlib
def main(args):
    found = {}
    for name in args['modules']:
        try:
            importlib.import_module(name)
            found[name] = True
        except ImportError as exc:
            found[name] = type(exc).__name__
    return found
"""
SERVER_ONLY = ["numpy", "dask", "cloudpickle", "aiohttp", "swiftclient", "dask_whisk"]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_a_stock_kind_sees_the_standard_library_and_stock_packages_only(server_process):
    """The server's own environment has numpy, dask and requests (swiftclient needs it): a
    ``python:3.x`` action imports requests, as on a stock image, and none of the others."""
    importlib.metadata.distribution("requests")  # the test proves nothing without it
    name = unique("stock")

    async def scenario(ow):
        await ow.put_action(name, PROBE)
        status, result, _ = await ow.invoke(name, {"modules": ["json", "sqlite3", "requests", *SERVER_ONLY]},
                                            result=True)
        assert status == 200, result
        assert result == {"json": True, "sqlite3": True, "requests": True,
                          **{m: "ModuleNotFoundError" for m in SERVER_ONLY}}

    run_raw(server_process, scenario)


def test_a_blackbox_action_runs_on_its_registered_image(server_process):
    """``server_process`` knows this environment as an image: its actions see all of it."""
    name = unique("image")

    async def scenario(ow):
        body = {"exec": {"kind": "blackbox", "image": local_image(), "code": PROBE}}
        status, action, _ = await ow.request("PUT", f"actions/{name}", body)
        assert status == 200 and action["exec"]["image"] == local_image(), action
        status, result, _ = await ow.invoke(name, {"modules": ["numpy", "dask"]}, result=True)
        assert (status, result) == (200, {"numpy": True, "dask": True})

    run_raw(server_process, scenario)


def test_an_unknown_image_fails_as_an_image_that_cannot_be_pulled(server_process):
    name, bare = unique("nopull"), unique("noimage")

    async def scenario(ow):
        body = {"exec": {"kind": "blackbox", "image": "example/missing:1.0", "code": PROBE}}
        assert (await ow.request("PUT", f"actions/{name}", body))[0] == 200  # accepted, as OpenWhisk does
        status, record, _ = await ow.invoke(name, {"modules": []})
        assert status == 502 and record["response"]["status"] == "action developer error"
        assert record["response"]["result"] == {"error": "Failed to pull container image 'example/missing:1.0'."}
        status, error, _ = await ow.request("PUT", f"actions/{bare}", {"exec": {"kind": "blackbox"}})
        assert status == 400 and "'image' must be a string defined in 'exec'" in error["error"]

    run_raw(server_process, scenario)


def test_the_image_option_takes_an_interpreter_or_a_virtualenv(tmp_path):
    assert image_option(f"org/a:1={sys.executable}") == ("org/a:1", sys.executable)
    venv = sys.prefix  # this virtualenv's folder: its bin/python
    assert image_option(f"org/b:2={venv}") == ("org/b:2", f"{venv}/bin/python")
    assert THIS_PYTHON == {local_image(): sys.executable}
    for bad in ("no-equals", f"=/{sys.executable}", f"org/c:3={tmp_path}"):
        with pytest.raises(Exception, match="NAME=PATH|neither a Python interpreter"):
            image_option(bad)
    with pytest.raises(SystemExit) as exited:  # argparse's usage error, before any server starts
        cli_main(["server", "--image", f"org/c:3={tmp_path}", "--port", "0"])
    assert exited.value.code == 2


def test_a_job_on_an_image_the_server_lacks_says_what_to_do(local_store_root):
    """The small zip deployed for a local image the server was not started with: the job fails
    with OpenWhisk's words and the ways out, not a bare developer error."""
    import asyncio

    import dask

    from dask_whisk import whisk_get
    from dask_whisk.config import WhiskConfig
    from dask_whisk.deploy import deploy_worker_action
    from dask_whisk.job import ActivationError
    from dask_whisk.openwhisk import OpenWhiskClient
    from dask_whisk.server import ServerSettings, start_server_process

    with start_server_process(ServerSettings(port=0)) as server:
        async def put() -> None:
            async with OpenWhiskClient(WhiskConfig(apihost=server.url, auth=server.auth)) as client:
                await deploy_worker_action(client, "imageless", local=True, log=lambda _: None)
        asyncio.run(put())
        with dask.config.set({"whisk.apihost": server.url, "whisk.auth": server.auth,
                              "whisk.action": "imageless"}):
            with pytest.raises(ActivationError, match=r"Failed to pull container image "
                                                      r"'dask-whisk/local-python:3\.\d+'\..*"
                                                      r"dask-whisk server --image NAME="):
                dask.delayed(sum)([1, 2]).compute(scheduler=whisk_get)
