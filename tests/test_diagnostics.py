"""Job reports as a user reads them: figures that agree with the platform's own activation
records, JSON that round-trips, a timeline the CLI draws from a saved report, and a block
that reports several jobs as one."""
from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
import time

import dask
import dask.array as da
import numpy as np
import pytest

import dask_whisk
from dask_whisk import backend, whisk_get
from dask_whisk.diagnostics import JobReport, concurrency
from dask_whisk.timeline import segments, slot_rows

from _server_fixtures import shared_folder, whisk_on


def records(ids: list[str]) -> list[dict]:
    """The activation records the current backend's server keeps for ``ids``."""
    b = backend.get_backend()

    async def fetch():
        return [await b.client.get_activation(i) for i in ids]

    return b.io.run(fetch())


@pytest.fixture(scope="module")
def array_job():
    """A dask.array job on a fresh server (so its first activations start cold), its report,
    and the server's records of every attempt."""
    root = shared_folder()
    with whisk_on(), dask.config.set({"whisk.store": "local", "whisk.local.root": str(root)}):
        x = da.random.RandomState(0).random((2_000, 400), chunks=(250, 400))
        expected = (x.T @ x).sum().compute(scheduler="sync")
        assert np.isclose((x.T @ x).sum().compute(scheduler=whisk_get), expected)
        report = dask_whisk.last_report()
        yield report, records([a["id"] for a in report.attempts])


def test_the_report_agrees_with_the_activation_records(array_job):
    report, recs = array_job
    assert report.attempts and len(recs) == len(report.attempts)
    assert report.activations == sum(r["response"]["status"] == "success" for r in recs)
    annotations = [{a["key"]: a["value"] for a in r["annotations"]} for r in recs]
    cold = sum("initTime" in a for a in annotations)
    assert cold >= 1 and report.cold_starts == cold
    billed = sum(r["duration"] / 1000 * a["limits"]["memory"] / 1024 for r, a in zip(recs, annotations))
    assert report.gb_seconds == pytest.approx(billed)
    assert report.memory_mb == annotations[0]["limits"]["memory"]
    assert report.cost == pytest.approx(billed * report.price_gb_second
                                        + len(recs) * report.price_million_requests / 1e6)
    assert report.cost > 0 and report.vm_cost > 0
    phases = report.phases_s
    assert phases["plan"] > 0 and phases["compute"] > 0 and phases["fetch"] > 0
    for attempt, rec in zip(report.attempts, recs):  # times on the job's clock, in order
        # (records count whole milliseconds: a start may read up to 1 ms before its invoke)
        assert 0 <= attempt["submitted"] <= attempt["start"] + 0.001
        assert attempt["start"] <= attempt["end"] <= report.wall_s + 0.05
        assert attempt["end"] - attempt["start"] == pytest.approx(rec["duration"] / 1000, abs=1e-3)
    assert 1 <= report.peak_concurrency <= len(recs)
    assert 0 < report.peak_rss_bytes < report.memory_mb * 2**20


def test_a_saved_report_round_trips_and_the_cli_draws_its_timeline(array_job, tmp_path):
    report, _ = array_job
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(report.to_json()))
    again = JobReport.from_json(json.loads(saved.read_text()))
    assert again == report
    assert json.loads(saved.read_text())["figures"]["gb_seconds"] == pytest.approx(report.gb_seconds)
    png = tmp_path / "timeline.png"
    done = subprocess.run([sys.executable, "-m", "dask_whisk.cli", "report", str(saved), "--png", str(png)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "GB-seconds" in done.stdout and f"{report.activations} (" in done.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "<table>" in report._repr_html_() and "GB-seconds" in report._repr_html_()


def test_the_cli_says_what_is_wrong_with_a_file_that_is_not_a_report(tmp_path):
    bad = tmp_path / "not-a-report.json"
    bad.write_text("[1, 2")
    done = subprocess.run([sys.executable, "-m", "dask_whisk.cli", "report", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "cannot read a report from" in done.stdout
    assert "Traceback" not in done.stderr


def test_a_report_block_combines_the_jobs_it_ran(local_store_root):
    dask.delayed(int)(0).compute(scheduler=whisk_get)  # outside the block: not counted
    with dask_whisk.report() as r:
        assert r.tasks == 0
        dask.delayed(sum)([1, 2]).compute(scheduler=whisk_get)
        first = dask_whisk.last_report()
        da.ones(40, chunks=10).sum().compute(scheduler=whisk_get)
        second = dask_whisk.last_report()
    assert r.tasks == first.tasks + second.tasks and r.units == first.units + second.units
    assert r.activations == first.activations + second.activations
    assert len(r.attempts) == len(first.attempts) + len(second.attempts)
    assert r.wall_s == pytest.approx(first.wall_s + second.wall_s)
    later = r.attempts[len(first.attempts)]  # the second job's first attempt, on the first's clock
    assert later["start"] >= max(a["end"] for a in r.attempts[:len(first.attempts)]) - 0.01


def test_the_critical_path_in_seconds_follows_the_longest_chain_of_activations(local_store_root):
    """Three dependent naps and three independent ones feed a total: the critical path is the
    chain's activations and the total's, not the sum of all and not a count of units."""

    def nap(*parts):
        time.sleep(0.3)
        return sum(parts) + 1

    step = functools.partial(dask.delayed(nap, pure=False))
    chain = step(step(step(dask_key_name="link_a"), dask_key_name="link_b"), dask_key_name="link_c")
    wide = [step(dask_key_name=f"wide_{name}") for name in "xyz"]
    total = step(chain, *wide, dask_key_name="total")
    with dask.config.set({"whisk.fuse": False, "whisk.batch-max-units": 1}):  # a unit per activation
        assert total.compute(scheduler=whisk_get) == 7
    report = dask_whisk.last_report()
    took = {a["kind"]: a["duration"] for a in report.attempts if a["outcome"] == "success"}
    assert len(took) == report.units == 7
    paths = [["link_a", "link_b", "link_c", "total"], *(["wide_" + n, "total"] for n in "xyz")]
    longest = max(sum(took[k] for k in path) for path in paths)
    assert report.critical_path_units == 4
    assert report.critical_path_s == pytest.approx(longest)
    assert 4 * 0.3 <= report.critical_path_s < report.activation_s
    assert f"4 / {report.critical_path_s:.3f}" in report.summary()
    assert f"4 / {report.critical_path_s:.3f}" in report._repr_html_()
    saved = json.loads(json.dumps(report.to_json()))
    assert JobReport.from_json(saved).critical_path_s == report.critical_path_s


def attempt(start, end, wait=0.0, **phases):
    return {"start": start, "end": end, "wait": wait, **{p: phases.get(p, 0.0) for p in
                                                         ("init", "fetch", "decode", "compute", "store")}}


def test_timeline_rows_reuse_a_slot_once_it_is_free():
    attempts = [attempt(0, 2), attempt(1, 3), attempt(2.5, 4, wait=0.5), attempt(3.5, 5),
                {**attempt(0, 0), "start": None, "end": None}]
    assert slot_rows(attempts) == [0, 1, 0, 1, -1]
    times, running = concurrency(attempts)
    assert max(running) == 2 and running[-1] == 0 and times == sorted(times)


def test_a_bar_is_split_into_its_phases_and_the_rest():
    parts = segments(attempt(1.0, 2.0, wait=0.25, init=0.5, compute=0.25))
    assert parts == [("wait", 0.75, 0.25), ("init", 1.0, 0.5), ("compute", 1.5, 0.25), ("other", 1.75, 0.25)]


def test_dasks_profiler_records_each_task_with_its_activation(local_store_root):
    """Profiler's records: one per task, dispatch before completion, the activation as worker."""
    from dask.diagnostics import Profiler

    total = da.ones(100, chunks=10).sum()
    with Profiler() as prof:
        assert total.compute(scheduler=whisk_get) == 100
    ids = {a["id"] for a in dask_whisk.last_report().attempts}
    tasks = [r for r in prof.results]
    assert len(tasks) == dask_whisk.last_report().tasks
    assert all(r.start_time <= r.end_time for r in tasks)
    assert {r.worker_id for r in tasks} <= ids


def test_progress_outside_a_notebook_prints_the_final_counts(local_store_root, capsys):
    from dask_whisk.progress import NotebookProgress

    with NotebookProgress():
        assert da.ones(40, chunks=10).sum().compute(scheduler=whisk_get) == 40
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"dask-whisk: (\d+) of \1 tasks done, 0 in flight, 0 attempts retried, 0 failed", line), line


def test_progress_in_a_notebook_updates_one_output_in_place(tmp_path):
    """In a real Jupyter kernel: one display, updated while the job runs, ending at all done."""
    import nbformat
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell, new_notebook

    book = new_notebook(cells=[new_code_cell(
        "import time, dask\n"
        "from dask_whisk.progress import NotebookProgress\n"
        "with NotebookProgress(interval=0.05):\n"
        "    dask.compute(*[dask.delayed(time.sleep, pure=False)(0.3) for _ in range(12)], scheduler='whisk')\n")])
    NotebookClient(book, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    shown = [o for o in book.cells[0].outputs if o.output_type == "display_data"]
    assert len(shown) == 1, book.cells[0].outputs
    assert "<progress" in shown[0].data["text/html"]
    assert re.search(r"(\d+) of \1 tasks done, 0 in flight", shown[0].data["text/plain"]), shown[0].data
