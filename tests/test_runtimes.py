"""Runtimes from the object store: built by the CLI, fetched once per container by the full
worker zip on the local server's stock ``python:3.x`` kind (which has no such package), on the
local store and on the real Swift; refused before any invocation when missing or mismatched."""
from __future__ import annotations

import asyncio
import json

import dask
import pytest

import dask_whisk
from _server_fixtures import RawWhisk, own_local_store  # noqa: F401 (a fixture)
from dask_whisk import whisk_get
from dask_whisk.artifact import host_python
from dask_whisk.protocol import TamperedObject
from dask_whisk.cli import main as cli_main
from dask_whisk.config import WhiskConfig
from dask_whisk.deploy import deploy_worker_action
from dask_whisk.openwhisk import OpenWhiskClient
from dask_whisk.runtime import NAMESPACE, Runtimes, RuntimeUnavailable
from dask_whisk.server import ServerSettings, start_server_process

#: a small pure-Python package this environment lacks: only a runtime can bring it
PACKAGE = "tabulate==0.10.0"
ACTION = "runtime-worker"


def redeploy(server) -> None:
    """Deploy the full worker zip again: a new action version, so the next activations start
    in new containers (a warm one keeps a runtime with the same hash, whatever its name)."""
    async def put() -> None:
        async with OpenWhiskClient(WhiskConfig(apihost=server.url, auth=server.auth)) as client:
            await deploy_worker_action(client, ACTION, log=lambda _: None)
    asyncio.run(put())


@pytest.fixture
def stock_server(module_stock_server):
    """A local server with only its stock python:3.x kind used, the full worker zip freshly
    deployed (no warm container) for each test."""
    redeploy(module_stock_server)
    return module_stock_server


@pytest.fixture(scope="module")
def module_stock_server():
    with start_server_process(ServerSettings(invocations_per_minute=100_000,
                                             concurrent_invocations=100)) as server:
        yield server


def run_job(server, runtime: str | None) -> tuple[list[str], object]:
    """Two tables, the second after the first, so one warm container serves both."""
    def table(rows):  # nested: pickled by value (this test module is not on the workers)
        import tabulate

        return tabulate.tabulate(rows, tablefmt="plain")

    first = dask.delayed(table)([[1, 2]])
    second = dask.delayed(lambda done, rows: (done, table(rows)))(first, [[3, 4]])
    with dask.config.set({"whisk.apihost": server.url, "whisk.auth": server.auth,
                          "whisk.action": ACTION, "whisk.fuse": False, "whisk.parallelism": 1}):
        got = second.compute(scheduler=whisk_get, runtime=runtime)
    return list(got), dask_whisk.last_report()


def built(capsys, name: str) -> str:
    """Build runtime ``name`` with the CLI; its printed manifest."""
    assert cli_main(["runtime", "build", PACKAGE, "--name", name]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def check_fetched_once(report) -> None:
    activations = [a for a in report.attempts if a["outcome"] == "success"]
    assert len(activations) == 2, report.summary()
    assert activations[0]["runtime"] > 0, "the cold container did not fetch the runtime"
    assert activations[1]["runtime"] == 0, "the warm container fetched it again"


def test_a_runtime_built_by_the_cli_is_fetched_once_per_container(stock_server, own_local_store, capsys):
    out = built(capsys, "tables")
    assert out.startswith(f"tables: Python {host_python()} manylinux_x86_64")
    assert "tabulate==0.10.0" in out and "numpy" not in out  # the worker's own packages stay out
    assert cli_main(["runtime", "list"]) == 0 and "tables: Python" in capsys.readouterr().out
    # without it, the stock kind has no tabulate: the runtime is what brings it (first, as a
    # warm container keeps a runtime it has unpacked)
    with pytest.raises(ModuleNotFoundError, match="tabulate"):
        run_job(stock_server, None)
    got, report = run_job(stock_server, "tables")
    assert got == ["1  2", "3  4"]
    check_fetched_once(report)
    zip_name = Runtimes().resolve("tables")["object"]
    assert (own_local_store / NAMESPACE / zip_name).is_file()
    assert cli_main(["runtime", "delete", "tables"]) == 0
    assert "deleted tables" in capsys.readouterr().out
    assert not (own_local_store / NAMESPACE / zip_name).exists()  # no other name used it


def test_a_runtime_in_swift_is_fetched_with_a_read_only_grant(stock_server, swift_env, capsys):
    swift = {"whisk.store": "swift", "whisk.swift.auth-url": swift_env.auth_url,
             "whisk.swift.user": swift_env.user, "whisk.swift.key": swift_env.key}
    with dask.config.set(swift):
        built(capsys, "tables-swift")
        runtimes = Runtimes()
        grant = runtimes.grant(runtimes.resolve("tables-swift"))
        runtimes.close()
        assert grant["store"]["mode"] == "tempurl" and not grant["store"]["put"]
        assert swift_env.key not in json.dumps(grant)
        got, report = run_job(stock_server, "tables-swift")
        assert got == ["1  2", "3  4"]
        check_fetched_once(report)
        assert cli_main(["runtime", "delete", "tables-swift"]) == 0


def test_a_missing_or_mismatched_runtime_is_refused_before_any_invocation(stock_server, own_local_store):
    runtimes = Runtimes()
    try:
        runtimes.add("old-python", b"PK\x05\x06" + bytes(18), "3.9", ["tabulate==0.10.0"], 0)
    finally:
        runtimes.close()

    async def activations() -> int:
        async with RawWhisk(stock_server.url, stock_server.auth) as ow:
            return len((await ow.request("GET", "activations", params={"limit": "200"}))[1])

    before = asyncio.run(activations())
    with pytest.raises(RuntimeUnavailable, match=r"no runtime .nope. in the store: build it with `dask-whisk runtime build PACKAGE \.\.\. --name nope`"):
        run_job(stock_server, "nope")
    with pytest.raises(RuntimeUnavailable, match=r"built for Python 3\.9 .* `dask-whisk runtime build "
                                                 r"tabulate --name old-python --python 3\.\d+`"):
        run_job(stock_server, "old-python")
    assert asyncio.run(activations()) == before, "an activation was invoked"


def test_a_changed_runtime_is_refused_by_the_worker(stock_server, own_local_store, capsys):
    built(capsys, "tampered")
    runtimes = Runtimes()
    try:
        manifest = runtimes.resolve("tampered")
        code = bytearray(runtimes.store.get(manifest["object"]))
        code[-30] ^= 0xFF
        runtimes.store.put(manifest["object"], [bytes(code)])
    finally:
        runtimes.close()
    with pytest.raises(TamperedObject, match="does not match its hash"):
        run_job(stock_server, "tampered")
