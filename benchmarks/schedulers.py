"""whisk_get against Dask's own schedulers on the same workloads, in one run.

    .venv/bin/python benchmarks/schedulers.py [--repeat 3] [--only NAME ...] [--store local|swift]

Prints wall seconds (best of --repeat) per scheduler and the ratio whisk / threads. whisk runs on
the embedded default (local OpenWhisk-compatible server on this machine) unless an OpenWhisk is
configured; one warm-up job first, so cold starts of the server and containers are reported
separately, not folded into the figures.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import dask
import dask.array as da
import dask.bag as db
import numpy as np

from dask_whisk import whisk_get


def array_mean() -> object:
    x = da.random.RandomState(0).random((10_000, 10_000), chunks=(1_000, 1_000))
    return (x + x.T).mean(axis=0).sum()


def matmul() -> object:
    x = da.random.RandomState(1).random((4_000, 4_000), chunks=(1_000, 1_000))
    return (x @ x).sum()


def svd() -> object:
    x = da.random.RandomState(2).random((200_000, 100), chunks=(10_000, 100))
    return da.linalg.svd(x)[1]


def word_count() -> object:
    words = np.array("the quick brown fox jumps over the lazy dog with dask on openwhisk".split())

    def lines(seed: int) -> list[str]:
        rs = np.random.RandomState(seed)
        return [" ".join(rs.choice(words, 12)) for _ in range(2_000)]

    bag = db.from_sequence(range(200), npartitions=200).map_partitions(lambda s: lines(s[0]))
    return bag.str.split().flatten().frequencies()


def monte_carlo_pi() -> object:
    xy = da.random.RandomState(3).random((2, 10_000_000), chunks=(2, 10_000))
    return 4 * ((xy**2).sum(axis=0) < 1).mean()


def many_delayed() -> object:
    inc = dask.delayed(lambda v: v + 1, pure=True)
    return dask.delayed(sum)([inc(i) for i in range(2_000)])


WORKLOADS: dict[str, Callable[[], object]] = {
    "array (x + x.T).mean(0).sum() 10k^2/1k^2": array_mean,
    "matmul 4k^2/1k^2": matmul,
    "svd 200k x 100": svd,
    "bag word count 200 partitions": word_count,
    "monte carlo pi 1000 chunks": monte_carlo_pi,
    "2,000 tiny delayed tasks": many_delayed,
}
SCHEDULERS = {"sync": "sync", "threads": "threads", "processes": "processes", "whisk": whisk_get}


def best_of(repeat: int, collection: object, scheduler: object) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        dask.compute(collection, scheduler=scheduler)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="substrings of workload names to run")
    parser.add_argument("--store", choices=["local", "swift"], default=None)
    args = parser.parse_args()
    if args.store:
        dask.config.set({"whisk.store": args.store})
    start = time.perf_counter()
    dask.compute(dask.delayed(sum)([1, 2]), scheduler=whisk_get)
    print(f"whisk start-up (server, deploy, first cold start): {time.perf_counter() - start:.2f} s\n")
    header = f"{'workload':<44}" + "".join(f"{name:>11}" for name in SCHEDULERS) + f"{'whisk/threads':>15}"
    print(header)
    print("-" * len(header))
    for name, make in WORKLOADS.items():
        if args.only and not any(s in name for s in args.only):
            continue
        collection = make()
        dask.compute(collection, scheduler=whisk_get)  # warm the containers for this workload
        seconds = {s: best_of(args.repeat, collection, sched) for s, sched in SCHEDULERS.items()}
        ratio = seconds["whisk"] / seconds["threads"]
        print(f"{name:<44}" + "".join(f"{seconds[s]:>11.2f}" for s in SCHEDULERS) + f"{ratio:>15.1f}x",
              flush=True)


if __name__ == "__main__":
    main()
