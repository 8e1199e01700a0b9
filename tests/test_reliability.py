"""Jobs that finish correctly or fail clearly: hung activations, duplicate attempts, annotated
retries, units too big for the action, bad settings, cleanup errors and Ctrl-C."""
import signal
import subprocess
import sys
import textwrap
import time

import cloudpickle
import dask
import numpy as np
import pytest

import dask_whisk
from dask_whisk import whisk_get
from dask_whisk.job import Job, UnitTooLarge
from dask_whisk.server import FaultSettings

from _server_fixtures import whisk_on

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def naps(n: int, seconds: float):
    """``n`` independent tasks of ``seconds`` each and their sum: n activations when unfused."""
    nap = dask.delayed(lambda i: time.sleep(seconds) or i, pure=False)
    return dask.delayed(sum)([nap(i) for i in range(n)])


def timed_naps(n: int, seconds: float) -> float:
    started = time.perf_counter()
    assert naps(n, seconds).compute(scheduler=whisk_get) == n * (n - 1) // 2
    return time.perf_counter() - started


UNFUSED = {"whisk.fuse": False, "whisk.batch-max-units": 1}


@pytest.mark.parametrize("seed", [7, 11])
def test_hung_activations_cost_at_most_twice_the_fault_free_time(local_store_root, seed):
    """1% of activations hang until the action's time limit: backups finish the job anyway."""
    with dask.config.set(UNFUSED):
        with whisk_on():
            timed_naps(16, 0.3)  # every container warm, as in the faulty run below
            fault_free = timed_naps(300, 0.1)
        with whisk_on(faults=FaultSettings(hang_rate=0.01, seed=seed)):
            timed_naps(16, 0.3)
            with_hangs = timed_naps(300, 0.1)
            report = dask_whisk.last_report()
    assert report.backups >= 1, "no activation hung: the test proves nothing"
    assert with_hangs < 2 * fault_free, (with_hangs, fault_free, report.summary())
    assert not list(local_store_root.iterdir())


def test_every_reader_sees_the_same_attempt(local_store_root, shared_tmp_path):
    """The first attempt of a random value is slow, so a backup runs it again: both attempts
    complete, with different values, and all readers get the winner's."""
    marker = shared_tmp_path / "first-attempt"

    def draw():
        first = not marker.exists()
        marker.touch()
        if first:
            time.sleep(6)
        return float(np.random.default_rng().random())

    quick = [dask.delayed(lambda i: i, pure=False)(i) for i in range(12)]
    value = dask.delayed(draw, pure=False)()
    readers = [dask.delayed(lambda v, i: (v, i))(value, i) for i in range(6)]
    with dask.config.set(UNFUSED):
        with whisk_on():
            got = dask.compute(quick, readers, scheduler=whisk_get)[1]
            report = dask_whisk.last_report()
            outcomes = [a["outcome"] for a in report.attempts]  # as compute returned
            time.sleep(6)  # the slow first attempt ends, and finds its job gone
    assert report.backups >= 1
    assert "cancelled" in outcomes, outcomes  # the losing copy is in the report already
    copies, seconds = report.cancelled  # the slow first attempt ran a while before it lost
    assert copies >= 1 and seconds > 0.5, report.attempts
    assert "cancelled copies" in report.summary()
    assert len({v for v, _ in got}) == 1, got
    assert not list(local_store_root.iterdir()), "the late attempt wrote into a finished job"


def test_annotated_retries_rerun_a_failing_task(local_store_root, shared_tmp_path):
    counter = shared_tmp_path / "tries"

    def flaky():
        tries = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(tries))
        if tries < 3:
            raise ConnectionError(f"try {tries} fails")
        return tries

    with dask.annotate(retries=2):
        ok = dask.delayed(flaky, pure=False)()
    assert ok.compute(scheduler=whisk_get) == 3
    counter.unlink()
    with dask.annotate(retries=1):
        short = dask.delayed(flaky, pure=False)()
    with pytest.raises(ConnectionError, match="try 2 fails"):
        short.compute(scheduler=whisk_get)
    counter.unlink()
    with pytest.raises(ConnectionError, match="try 1 fails"):  # not annotated: never retried
        dask.delayed(flaky, pure=False)().compute(scheduler=whisk_get)


def test_a_unit_bigger_than_the_action_is_refused_before_invoking(local_store_root):
    from test_scheduler import activations_count

    big = np.ones(400 * 2**20 // 8)  # 400 MiB the client holds, for an action of 256 MB
    total = dask.delayed(np.sum)(big) + 1
    with dask.config.set({"whisk.action": "dask-whisk-small", "whisk.action-memory": 256}):
        dask.delayed(int)(1).compute(scheduler=whisk_get)  # deployed at 256 MB
        before = activations_count()
        with pytest.raises(UnitTooLarge, match=r"reads 400 MiB.*256 MB.*dask-whisk deploy --memory"):
            total.compute(scheduler=whisk_get)
        assert activations_count() == before
    assert not list(local_store_root.iterdir())


@pytest.mark.parametrize("value", [0, -1])
def test_no_activations_in_flight_is_a_clear_error(local_store_root, value):
    with dask.config.set({"whisk.max-in-flight": value}):
        with pytest.raises(ValueError, match="whisk.max-in-flight must be a positive"):
            dask.delayed(sum)([1, 2]).compute(scheduler=whisk_get)


def test_a_cleanup_error_never_replaces_the_outcome(local_store_root, monkeypatch, caplog):
    def broken_close(self):
        raise OSError("store unreachable")

    monkeypatch.setattr(Job, "close", broken_close)
    assert dask.delayed(sum)([1, 2]).compute(scheduler=whisk_get) == 3
    assert "dask-whisk clean" in caplog.text and "store unreachable" in caplog.text

    def fail():
        raise LookupError("user's own error")

    with pytest.raises(LookupError, match="user's own error") as info:
        dask.delayed(fail)().compute(scheduler=whisk_get)
    assert any("store unreachable" in note for note in info.value.__notes__)
    monkeypatch.undo()
    for leftover in local_store_root.iterdir():  # what `dask-whisk clean` would remove
        for path in leftover.iterdir():
            path.unlink()
        leftover.rmdir()


CTRL_C_JOB = textwrap.dedent("""
    import signal, sys, time, dask
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (not inherited)
    from dask_whisk import whisk_get
    dask.config.set({"whisk.local.root": sys.argv[1]})
    dask.delayed(sum)([1]).compute(scheduler=whisk_get)  # server up, action deployed
    print("ready", flush=True)
    nap = dask.delayed(lambda i: time.sleep(30) or i, pure=False)
    dask.delayed(sum)([nap(i) for i in range(40)]).compute(scheduler=whisk_get)
""")


def test_ctrl_c_stops_the_job_within_five_seconds_and_cleans_up(tmp_path, shared_tmp_path):
    root = shared_tmp_path / "store"
    job = subprocess.Popen([sys.executable, "-c", CTRL_C_JOB, str(root)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert job.stdout.readline().strip() == "ready", job.stderr.read()
        time.sleep(2)  # activations are running
        assert [p for p in root.iterdir()], "the job stored nothing: the test proves nothing"
        sent = time.monotonic()
        job.send_signal(signal.SIGINT)
        _, err = job.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        job.kill()
    assert job.returncode != 0 and "KeyboardInterrupt" in err
    assert "activations in flight" in err, err
    assert took < 5, f"Ctrl-C took {took:.1f} s"
    assert not list(root.iterdir()), "Ctrl-C left job objects behind"


def test_a_thousand_activations_pace_themselves_through_four_concurrent_invocations(local_store_root):
    """1,000 single-task activations against 4 concurrent invocations (the job could go much
    wider): the client paces itself, no invoke is refused, and every result arrives. The soak
    through a per-minute limit as well is benchmarks/soak.py."""
    from dask_whisk import backend

    inc = dask.delayed(lambda v: v + 1, pure=True)
    total = dask.delayed(sum)([inc(i) for i in range(1_000)])
    with dask.config.set(UNFUSED):
        with whisk_on(concurrent_invocations=4):
            assert total.compute(scheduler=whisk_get) == sum(range(1, 1_001))
            report = dask_whisk.last_report()
            stats = backend.get_backend().client.stats
    assert report.activations == 1_001 and report.max_attempts == 1, report.summary()
    assert stats.throttled == 0, f"{stats.throttled} invokes were refused with 429"


def test_a_backend_closed_under_a_running_job_fails_clearly(local_store_root):
    """Another thread closes the backend (as a restart of the embedded server does): the job
    fails with a clear error at once, instead of waiting forever for results."""
    import threading

    from dask_whisk import backend

    backend.get_backend()
    nap = dask.delayed(lambda i: time.sleep(3) or i, pure=False)
    closer = threading.Timer(1.0, lambda: backend.get_backend().close())
    closer.start()
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="backend of this job was closed"):
        dask.delayed(sum)([nap(i) for i in range(4)]).compute(scheduler=whisk_get)
    assert time.monotonic() - started < 10
    closer.join()
    assert dask.delayed(sum)([1, 2]).compute(scheduler=whisk_get) == 3  # a fresh backend
