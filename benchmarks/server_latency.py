"""Latency of warm blocking invokes against the local OpenWhisk-compatible server.

Starts a server as the tests do (``start_server_process`` with roomy limits, port 0), creates a
trivial Python action, makes one cold invoke, then times ``--count`` warm blocking
``result=true`` invokes one after another from a single keep-alive aiohttp session, and prints
the median, p95 and max in milliseconds:

    .venv/bin/python benchmarks/server_latency.py [--count 200] [--repeat 3] [--json FILE]

A figure, not a test: it depends on the machine and on what else runs on it (the suite only
checks that every invoke is answered correctly; see tests/test_server_stress.py).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import time

import aiohttp

from dask_whisk.server import ServerSettings, start_server_process

#: the limits of the tests' shared server (tests/_server_fixtures.py ROOMY): no throttle is met
ROOMY = dict(invocations_per_minute=1_000_000, concurrent_invocations=10_000, user_memory_mb=4096)
TRIVIAL = "def main(args):\n    return {}\n"


def percentile(sorted_samples: list[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted samples."""
    index = min(len(sorted_samples) - 1, max(0, round(fraction * len(sorted_samples)) - 1))
    return sorted_samples[index]


async def warm_latencies(url: str, auth: str, count: int) -> list[float]:
    """Seconds of each of ``count`` warm blocking invokes (after one cold one)."""
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
    base = url + "/api/v1/namespaces/_/actions/trivial"
    async with aiohttp.ClientSession(headers=headers) as session:
        body = {"exec": {"kind": "python:default", "code": TRIVIAL}}
        async with session.put(base, json=body, params={"overwrite": "true"}) as r:
            assert r.status == 200, await r.text()
        params = {"blocking": "true", "result": "true"}
        async with session.post(base, json={}, params=params) as r:  # the cold start
            assert r.status == 200, await r.text()
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            async with session.post(base, json={}, params=params) as r:
                await r.read()
            samples.append(time.perf_counter() - started)
            if r.status != 200:
                raise RuntimeError(f"warm invoke answered HTTP {r.status}")
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="warm invokes per round")
    parser.add_argument("--repeat", type=int, default=1, help="rounds, each on a fresh server")
    parser.add_argument("--json", help="also write the figures of every round to this file")
    args = parser.parse_args()
    rounds = []
    for round_no in range(args.repeat):
        with start_server_process(ServerSettings(**ROOMY)) as server:
            samples = sorted(asyncio.run(warm_latencies(server.url, server.auth, args.count)))
        figures = {"count": len(samples),
                   "median_ms": statistics.median(samples) * 1000,
                   "p95_ms": percentile(samples, 0.95) * 1000,
                   "max_ms": samples[-1] * 1000}
        rounds.append(figures)
        print(f"round {round_no + 1}: {figures['count']} warm blocking invokes: "
              f"median {figures['median_ms']:.2f} ms, p95 {figures['p95_ms']:.2f} ms, "
              f"max {figures['max_ms']:.2f} ms", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rounds, f, indent=1)


if __name__ == "__main__":
    main()
