"""What a job cost: counts, bytes and seconds gathered while it ran, kept for the last job.

``dask_whisk.last_report()`` after a ``compute`` answers how many activations the graph took,
how many bytes crossed the store or rode inline, and where the time went. The figures come from
the plan and from the stats every activation returns in its result envelope.
"""
from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class JobReport:
    """One ``whisk_get`` call, summed."""

    tasks: int = 0
    units: int = 0
    critical_path_units: int = 0
    #: successful activations, and attempts run again after a platform failure
    activations: int = 0
    retries: int = 0
    #: backup copies launched for stragglers (the first copy to finish wins)
    backups: int = 0
    #: the most attempts (retries and backups) any one unit took
    max_attempts: int = 0
    cold_starts: int = 0
    #: bytes written to the store (client uploads and unit outputs) and carried inline in messages
    bytes_stored: int = 0
    bytes_inline: int = 0
    #: wall seconds of the whole call, of planning and serialising before the first invoke,
    #: and the sum of the activations' own durations
    wall_s: float = 0.0
    plan_s: float = 0.0
    activation_s: float = 0.0
    #: per phase inside the activations, summed over units: decode, compute, store
    phases_s: dict[str, float] = field(default_factory=dict)
    peak_rss_bytes: int = 0
    failed: bool = False

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON types."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobReport:
        """The report saved by :meth:`to_json`."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def summary(self) -> str:
        """A plain-text table of the figures."""
        rows = [
            ("tasks / units / critical path", f"{self.tasks} / {self.units} / {self.critical_path_units}"),
            ("activations (retries, backups, cold starts)",
             f"{self.activations} ({self.retries}, {self.backups}, {self.cold_starts})"),
            ("most attempts of one unit", f"{self.max_attempts}"),
            ("bytes stored / inline", f"{self.bytes_stored:,} / {self.bytes_inline:,}"),
            ("wall / planning / activations (s)", f"{self.wall_s:.3f} / {self.plan_s:.3f} / {self.activation_s:.3f}"),
            ("decode / compute / store (s)", " / ".join(f"{self.phases_s.get(p, 0.0):.3f}"
                                                        for p in ("decode_s", "compute_s", "store_s"))),
            ("peak activation memory (MB)", f"{self.peak_rss_bytes / 2**20:.0f}"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)

    def add_activation(self, stats: Mapping[str, Any], units: list[Mapping[str, Any]]) -> None:
        """Count one successful activation from its result envelope's stats."""
        self.activations += 1
        self.cold_starts += bool(stats.get("cold"))
        self.activation_s += float(stats.get("duration_s", 0.0))
        self.peak_rss_bytes = max(self.peak_rss_bytes, int(stats.get("peak_rss_bytes", 0)))
        for unit in units:
            for phase in ("decode_s", "compute_s", "store_s"):
                self.phases_s[phase] = self.phases_s.get(phase, 0.0) + float(unit.get(phase, 0.0))

    def add_ref(self, ref: Mapping[str, Any]) -> None:
        """Count the bytes of one placed value (a stored or inline descriptor)."""
        if "stored" in ref:
            self.bytes_stored += int(ref["nbytes"])
        else:
            self.bytes_inline += len(ref["inline"]) * 3 // 4


_last: list[JobReport] = []
_lock = threading.Lock()


def record(report: JobReport) -> None:
    """Keep ``report`` as the last job's."""
    with _lock:
        _last[:] = [report]


def last_report() -> JobReport | None:
    """The report of the last job this process ran with ``whisk_get`` (None before any)."""
    with _lock:
        return _last[0] if _last else None
