"""The `make demo` job: a dask.array and a dask.bag computation on OpenWhisk, checked against
Dask's own scheduler, with timings. Runs with no configuration on the embedded local server."""
import logging
import time

import dask
import dask.array as da
import dask.bag as db
import numpy as np

from dask_whisk import whisk_get

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")


def seconds(collection, scheduler):
    """(result, wall seconds) of computing ``collection`` with ``scheduler``."""
    start = time.perf_counter()
    (result,) = dask.compute(collection, scheduler=scheduler)
    return result, time.perf_counter() - start


def timed(label, collection):
    """Compute ``collection`` on OpenWhisk (first run, then warm) and with threads; print all."""
    got, first_s = seconds(collection, whisk_get)
    got, warm_s = seconds(collection, whisk_get)
    want, threads_s = seconds(collection, "threads")
    ok = np.allclose(got, want) if isinstance(got, (float, np.ndarray, np.floating)) else got == want
    print(f"{label:<46} whisk {first_s:5.2f} s first, {warm_s:5.2f} s warm   "
          f"threads {threads_s:5.2f} s   match={ok}")
    return got


def main() -> None:
    # Warm-up: the first job starts the local server and deploys the worker action.
    start = time.perf_counter()
    dask.compute(dask.delayed(sum)([1, 2]), scheduler=whisk_get)
    print(f"{'start-up (server, action deploy, cold start)':<46} {time.perf_counter() - start:6.2f} s")

    x = da.random.RandomState(42).random((4000, 4000), chunks=(1000, 1000))
    value = timed("dask.array: (x + x.T).mean(axis=0).sum()", (x + x.T).mean(axis=0).sum())
    print(f"    result = {value:.6f}")

    words = ["serverless", "dask", "openwhisk", "swift", "array", "bag", "graph", "task"]
    lines = db.from_sequence(range(20_000), npartitions=16).map(
        lambda i: " ".join(words[(i * k) % len(words)] for k in range(1, 6))
    )
    counts = lines.str.split().flatten().frequencies(sort=True)
    top = timed("dask.bag: word frequencies over 20,000 lines", counts.topk(3, key=lambda kv: kv[1]))
    print(f"    top words = {top}")


if __name__ == "__main__":
    main()
