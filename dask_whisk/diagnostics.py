"""Where a job's time and money went: counts, bytes, an entry per activation attempt, the cost.

``dask_whisk.last_report()`` after a ``compute`` (or ``with dask_whisk.report() as r:`` around
several) answers how many activations the graph took, how long each waited, started cold,
fetched, computed and stored, what the store carried, and what the job would be billed on a
pay-per-use platform next to an always-on VM of the same peak capacity. Counts come from the
plan; times from the activation records (OpenWhisk's ``start``, ``end``, ``waitTime``,
``initTime``, ``limits``) and the phases each worker measured. ``dask-whisk report FILE.json``
prints a saved report and draws its timeline (see :mod:`dask_whisk.timeline`).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import html
import json
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.config

#: phases of an activation in the order they happen, as the timeline draws them
PHASES = ("wait", "init", "fetch", "decode", "compute", "store")


@dataclass
class JobReport:
    """One ``whisk_get`` call (or several, combined by :func:`report`), summed."""

    tasks: int = 0
    units: int = 0
    #: chunks units made again rather than read from the store (cheap generators: see ``fuse``)
    remade: int = 0
    #: the longest chain of dependent units, counted in units and in seconds (each unit weighted
    #: by the duration of the activation whose outputs were taken; a batch's units share one)
    critical_path_units: int = 0
    critical_path_s: float = 0.0
    #: successful activations, and attempts run again after a platform failure
    activations: int = 0
    retries: int = 0
    #: backup copies launched for stragglers (the first copy to finish wins)
    backups: int = 0
    #: the most attempts (retries and backups) any one unit took
    max_attempts: int = 0
    #: bytes written to the store (client uploads and unit outputs) and carried inline in messages
    bytes_stored: int = 0
    bytes_inline: int = 0
    #: wall seconds of the whole call, and of planning and serialising before the first invoke
    wall_s: float = 0.0
    plan_s: float = 0.0
    #: the action's memory limit (MB), which the platform bills by
    memory_mb: int = 0
    #: prices the cost was estimated at (see ``whisk.cost`` in the dask config)
    price_gb_second: float = 0.0
    price_million_requests: float = 0.0
    price_vm_gb_hour: float = 0.0
    #: when the job started (epoch seconds, the client's clock); attempts' times are relative to it
    started_at: float = 0.0
    #: one entry per activation attempt: see :meth:`add_attempt`
    attempts: list[dict[str, Any]] = field(default_factory=list)
    failed: bool = False

    # --- gathering (the job calls these) -----------------------------------------------------

    def add_attempt(self, record: Mapping[str, Any] | None, *, submitted: float, units: int,
                    kind: str, attempt: int, backup: bool, outcome: str,
                    stats: Mapping[str, Any] | None = None) -> None:
        """Log one activation attempt: ``record`` is its OpenWhisk activation record (None when
        none came back), ``submitted`` the epoch second it was invoked, ``outcome`` one of
        ``success``, ``superseded`` (a backup's result came first), ``retried``, ``failed``,
        ``lost`` (no record) or ``cancelled`` (another copy won while it ran)."""
        record = record or {}
        notes = {a.get("key"): a.get("value") for a in record.get("annotations") or []}
        stats = stats or {}
        start, end = record.get("start"), record.get("end")
        units_stats = stats.get("units") or []
        entry: dict[str, Any] = {
            "id": record.get("activationId"), "kind": kind, "units": units, "attempt": attempt,
            "backup": backup, "outcome": outcome,
            "submitted": submitted - self.started_at,
            # the client's wait from invoke to outcome: all that is known of a cancelled copy
            "elapsed": time.time() - submitted,
            "start": None if start is None else start / 1000 - self.started_at,
            "end": None if end is None else end / 1000 - self.started_at,
            "duration": (record.get("duration") or 0) / 1000,
            "memory_mb": int((notes.get("limits") or {}).get("memory") or self.memory_mb),
            "peak_rss_bytes": int(stats.get("peak_rss_bytes") or 0),
            "wait": (notes.get("waitTime") or 0) / 1000,
            "init": (notes.get("initTime") or 0) / 1000,
            "fetch": float(stats.get("fetch_s") or 0.0),
            "runtime": float(stats.get("runtime_s") or 0.0),  # fetching and unpacking a runtime
            # stored inputs the warm container had read already (not read from the store again)
            "reused_bytes": int(stats.get("reused_bytes") or 0),
        }
        for phase in ("decode", "compute", "store"):
            entry[phase] = sum(float(u.get(f"{phase}_s", 0.0)) for u in units_stats)
        self.attempts.append(entry)
        if outcome in ("success", "superseded"):
            self.activations += 1

    def add_ref(self, ref: Mapping[str, Any]) -> None:
        """Count the bytes of one placed value (a stored or inline descriptor)."""
        if "stored" in ref:
            self.bytes_stored += int(ref["nbytes"])
        else:
            self.bytes_inline += len(ref["inline"]) * 3 // 4

    # --- what the records say -----------------------------------------------------------------

    @property
    def requests(self) -> int:
        """Invocations the platform accepted (each is billed as a request)."""
        return sum(1 for a in self.attempts if a["id"] is not None)

    @property
    def cold_starts(self) -> int:
        """Activations whose record has an ``initTime``: a new container ran the action's init."""
        return sum(1 for a in self.attempts if a["init"] > 0)

    @property
    def bytes_reused(self) -> int:
        """Stored bytes activations took from what their warm container had read before."""
        return sum(a.get("reused_bytes", 0) for a in self.attempts)

    @property
    def activation_s(self) -> float:
        """Seconds the activations ran, summed (their records' ``duration``)."""
        return sum(a["duration"] for a in self.attempts)

    @property
    def gb_seconds(self) -> float:
        """What the platform bills: each activation's duration at its memory limit."""
        return sum(a["duration"] * a["memory_mb"] / 1024 for a in self.attempts)

    @property
    def cancelled(self) -> tuple[int, float]:
        """Copies the client stopped waiting for (another copy won, or the job failed), and the
        seconds they had run by then. The platform runs and bills them on (a hung one until
        the action's time limit): their time is not in the GB-seconds or the cost."""
        copies = [a for a in self.attempts if a["outcome"] == "cancelled"]
        return len(copies), sum(a.get("elapsed", 0.0) for a in copies)

    @property
    def peak_rss_bytes(self) -> int:
        """The most memory one activation's process reached."""
        return max((a["peak_rss_bytes"] for a in self.attempts), default=0)

    @property
    def peak_concurrency(self) -> int:
        """The most activations running at one instant."""
        return max(concurrency(self.attempts)[1])

    @property
    def phases_s(self) -> dict[str, float]:
        """Seconds per phase, summed over activations, with the client's planning first."""
        return {"plan": self.plan_s, **{p: sum(a[p] for a in self.attempts) for p in PHASES}}

    @property
    def cost(self) -> float:
        """Estimated charge on a pay-per-use platform: GB-seconds and requests."""
        return self.gb_seconds * self.price_gb_second + self.requests * self.price_million_requests / 1e6

    @property
    def vm_cost(self) -> float:
        """The same job on an always-on VM with the memory of its peak concurrency, for its wall time."""
        gb = self.peak_concurrency * self.memory_mb / 1024
        return gb * self.price_vm_gb_hour * self.wall_s / 3600

    # --- saving and showing -------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON types, with the figures derived from its attempts under
        ``figures`` for whoever reads the file (:meth:`from_json` derives them again)."""
        figures = {name: getattr(self, name) for name in (
            "requests", "cold_starts", "bytes_reused", "activation_s", "gb_seconds", "peak_rss_bytes",
            "peak_concurrency", "phases_s", "cost", "vm_cost")}
        return {**dataclasses.asdict(self), "figures": figures}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobReport:
        """The report saved by :meth:`to_json`."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def rows(self) -> list[tuple[str, str]]:
        """The figures as (label, value) pairs, for :meth:`summary` and the notebook table."""
        phases = self.phases_s
        return [
            ("tasks / units (chunks made again)", f"{self.tasks} / {self.units} ({self.remade})"),
            ("critical path (units / s)", f"{self.critical_path_units} / {self.critical_path_s:.3f}"),
            ("activations (retries, backups, cold starts)",
             f"{self.activations} ({self.retries}, {self.backups}, {self.cold_starts})"),
            ("most attempts of one unit", f"{self.max_attempts}"),
            ("peak concurrency", f"{self.peak_concurrency}"),
            ("bytes stored / inline / reused in warm containers",
             f"{self.bytes_stored:,} / {self.bytes_inline:,} / {self.bytes_reused:,}"),
            ("wall / activations summed (s)", f"{self.wall_s:.3f} / {self.activation_s:.3f}"),
            ("plan / wait / init (s)", " / ".join(f"{phases[p]:.3f}" for p in ("plan", "wait", "init"))),
            ("fetch / decode / compute / store (s)",
             " / ".join(f"{phases[p]:.3f}" for p in ("fetch", "decode", "compute", "store"))),
            ("peak activation memory (MB)", f"{self.peak_rss_bytes / 2**20:.0f} of {self.memory_mb}"),
            ("GB-seconds / requests", f"{self.gb_seconds:.3f} / {self.requests}"),
            ("cancelled copies / had run (s), billed but not counted",
             "{} / {:.3f}".format(*self.cancelled)),
            ("estimated cost / on an always-on VM (USD)", f"{self.cost:.6f} / {self.vm_cost:.6f}"),
        ]

    def summary(self) -> str:
        """A plain-text table of the figures."""
        rows = self.rows()
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)

    def _repr_html_(self) -> str:
        cells = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                        for k, v in self.rows())
        return f"<table><caption>dask-whisk job</caption>{cells}</table>"

    def plot_timeline(self) -> Any:
        """A matplotlib figure: a row per activation slot, each attempt a bar split by phase,
        and the concurrency over time beneath (see :mod:`dask_whisk.timeline`)."""
        from .timeline import plot_timeline

        return plot_timeline(self)


def concurrency(attempts: list[dict[str, Any]]) -> tuple[list[float], list[int]]:
    """Step points (time, activations running from then on) of the attempts' run intervals;
    an end sorts before a start at the same instant."""
    edges = sorted(e for a in attempts if a["start"] is not None for e in ((a["start"], 1), (a["end"], -1)))
    times, counts, running = [0.0], [0], 0
    for t, step in edges:
        running += step
        times.append(t)
        counts.append(running)
    return times, counts


def new_report(**counts: Any) -> JobReport:
    """A report starting now, with the prices in the dask config (``whisk.cost.*``)."""
    return JobReport(started_at=time.time(),
                     price_gb_second=float(dask.config.get("whisk.cost.gb-second")),
                     price_million_requests=float(dask.config.get("whisk.cost.million-requests")),
                     price_vm_gb_hour=float(dask.config.get("whisk.cost.vm-gb-hour")), **counts)


def combine(reports: list[JobReport]) -> JobReport:
    """Several jobs' reports as one: counts and times summed (the critical path and the most
    attempts of one unit: the largest job's), attempts on the first one's clock."""
    if len(reports) == 1:
        return reports[0]
    first = reports[0]
    total = dataclasses.replace(first, attempts=[])
    for name in ("tasks", "units", "remade", "activations", "retries", "backups", "bytes_stored",
                 "bytes_inline", "wall_s", "plan_s"):
        setattr(total, name, sum(getattr(r, name) for r in reports))
    total.critical_path_units = max(r.critical_path_units for r in reports)
    total.critical_path_s = max(r.critical_path_s for r in reports)
    total.max_attempts = max(r.max_attempts for r in reports)
    total.memory_mb = max(r.memory_mb for r in reports)
    total.failed = any(r.failed for r in reports)
    for r in reports:
        shift = r.started_at - first.started_at
        for a in r.attempts:
            total.attempts.append({**a, **{t: None if a[t] is None else a[t] + shift
                                           for t in ("submitted", "start", "end")}})
    return total


_last: list[JobReport] = []
_running: list[JobReport] = []
_collectors: list[list[JobReport]] = []
_lock = threading.Lock()


def begin(job_report: JobReport) -> None:
    """``job_report`` is the running job's (for live progress) until :func:`record` takes it."""
    with _lock:
        _running[:] = [job_report]


def running_report() -> JobReport | None:
    """The report of the job running now, filled in as its attempts end (None between jobs)."""
    with _lock:
        return _running[0] if _running else None


def record(job_report: JobReport) -> None:
    """Keep ``job_report`` as the last job's, and hand it to every open :func:`report` block."""
    with _lock:
        _last[:] = [job_report]
        if _running and _running[0] is job_report:
            _running.clear()
        for collected in _collectors:
            collected.append(job_report)


def last_report() -> JobReport | None:
    """The report of the last job this process ran with ``whisk_get`` (None before any)."""
    with _lock:
        return _last[0] if _last else None


@contextlib.contextmanager
def report() -> Iterator[JobReport]:
    """``with dask_whisk.report() as r: dask.compute(...)``: ``r`` then reports every job the
    block ran (combined, as one), whatever else ran before or after."""
    collected: list[JobReport] = []
    result = JobReport()  # empty inside the block, filled in at its end
    with _lock:
        _collectors.append(collected)
    try:
        yield result
    finally:
        with _lock:
            _collectors.remove(collected)
        if collected:
            combined = combine(collected)
            for f in dataclasses.fields(JobReport):
                setattr(result, f.name, getattr(combined, f.name))


# --- dask-whisk report FILE.json ---------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``dask-whisk report``."""
    parser.add_argument("file", type=Path, help="a report saved with json.dump(report.to_json(), f)")
    parser.add_argument("--png", type=Path, metavar="OUT.png", help="draw the timeline into this file")


def run(args: argparse.Namespace) -> int:
    """Print a saved report's summary and, with ``--png``, draw its timeline."""
    try:
        saved = JobReport.from_json(json.loads(args.file.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        print(f"dask-whisk report: cannot read a report from {args.file}: {exc}")
        return 2
    print(saved.summary())
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        figure = saved.plot_timeline()
        figure.savefig(args.png, dpi=120)
        print(f"timeline: {args.png}")
    return 0
