"""Soak: thousands of single-task activations paced through tight OpenWhisk limits.

Runs a sum over ``--tasks`` delayed increments, unfused (one activation per task), against an
embedded local server limited to ``--concurrent`` activations at once and ``--per-minute``
invocations a minute, and prints the wall time, the activations, the attempts and the 429s the
client provoked:

    .venv/bin/python benchmarks/soak.py [--tasks 5000] [--concurrent 4] [--per-minute 3000]

With more tasks than the per-minute limit the job must wait out OpenWhisk's wall-clock minute,
so it takes a minute or more: too long for the test suite, which paces 1,000 activations through
the concurrency limit alone (tests/test_reliability.py).
"""
from __future__ import annotations

import argparse
import asyncio
import time

import dask

import dask_whisk
from dask_whisk import backend, whisk_get
from dask_whisk.config import WhiskConfig
from dask_whisk.deploy import deploy_worker_action, local_images
from dask_whisk.openwhisk import OpenWhiskClient
from dask_whisk.server import ServerSettings, start_server_process


async def deploy(url: str, auth: str) -> None:
    """The small worker zip, as the embedded server gets it."""
    async with OpenWhiskClient(WhiskConfig(apihost=url, auth=auth)) as client:
        await deploy_worker_action(client, dask.config.get("whisk.action"), local=True,
                                   log=lambda _: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5_000)
    parser.add_argument("--concurrent", type=int, default=4)
    parser.add_argument("--per-minute", type=int, default=3_000)
    args = parser.parse_args()

    inc = dask.delayed(lambda v: v + 1, pure=True)
    total = dask.delayed(sum)([inc(i) for i in range(args.tasks)])
    settings = ServerSettings(concurrent_invocations=args.concurrent,
                              invocations_per_minute=args.per_minute, user_memory_mb=4096,
                              images=local_images())
    with start_server_process(settings) as handle:
        asyncio.run(deploy(handle.url, handle.auth))
        unfused = {"whisk.fuse": False, "whisk.batch-max-units": 1,
                   "whisk.apihost": handle.url, "whisk.auth": handle.auth}
        with dask.config.set(unfused):
            started = time.perf_counter()
            value = total.compute(scheduler=whisk_get)
            took = time.perf_counter() - started
            stats = backend.get_backend().client.stats
            backend.get_backend().close()
    if value != sum(range(1, args.tasks + 1)):
        raise SystemExit(f"wrong result {value}")
    report = dask_whisk.last_report()
    print(f"{report.activations} activations in {took:.1f} s, at most {report.max_attempts} "
          f"attempt(s) per unit; {stats.throttled} 429s over {stats.requests} requests")


if __name__ == "__main__":
    main()
