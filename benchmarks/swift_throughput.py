"""Effective Swift throughput through dask-whisk's stores against raw python-swiftclient.

Measures PUT and GET of 1 MiB and 32 MiB objects: SwiftJobStore (client side), the worker store
(TempURLs, standard library HTTP) and a bare swiftclient Connection, all on the same server, and
prints MB/s with the ratio to raw. Uses ST_AUTH/ST_USER/ST_KEY, or starts swift-saio if unset:

    .venv/bin/python benchmarks/swift_throughput.py [--repeat N] [--sizes 1,32]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable

import swiftclient

from dask_whisk.store import new_job_id, open_job_store, open_worker_store, saio

MiB = 1024 * 1024


def rates(nbytes: int, ops: dict[str, Callable[[int], object]], repeat: int) -> dict[str, float]:
    """Median MB/s of each ``op(i)``, the ops interleaved round by round after a warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in ops}
    for i in range(-1, repeat):
        for name, op in ops.items():
            start = time.perf_counter()
            op(i)
            if i >= 0:
                times[name].append(time.perf_counter() - start)
    return {name: nbytes / statistics.median(t) / 1e6 for name, t in times.items()}


def measure(auth_url: str, user: str, key: str, size_mib: int, repeat: int) -> dict[str, float]:
    """MB/s for each path and direction at one object size."""
    payload = os.urandom(size_mib * MiB)
    n = len(payload)
    raw = swiftclient.Connection(auth_url, user, key)
    store = open_job_store("swift", new_job_id(), auth_url=auth_url, user=user, key=key)
    container = store.container
    names = [f"o{i}" for i in range(-1, repeat)]
    worker = open_worker_store(store.worker_access(names, names))
    try:
        puts = rates(n, {
            "raw put": lambda i: raw.put_object(container, f"raw{i}", payload),
            "store put": lambda i: store.put(f"s{i}", [payload]),
            "worker put": lambda i: worker.put(f"o{i}", [payload]),
        }, repeat)
        gets = rates(n, {
            "raw get": lambda i: raw.get_object(container, f"raw{i}"),
            "store get": lambda i: store.get(f"s{i}"),
            "worker get": lambda i: worker.get(f"o{i}"),
        }, repeat)
    finally:
        store.destroy()
        store.close()
        raw.close()
    return {**puts, **gets}


def main() -> None:
    """Run the measurements and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sizes", default="1,32", help="object sizes in MiB, comma-separated")
    args = parser.parse_args()
    directory = None
    if not os.environ.get("ST_AUTH"):
        directory = tempfile.mkdtemp(prefix="saio-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        info = saio.start(directory, port=saio.free_port())
        env = (info.auth_url, info.user, info.key)
    else:
        env = (os.environ["ST_AUTH"], os.environ["ST_USER"], os.environ["ST_KEY"])
    try:
        print(f"{'size':>6} {'op':<4} {'raw MB/s':>9} {'store MB/s':>11} {'ratio':>6} "
              f"{'worker MB/s':>12} {'ratio':>6}")
        for size in (int(s) for s in args.sizes.split(",")):
            r = measure(*env, size, args.repeat)
            for op in ("put", "get"):
                base = r[f"raw {op}"]
                print(f"{size:>4}MiB {op:<4} {base:>9.1f} {r[f'store {op}']:>11.1f} "
                      f"{r[f'store {op}'] / base:>6.0%} {r[f'worker {op}']:>12.1f} "
                      f"{r[f'worker {op}'] / base:>6.0%}")
    finally:
        if directory:
            saio.stop(directory)
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
