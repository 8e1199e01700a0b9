"""A job's activations drawn in time: what ran where, how long each phase took, how many at once.

One row per activation slot (an attempt takes the first row free when it starts), each attempt a
bar from its queue wait to its end, coloured by phase (wait, init, fetch, decode, compute,
store); cold starts carry a black edge, retries and backups a red one, and the concurrency
over time is drawn beneath. Needs matplotlib (``pip install 'dask-whisk[plot]'``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .diagnostics import PHASES, concurrency

if TYPE_CHECKING:
    from .diagnostics import JobReport

COLOURS = {"wait": "#d9d9d9", "init": "#9467bd", "fetch": "#1f77b4", "decode": "#17becf",
           "compute": "#2ca02c", "store": "#ff7f0e", "other": "#bcbd22"}


def slot_rows(attempts: list[dict[str, Any]]) -> list[int]:
    """The row of each attempt (by position in ``attempts``): the lowest free at its start."""
    order = sorted((i for i, a in enumerate(attempts) if a["start"] is not None),
                   key=lambda i: attempts[i]["start"] - attempts[i]["wait"])
    rows = [-1] * len(attempts)
    free_at: list[float] = []  # row -> when its last attempt ended
    for i in order:
        begin = attempts[i]["start"] - attempts[i]["wait"]
        row = next((r for r, t in enumerate(free_at) if t <= begin), len(free_at))
        if row == len(free_at):
            free_at.append(0.0)
        free_at[row] = attempts[i]["end"]
        rows[i] = row
    return rows


def segments(attempt: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(phase, start, width) of one attempt's bar; time the worker did not account for is 'other'."""
    at = attempt["start"] - attempt["wait"]
    parts = []
    for phase in PHASES:
        if attempt[phase] > 0:
            parts.append((phase, at, attempt[phase]))
            at += attempt[phase]
    if attempt["end"] > at:
        parts.append(("other", at, attempt["end"] - at))
    return parts


def plot_timeline(report: JobReport) -> Any:
    """The figure described in the module docstring (a matplotlib ``Figure``)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    attempts = report.attempts
    rows = slot_rows(attempts)
    figure = Figure(figsize=(11, 5.5), layout="constrained")
    bars, counts = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    for attempt, row in zip(attempts, rows):
        if row < 0:
            continue  # no record came back: nothing to place in time
        edge = "red" if attempt["attempt"] > 1 or attempt["backup"] else (
            "black" if attempt["init"] > 0 else None)
        for phase, start, width in segments(attempt):
            bars.barh(row, width, left=start, height=0.8, color=COLOURS[phase],
                      edgecolor=edge, linewidth=1.0 if edge else 0)
    bars.set_ylabel("activation slot")
    bars.set_title(f"{report.activations} activations, {report.cold_starts} cold, "
                   f"{report.retries} retried, {report.backups} backups; wall {report.wall_s:.2f} s")
    handles = [Patch(color=COLOURS[p], label=p) for p in (*PHASES, "other")]
    handles += [Patch(facecolor="white", edgecolor="black", label="cold start"),
                Patch(facecolor="white", edgecolor="red", label="retry / backup")]
    figure.legend(handles=handles, loc="outside lower center", fontsize="small", ncols=len(handles))
    times, running = concurrency(attempts)
    counts.step(times, running, where="post")
    counts.set_ylabel("running")
    counts.set_xlabel("seconds since the job started")
    return figure
