"""dask-whisk against Lithops (its localhost backend) on the same map and map-reduce work, in one run.

    .venv/bin/python benchmarks/peers.py [--repeat 3] [--sizes 100 1000] [--v2-sizes 100] [--only NAME ...]

Lithops is not a dependency of dask-whisk: it lives in its own virtualenv so that its dependencies
cannot disturb the project's. Create it once with

    python3 -m venv .cache/lithops-venv && .cache/lithops-venv/bin/pip install lithops numpy

This script then runs the Lithops half as a subprocess with that interpreter (``--lithops-python``)
and collects its timings as JSON. Lithops runs with no configuration file, no cloud: backend and
storage ``localhost``, runtime = that interpreter, ``data_limit`` off (Lithops otherwise refuses
a job whose arguments exceed 4 MiB, and the map-reduce ships a 100 MiB array). Two Lithops localhost flavours are measured:
``v1`` (one long-lived worker pool; the fast one) and ``v2`` (Lithops' default: a fresh interpreter
per call, about 0.3 s a task here, so by default only at N <= 100; ``--v2-sizes`` changes that).

Work, identical on every system (the same functions, in this file):
  * ``square/N``: map of N tiny tasks: x -> x * x on ints;
  * ``numpy/N``: map of N numpy tasks: ~50 ms of elementwise numpy on a seeded 1M-element vector each;
  * ``mapreduce``: the sum of squares of a client-side numpy array in 100 chunks of 1 MiB (100 MiB); Lithops
    ``map_reduce`` against dask.array ``(x ** 2).sum()`` (Dask's tree reduction) and against a
    dask.delayed map + single sum (Lithops' exact shape), all on whisk_get;
  * ``row1`` and ``row6``: rows 1a and 6 of ``schedulers.py``, for issue 8's target against Lithops,
    "at least 10x faster than its localhost map on rows 1 and 6". The Dask side is that module's
    own graph: the raw graph of 10,000 ``inc(i)`` and a tree of sums; Monte Carlo pi from
    ``da.random.RandomState(4).random((2, 10_000_000), chunks=(2, 10_000))``, 1,000 chunks. The Lithops
    side is ``map_reduce``, Lithops' own form: of ``inc`` over the 10,000 ints, summed in the reduce
    call; of the inside-circle count of each chunk, drawn from the very seeds Dask gives that chunk
    (``pi_seeds``), into the estimate. A map and the same reduce on the client was no faster: side
    by side on Lithops v1 (2026-12-03, two sittings of two rounds, both about 2x slower than this
    script throughout) the best runs were 142.9 s for map_reduce and 143.8 s for map + client sum
    on row 1a, 18.1 and 20.0 s on row 6 (22.4 and 21.2 s in the other sitting). Both systems
    compute the same numbers. Only Lithops v1 runs them.
Dask's ``threads`` and ``processes`` schedulers run the same Dask graphs as a reference. whisk_get
runs on the embedded default (its own local OpenWhisk-compatible server) unless an OpenWhisk is
configured. Each system gets one warm-up job before anything is timed; every figure is the best
of ``--repeat`` wall-clock runs, measured around submit-to-results (``dask.compute`` /
``map`` + ``get_result``). Results are checked equal across systems. ``--only`` runs the
workloads whose names contain one of its words (``--only row`` runs rows 1a and 6 alone).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # schedulers imports Dask, absent from the Lithops interpreter
    from schedulers import Work

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LITHOPS_PYTHON = ROOT / ".cache" / "lithops-venv" / "bin" / "python"
CHUNKS = 100
CHUNK_ELEMENTS = 131_072  # 1 MiB of float64 per chunk
ROW1_TASKS = 10_000
PI_CHUNKS, PI_CHUNK_POINTS = 1_000, 10_000  # schedulers.monte_carlo_pi: (2, 10_000_000) in (2, 10_000)
ROWS = ["row1", "row6"]


def square(x: int) -> int:
    """The tiny task: pure per-call overhead."""
    return x * x


def numpy_work(seed: int) -> float:
    """About 50 ms of single-threaded elementwise numpy (no BLAS, so no thread oversubscription)."""
    a = np.random.default_rng(seed).random(1_000_000)
    for _ in range(5):
        a = np.sqrt(np.sin(a) ** 2 + 1.0)
    return float(a.sum())


def sum_of_squares(chunk: np.ndarray) -> float:
    """The map side of the map-reduce."""
    return float(np.dot(chunk, chunk))


def total(parts: list[float]) -> float:
    """The reduce side of the map-reduce."""
    return float(sum(parts))


def the_array() -> np.ndarray:
    """The client-side array the map-reduce reads, the same in both interpreters."""
    return np.random.default_rng(7).random(CHUNKS * CHUNK_ELEMENTS)


def inc(x: int) -> int:
    """Row 1a's task: schedulers.inc (that module needs Dask, which the Lithops interpreter lacks)."""
    return x + 1


def pi_seeds() -> list[np.ndarray]:
    """The seed of each of row 6's chunks, as ``da.random.RandomState(4)`` draws them
    (``dask.utils.random_state_data``: 624 uint32 a chunk, from one RandomState's bytes)."""
    data = np.random.RandomState(4).bytes(624 * 4 * PI_CHUNKS)
    return list(np.frombuffer(data, dtype="<u4").reshape(PI_CHUNKS, 624))


def inside_circle(seed: np.ndarray) -> int:
    """Row 6's chunk: the points of a (2, 10,000) uniform draw inside the unit circle, drawn as Dask does."""
    xy = np.random.RandomState(seed).random_sample((2, PI_CHUNK_POINTS))
    return int(((xy**2).sum(axis=0) < 1).sum())


def pi_estimate(counts: list[int]) -> float:
    """Row 6's reduce: 4 x the share of points inside the circle."""
    return 4 * (sum(counts) / (PI_CHUNKS * PI_CHUNK_POINTS))


MAPS: dict[str, Callable] = {"square": square, "numpy": numpy_work}


def workloads(sizes: list[int]) -> list[str]:
    """The names of the map workloads of these sizes, and the map-reduce's if 100 is among them."""
    return [f"{kind}/{n}" for n in sizes for kind in MAPS] + (["mapreduce"] if CHUNKS in sizes else [])


# ----------------------------------------------------------------------------------- Lithops half
def lithops_half(version: int, names: list[str], repeat: int, out: Path) -> None:
    """Runs in the Lithops virtualenv: time the named workloads; write {name: {seconds, value}} to out as JSON."""
    import lithops

    config = {
        # data_limit False lifts Lithops' default 4 MiB cap on a job's arguments (the array is 100 MiB)
        "lithops": {"backend": "localhost", "storage": "localhost", "log_level": "WARNING", "data_limit": False},
        "localhost": {"version": version, "runtime": sys.executable},
    }
    ex = lithops.FunctionExecutor(config=config, log_level="WARNING")

    def run_map(fn: Callable, n: int) -> Callable[[], object]:
        return lambda: ex.get_result(ex.map(fn, range(n)))

    def run_map_reduce(fn: Callable, iterdata: Sequence, reduce: Callable) -> Callable[[], object]:
        return lambda: ex.get_result(ex.map_reduce(fn, iterdata, reduce))

    jobs: dict[str, Callable[[], object]] = {}
    for name in names:
        kind, _, n = name.partition("/")
        if kind in MAPS:
            jobs[name] = run_map(MAPS[kind], int(n))
    if "mapreduce" in names:
        chunks = [{"chunk": c} for c in np.split(the_array(), CHUNKS)]
        jobs["mapreduce"] = run_map_reduce(sum_of_squares, chunks, total)
    if "row1" in names:
        jobs["row1"] = run_map_reduce(inc, range(ROW1_TASKS), total)
    if "row6" in names:
        jobs["row6"] = run_map_reduce(inside_circle, [{"seed": s} for s in pi_seeds()], pi_estimate)
    run_map(square, 20)()  # warm-up: runtime metadata, worker pool, storage
    results: dict[str, dict] = {}
    for name, job in jobs.items():
        seconds, value = best_of(repeat, job)
        results[name] = {"seconds": seconds, "value": summary(value)}
    ex.clean()
    out.write_text(json.dumps(results))


def run_lithops(python: Path, version: int, names: list[str], repeat: int) -> dict[str, dict]:
    """Run lithops_half in the Lithops interpreter as a subprocess; its timings, by workload."""
    if not names:
        return {}
    if not python.exists():
        raise SystemExit(f"no Lithops interpreter at {python}: create it as this module's docstring says, "
                         "or pass --lithops-python")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "lithops.json"
        cmd = [str(python), __file__, "--lithops-half", str(version), "--repeat", str(repeat),
               "--names", *names, "--out", str(out)]
        done = subprocess.run(cmd, check=False, cwd=tmp, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"Lithops localhost v{version} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        return json.loads(out.read_text())


# -------------------------------------------------------------------------------------- Dask half
def dask_jobs(names: list[str]) -> dict[str, Work]:
    """The named workloads as Dask work (the map-reduce twice: dask.array and delayed)."""
    import cloudpickle
    import dask
    import dask.array as da
    import schedulers  # this script's directory is on sys.path
    from schedulers import Work, independent_raw, monte_carlo_pi

    cloudpickle.register_pickle_by_value(schedulers)  # by value, as when it runs as __main__: no worker has it

    jobs: dict[str, Work] = {}
    for name in names:
        kind, _, n = name.partition("/")
        if kind in MAPS:
            jobs[name] = Work(collection=[dask.delayed(MAPS[kind], pure=True)(i) for i in range(int(n))])
    if "mapreduce" in names:
        array = the_array()
        jobs["mapreduce"] = Work(collection=(da.from_array(array, chunks=CHUNK_ELEMENTS) ** 2).sum())
        parts = [dask.delayed(sum_of_squares, pure=True)(c) for c in np.split(array, CHUNKS)]
        jobs["mapreduce-delayed"] = Work(collection=dask.delayed(total, pure=True)(parts))
    if "row1" in names:
        jobs["row1"] = independent_raw(ROW1_TASKS)
    if "row6" in names:
        jobs["row6"] = monte_carlo_pi()
    return jobs


def run_dask(names: list[str], repeat: int) -> tuple[dict[str, dict[str, dict]], float]:
    """Time each job on threads, processes and whisk; also the whisk start-up (warm-up) time."""
    import dask

    from dask_whisk import whisk_get

    jobs = dask_jobs(names)
    schedulers = {"threads": dask.threaded.get, "processes": dask.multiprocessing.get, "whisk": whisk_get}
    start = time.perf_counter()
    dask.compute([dask.delayed(square, pure=True)(i) for i in range(20)], scheduler=whisk_get)
    whisk_startup = time.perf_counter() - start
    dask.compute(dask.delayed(square)(2), scheduler="processes")
    results: dict[str, dict[str, dict]] = {}
    for name, job in jobs.items():
        results[name] = {label: time_dask(job, scheduler, repeat) for label, scheduler in schedulers.items()}
        print(f"  dask  {name:<18}" + "".join(f"{s}={r['seconds']:.2f}s " for s, r in results[name].items()),
              flush=True)
    return results, whisk_startup


def time_dask(job: Work, get: Callable, repeat: int) -> dict:
    """Best-of seconds and result of job on one scheduler, and the distinct workers per run
    (under whisk_get, posttask's worker id is the activation id: these are real activations)."""
    from dask.callbacks import Callback

    workers: set[object] = set()
    with Callback(posttask=lambda key, result, dsk, state, worker_id: workers.add(worker_id)):
        seconds, value = best_of(repeat, lambda: job.run(get))
    return {"seconds": seconds, "value": summary(value), "activations": len(workers) // repeat}


# ----------------------------------------------------------------------------------------- common
def best_of(repeat: int, job: Callable[[], object]) -> tuple[float, object]:
    """Best wall-clock seconds of repeat runs of job, and its (last) result."""
    times, value = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        value = job()
        times.append(time.perf_counter() - start)
    return min(times), value


def summary(value: object) -> float:
    """One number per result, to check every system computed the same thing."""
    if isinstance(value, (list, tuple)):
        return float(sum(float(v) for v in value))
    return float(value)


def report(dask_results: dict, lithops: dict[int, dict], whisk_startup: float) -> None:
    """The table: wall seconds, ms per task, whisk / Lithops ratios; and the equality check."""
    columns = ["threads", "processes", "whisk", "lithops-v1", "lithops-v2"]
    print(f"\nwhisk start-up (embedded server, deploy, first cold start): {whisk_startup:.2f} s")
    print("wall seconds, best of repeat; (ms per task = wall / N); ratio > 1 means whisk is slower\n")
    header = (f"{'workload':<26}{'N':>6}" + "".join(f"{c:>12}" for c in columns)
              + f"{'whisk ms/t':>12}{'v1 ms/t':>10}{'whisk/v1':>10}{'whisk/v2':>10}{'activations':>13}")
    print(header)
    print("-" * len(header))
    labels = {"square": "map x*x", "numpy": "map numpy ~50 ms", "mapreduce": "map-reduce dask.array",
              "mapreduce-delayed": "map-reduce delayed", "row1": "row 1a: 10k inc + sums",
              "row6": "row 6: Monte Carlo pi"}
    tasks = {"mapreduce": CHUNKS, "mapreduce-delayed": CHUNKS, "row1": ROW1_TASKS, "row6": PI_CHUNKS}
    mismatches = []
    for name, by_scheduler in dask_results.items():
        kind, _, n_text = name.partition("/")
        n = int(n_text) if n_text else tasks[kind]
        lithops_name = "mapreduce" if kind.startswith("mapreduce") else name
        row = {s: r["seconds"] for s, r in by_scheduler.items()}
        reference = by_scheduler["threads"]["value"]
        for version, results in lithops.items():
            if lithops_name in results:
                row[f"lithops-v{version}"] = results[lithops_name]["seconds"]
                if not np.isclose(results[lithops_name]["value"], reference, rtol=1e-9):
                    mismatches.append(f"{name} lithops-v{version}")
        mismatches += [f"{name} {s}" for s, r in by_scheduler.items()
                       if not np.isclose(r["value"], reference, rtol=1e-9)]

        cells = "".join(f"{row[c]:>12.3f}" if c in row else f"{'-':>12}" for c in columns)
        v1_ms = f"{row['lithops-v1'] / n * 1e3:>10.1f}" if "lithops-v1" in row else f"{'-':>10}"
        ratios = "".join(f"{row['whisk'] / row[c]:>9.2f}x" if c in row else f"{'-':>10}"
                         for c in ("lithops-v1", "lithops-v2"))
        print(f"{labels[kind]:<26}{n:>6}{cells}{row['whisk'] / n * 1e3:>12.1f}{v1_ms}{ratios}"
              + f"{by_scheduler['whisk']['activations']:>13}")
    print("\nthreads/processes: Dask's own schedulers on the same graphs (2 cores here).")
    print("lithops-v1/v2: Lithops localhost backend versions; '-' = not run (see --v2-sizes).")
    print("activations: whisk activations per run (tasks fused into units, ready units batched together).")
    print("map-reduce: Lithops map_reduce (100 maps + 1 reduce) is the peer of both Dask rows.")
    print("rows 1a, 6: schedulers.py's graphs against Lithops map_reduce (N maps + 1 reduce), "
          "N = the Dask graph's leaf tasks; issue 8's target is whisk/v1 <= 0.10x.")
    if mismatches:
        raise SystemExit(f"results differ from the threads scheduler's: {', '.join(mismatches)}")
    print("all systems computed the same results.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per figure (best is reported)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000],
                        help="map sizes N; the map-reduce runs when 100 is among them")
    parser.add_argument("--v2-sizes", type=int, nargs="*", default=[100],
                        help="sizes also run on Lithops localhost v2 (about 0.3 s per task)")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="run only the workloads whose names contain one of these "
                             "(square/100, numpy/1000, mapreduce, row1, row6, ...)")
    parser.add_argument("--lithops-python", type=Path, default=DEFAULT_LITHOPS_PYTHON)
    parser.add_argument("--lithops-half", type=int, choices=[1, 2], help=argparse.SUPPRESS)
    parser.add_argument("--names", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lithops_half:
        lithops_half(args.lithops_half, args.names, args.repeat, args.out)
        return
    wanted = lambda name: not args.only or any(s in name for s in args.only)  # noqa: E731
    v1 = [name for name in workloads(args.sizes) + ROWS if wanted(name)]
    v2 = [name for name in workloads([n for n in args.v2_sizes if n in args.sizes]) if wanted(name)]
    start = time.perf_counter()
    lithops = {}
    for version, names in ((1, v1), (2, v2)):
        lithops[version] = run_lithops(args.lithops_python, version, names, args.repeat)
        print(f"  lithops v{version} "
              + " ".join(f"{k}={v['seconds']:.2f}s" for k, v in lithops[version].items()), flush=True)
    dask_results, whisk_startup = run_dask(v1, args.repeat)
    report(dask_results, lithops, whisk_startup)
    print(f"\n(whole run {time.perf_counter() - start:.0f} s; Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
