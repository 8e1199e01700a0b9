"""Cold starts with and without a runtime from the store, on the local server's stock kind.

Deploys the full worker zip to a fresh local server (stock ``python:3.x``: no host packages),
builds a runtime (default: pandas and pyarrow), then for the local store and for Swift (a
swift-saio it starts, unless ST_AUTH/ST_USER/ST_KEY are set) runs one-task jobs on a cold
container without and with the runtime and prints the first activation's init, runtime fetch
and duration, and the job's wall time (medians of --repeat rounds, each on a new action version):

    .venv/bin/python benchmarks/runtime_cold_start.py [--repeat 3] [--packages pandas pyarrow]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time

import dask

import dask_whisk
from dask_whisk import whisk_get
from dask_whisk.config import WhiskConfig
from dask_whisk.deploy import deploy_worker_action
from dask_whisk.openwhisk import OpenWhiskClient
from dask_whisk.runtime import Runtimes, pack
from dask_whisk.artifact import host_python
from dask_whisk.server import ServerSettings, start_server_process
from dask_whisk.store import saio
from dask_whisk.store.local import shared_tempdir


def cold_job(server, action: str, runtime: str | None) -> dict[str, float]:
    """Redeploy (a new version: the next activation is cold) and run one task; its figures."""
    async def put() -> None:
        async with OpenWhiskClient(WhiskConfig(apihost=server.url, auth=server.auth)) as client:
            await deploy_worker_action(client, action, log=lambda _: None)
    asyncio.run(put())
    with dask.config.set({"whisk.apihost": server.url, "whisk.auth": server.auth, "whisk.action": action}):
        started = time.perf_counter()
        dask.delayed(sum)([1, 2]).compute(scheduler=whisk_get, runtime=runtime)
        wall = time.perf_counter() - started
    first = dask_whisk.last_report().attempts[0]
    return {"init": first["init"], "runtime": first["runtime"], "duration": first["duration"], "wall": wall}


def main() -> None:
    """Build the runtime, measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--packages", nargs="+", default=["pandas", "pyarrow"])
    args = parser.parse_args()
    code, packages, unpacked = pack(args.packages, host_python())
    print(f"runtime {' '.join(args.packages)}: {len(code) / 1e6:.1f} MB packed, {unpacked / 1e6:.1f} MB "
          f"unpacked ({' '.join(packages)})")
    saio_dir = None
    if os.environ.get("ST_AUTH"):
        swift = (os.environ["ST_AUTH"], os.environ["ST_USER"], os.environ["ST_KEY"])
    else:
        saio_dir = tempfile.mkdtemp(prefix="saio-bench-", dir=shared_tempdir())
        info = saio.start(saio_dir, port=saio.free_port())
        swift = (info.auth_url, info.user, info.key)
    local_root = tempfile.mkdtemp(prefix="runtime-bench-", dir=shared_tempdir())
    stores = {"local": {"whisk.store": "local", "whisk.local.root": local_root},
              "swift": {"whisk.store": "swift", "whisk.swift.auth-url": swift[0],
                        "whisk.swift.user": swift[1], "whisk.swift.key": swift[2]}}
    print(f"{'store':<6} {'runtime':<8} {'init s':>7} {'fetch+unpack s':>15} {'duration s':>11} {'job wall s':>11}")
    try:
        with start_server_process(ServerSettings(invocations_per_minute=100_000,
                                                 concurrent_invocations=100)) as server:
            for store, settings in stores.items():
                with dask.config.set(settings):
                    with Runtimes() as runtimes:
                        runtimes.add("bench", code, host_python(), packages, unpacked)
                    for runtime in (None, "bench"):
                        rounds = [cold_job(server, "bench-worker", runtime) for _ in range(args.repeat)]
                        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
                        print(f"{store:<6} {'yes' if runtime else 'no':<8} {med['init']:>7.2f} "
                              f"{med['runtime']:>15.2f} {med['duration']:>11.2f} {med['wall']:>11.2f}")
                    with Runtimes() as runtimes:
                        runtimes.delete("bench")
    finally:
        shutil.rmtree(local_root, ignore_errors=True)
        if saio_dir:
            saio.stop(saio_dir)
            shutil.rmtree(saio_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
