"""whisk_get against Dask's own schedulers and distributed.LocalCluster on the same work, in one run.

    .venv/bin/python benchmarks/schedulers.py [--repeat 3] [--only SUBSTRING ...] [--latency-ms 50]
                                              [--json OUT.json]

Every row runs each competitor in turn, interleaved over ``--repeat`` rounds, and reports the
median wall time and the spread (min-max); the interactive rows (8a, 8b) time
``INTERACTIVE_CALLS`` computes a measurement and give the time per compute, and next to the
competitors a floor: Dask's own ``compute`` around one warm invoke of an empty action, which
no scheduler on OpenWhisk goes below (:func:`floor_get`). whisk runs on the embedded default (the local
OpenWhisk-compatible server, warm containers: one untimed warm-up run per row first, the cold
first run of the whole script reported apart) twice, with fusion and with ``whisk.fuse: false``
(one task per unit), and with ``--latency-ms`` once more against a second local server that adds
that latency to every invoke, as a real cloud's API does. For whisk the table adds the
activations and the bytes written to the store and carried inline (from ``last_report()``).
The scale row plans and dispatches a 100,000-task graph and gives the client's CPU per task
next to the threaded scheduler's per-task overhead on the same graph.
"""
from __future__ import annotations

import argparse
import json
import operator
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import dask.bag as db
import numpy as np

import dask_whisk
from dask_whisk import whisk_get

ROOT = Path(__file__).resolve().parent.parent


# --- the work ------------------------------------------------------------------------------------

@dataclass
class Work:
    """A graph or collection, computed by any get-function ``calls`` times per measurement
    (a millisecond job once is mostly noise: its time is reported per call)."""

    graph: dict | None = None
    keys: Any = None
    collection: Any = None
    calls: int = 1

    def run(self, get: Callable) -> Any:
        for _ in range(self.calls):
            result = (get(self.graph, self.keys) if self.graph is not None
                      else dask.compute(self.collection, scheduler=get)[0])
        return result


def inc(x: int) -> int:
    return x + 1


def add(*xs: int) -> int:
    return sum(xs)


def _sum_tree(graph: dict, leaves: list, name: str, fan_in: int = 8) -> Any:
    """Add a tree of sums over ``leaves`` to ``graph``; return the root key."""
    level = 0
    while len(leaves) > 1:
        level += 1
        parents = []
        for i in range(0, len(leaves), fan_in):
            key = (f"{name}-{level}", i // fan_in)
            graph[key] = (add, *leaves[i:i + fan_in])
            parents.append(key)
        leaves = parents
    return leaves[0]


def independent_raw(n: int = 10_000) -> Work:
    graph = {("inc", i): (inc, i) for i in range(n)}
    return Work(graph=graph, keys=_sum_tree(graph, list(graph), "sum"))


def independent_delayed(n: int = 10_000) -> Work:
    leaves = [dask.delayed(inc, pure=True)(i) for i in range(n)]
    while len(leaves) > 1:
        leaves = [dask.delayed(add, pure=True)(*leaves[i:i + 8]) for i in range(0, len(leaves), 8)]
    return Work(collection=leaves[0])


def chain_raw(n: int = 10_000) -> Work:
    graph: dict = {("chain", 0): (inc, 0)}
    for i in range(1, n):
        graph[("chain", i)] = (inc, ("chain", i - 1))
    return Work(graph=graph, keys=("chain", n - 1))


def array_mean() -> Work:
    x = da.random.RandomState(0).random((10_000, 10_000), chunks=(1_000, 1_000))
    return Work(collection=(x + x.T).mean(axis=0).sum())


def matmul() -> Work:
    x = da.random.RandomState(1).random((8_000, 8_000), chunks=(2_000, 2_000))
    return Work(collection=(x @ x).sum())


def svd() -> Work:
    x = da.random.RandomState(2).random((200_000, 100), chunks=(10_000, 100))
    return Work(collection=da.linalg.svd(x)[1])


def tsqr() -> Work:
    x = da.random.RandomState(3).random((262_144, 128), chunks=(8_192, 128))
    return Work(collection=da.linalg.tsqr(x)[1])


WORDS = np.array("the quick brown fox jumps over the lazy dog with dask on openwhisk".split())


def text_partition(seed: int) -> list[str]:
    """About 1 MB of synthetic text."""
    rs = np.random.RandomState(seed)
    return [" ".join(line) for line in rs.choice(WORDS, (15_000, 12)).tolist()]


def word_count() -> Work:
    bag = db.from_sequence(range(200), npartitions=200).map_partitions(lambda s: text_partition(s[0]))
    return Work(collection=bag.str.split().flatten().frequencies())


def monte_carlo_pi() -> Work:
    xy = da.random.RandomState(4).random((2, 10_000_000), chunks=(2, 10_000))
    return Work(collection=4 * ((xy**2).sum(axis=0) < 1).mean())


def delayed_tree(leaves: int = 1_024) -> Work:
    level = [dask.delayed(inc, pure=True)(i) for i in range(leaves)]
    while len(level) > 1:
        level = [dask.delayed(operator.add, pure=True)(a, b) for a, b in zip(level[::2], level[1::2])]
    return Work(collection=level[0])


#: computes per measurement of the interactive rows (8a, 8b): their time is per compute
INTERACTIVE_CALLS = 100


def one_task() -> Work:
    return Work(collection=dask.delayed(inc)(1), calls=INTERACTIVE_CALLS)


def small_array_sum() -> Work:
    return Work(collection=da.ones((1_000, 1_000), chunks=500).sum(), calls=INTERACTIVE_CALLS)


def big_result() -> Work:
    """A 1.15 GB array handed back to the client (issue 14: bigger than any activation)."""
    return Work(collection=da.random.RandomState(5).random((12_000, 12_000), chunks=2_000) + 1)


#: the rows that also measure the floor (:func:`floor_get`)
INTERACTIVE_ROWS = ("8a one-task job", "8b 4-chunk array sum")

ROWS: dict[str, Callable[[], Work]] = {
    "1a 10k independent + sum tree (raw graph)": independent_raw,
    "1b 10k independent + sum tree (delayed)": independent_delayed,
    "1c 10k-task chain (raw graph)": chain_raw,
    "2  (x + x.T).mean(0).sum() 10k^2/1k^2": array_mean,
    "3  (x @ x).sum() 8k^2/2k^2": matmul,
    "4a svd 200k x 100 /10k rows": svd,
    "4b tsqr 262144 x 128 /8192 rows": tsqr,
    "5  bag word count 200 x 1 MB": word_count,
    "6  monte carlo pi 1000 chunks": monte_carlo_pi,
    "7  1024-leaf delayed tree": delayed_tree,
    "8a one-task job": one_task,
    "8b 4-chunk array sum": small_array_sum,
    "9  1.15 GB array result": big_result,
}


# --- the competitors -----------------------------------------------------------------------------

def whisk_variant(config: dict[str, Any]) -> Callable:
    def get(dsk: Any, keys: Any, **kwargs: Any) -> Any:
        with dask.config.set(config):
            return whisk_get(dsk, keys, **kwargs)
    return get


def latency_server(latency_ms: int, stack: ExitStack) -> dict[str, Any]:
    """A second local server adding ``latency_ms`` to every invoke, worker deployed; its config."""
    from dask_whisk.backend import EMBEDDED_LIMITS
    from dask_whisk.deploy import local_images
    from dask_whisk.server import ServerSettings, start_server_process
    from dask_whisk.server.settings import FaultSettings

    # the image of this environment, as the embedded default has it, for --without-dependencies
    server = start_server_process(ServerSettings(port=0, faults=FaultSettings(latency_ms=latency_ms),
                                                 images=local_images(),
                                                 **EMBEDDED_LIMITS))
    stack.callback(server.stop)
    subprocess.run([str(Path(sys.executable).with_name("dask-whisk")), "deploy", "--without-dependencies",
                    "--apihost", server.url, "--auth", server.auth], check=True, stdout=subprocess.DEVNULL)
    # a configured OpenWhisk's namespace limit (1,000 here) says nothing of its invokers'
    # capacity: tell the client, as the README asks, the containers the same memory pool holds
    # (what the embedded default works out itself), so both plan for the same concurrency
    parallelism = EMBEDDED_LIMITS["user_memory_mb"] // int(dask.config.get("whisk.action-memory") or 512)
    return {"whisk.apihost": server.url, "whisk.auth": server.auth, "whisk.parallelism": parallelism}


def competitors(args: argparse.Namespace, stack: ExitStack) -> dict[str, Callable]:
    from distributed import Client, LocalCluster

    cluster = stack.enter_context(LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                               dashboard_address=None))
    client = stack.enter_context(Client(cluster))
    found = {
        "sync": dask.get,
        "threads": dask.threaded.get,
        "processes": dask.multiprocessing.get,
        "local-cluster": client.get,
        "whisk": whisk_get,
        "whisk-nofuse": whisk_variant({"whisk.fuse": False}),
    }
    if args.latency_ms:
        found[f"whisk+{args.latency_ms}ms"] = whisk_variant(latency_server(args.latency_ms, stack))
    return found


#: the empty Python action the floor of the interactive rows invokes
FLOOR_ACTION = "dask-whisk-bench-empty"


def _placeholders(keys: Any) -> Any:
    return [_placeholders(k) for k in keys] if isinstance(keys, list) else 0


def floor_get() -> Callable:
    """A get-function that does only what no scheduler on OpenWhisk can skip: Dask's own
    ``compute`` around it and one warm blocking invoke of an empty Python action on the embedded
    server; it computes nothing. Rows 8a and 8b measure it next to the rest: whisk cannot be
    faster than this."""
    from dask_whisk.backend import get_backend

    backend = get_backend()
    backend.io.run(backend.client.put_action(FLOOR_ACTION, code="def main(args):\n    return {}\n",
                                             kind="python:3"))
    backend.io.run(backend.client.run(FLOOR_ACTION, {}))  # its container warm before it is timed

    def get(dsk: Any, keys: Any, **kwargs: Any) -> Any:
        backend.io.run(backend.client.run(FLOOR_ACTION, {}))
        return _placeholders(keys)

    return get


# --- measuring -----------------------------------------------------------------------------------

def measure(work: Work, gets: dict[str, Callable], repeat: int) -> dict[str, dict[str, Any]]:
    """Interleaved rounds: each competitor once per round; medians, spreads, whisk's reports.
    A competitor that fails on the row is reported with its error and not run again."""
    for name, get in gets.items():
        if name.startswith("whisk"):
            work.run(get)  # warm this row's containers
    times: dict[str, list[float]] = {name: [] for name in gets}
    errors: dict[str, str] = {}
    reports: dict[str, dict] = {}
    for _ in range(repeat):
        for name, get in gets.items():
            if name in errors:
                continue
            start = time.perf_counter()
            try:
                work.run(get)
            except Exception as exc:  # noqa: BLE001  (a competitor's limit is a result, too)
                errors[name] = f"{type(exc).__name__}: {str(exc)[:600]}"
                continue
            times[name].append((time.perf_counter() - start) / work.calls)
            if name.startswith("whisk"):
                reports[name] = dask_whisk.last_report().to_json()
    results: dict[str, dict[str, Any]] = {name: {"error": error} for name, error in errors.items()}
    for name, t in times.items():
        if name not in errors:
            results[name] = {"median": statistics.median(t), "min": min(t), "max": max(t),
                             **({"report": reports[name]} if name in reports else {})}
    return {name: results[name] for name in gets}


def scale_row(n: int = 100_000) -> dict[str, float]:
    """Client CPU per task of whisk_get on ``n`` trivial independent tasks, and threads' overhead."""
    graph = {("s", i): (inc, i) for i in range(n)}
    root = _sum_tree(graph, list(graph), "sum", fan_in=16)
    tasks = len(graph)
    result = {}
    for name, get in (("threads", dask.threaded.get), ("whisk", whisk_get)):
        cpu, start = time.process_time(), time.perf_counter()
        get(graph, root)
        result[f"{name}_wall_s"] = time.perf_counter() - start
        result[f"{name}_cpu_us_per_task"] = (time.process_time() - cpu) / tasks * 1e6
    result["tasks"] = tasks
    result["activations"] = dask_whisk.last_report().activations
    return result


def print_row(name: str, results: dict[str, dict[str, Any]]) -> None:
    print(f"\n{name}")
    for competitor, r in results.items():
        if "error" in r:
            print(f"  {competitor:<14} failed: {r['error']}")
            continue
        unit, scale = ("ms", 1e3) if r["median"] < 0.1 else ("s", 1)
        line = (f"  {competitor:<14} {r['median'] * scale:8.3f} {unit:<2} "
                f"[{r['min'] * scale:.3f}-{r['max'] * scale:.3f}]")
        if "report" in r:
            rep = r["report"]
            line += (f"  tasks {rep['tasks']:>6} activations {rep['activations']:>6} "
                     f"stored {rep['bytes_stored'] / 1e6:8.1f} MB inline {rep['bytes_inline'] / 1e6:6.2f} MB")
        print(line)
    whisk = results["whisk"].get("median")
    if whisk:
        ratios = "  ".join(f"{c} {r['median'] / whisk:.2f}x" for c, r in results.items()
                           if c != "whisk" and "median" in r)
        print(f"  speed-up of whisk over: {ratios}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="substrings of row names to run ('scale' for the scale row)")
    parser.add_argument("--latency-ms", type=int, default=50, help="0: no latency pass")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args()
    wanted = lambda name: not args.only or any(s in name for s in args.only)  # noqa: E731
    start = time.perf_counter()
    dask.compute(dask.delayed(inc)(1), scheduler=whisk_get)
    figures: dict[str, Any] = {"cold_start_s": time.perf_counter() - start}
    print(f"whisk cold start (server, deploy, first container): {figures['cold_start_s']:.2f} s")
    with ExitStack() as stack:
        gets = competitors(args, stack)
        interactive = {**gets, "floor": floor_get()} if any(map(wanted, INTERACTIVE_ROWS)) else gets
        for name, make in ROWS.items():
            if wanted(name):
                figures[name] = measure(make(), interactive if name in INTERACTIVE_ROWS else gets,
                                        args.repeat)
                print_row(name, figures[name])
    if wanted("scale"):
        figures["scale"] = scale_row()
        s = figures["scale"]
        print(f"\nscale: {s['tasks']} tasks, {s['activations']} activations; client CPU per task "
              f"whisk {s['whisk_cpu_us_per_task']:.1f} us ({s['whisk_wall_s']:.2f} s wall), "
              f"threads {s['threads_cpu_us_per_task']:.1f} us ({s['threads_wall_s']:.2f} s wall)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
