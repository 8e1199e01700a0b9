"""Results bigger than an activation: the assembly of what the client receives runs on the
client, so a result is limited by the client's memory, not the action's."""
import subprocess
import sys
import textwrap

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pytest
from dask.diagnostics import Callback

from dask_whisk import assemble, whisk_get
from dask_whisk.plan import build_plan

ONE_GB = textwrap.dedent("""
    import resource, sys, dask, dask.array as da, numpy as np
    from dask_whisk import whisk_get, last_report
    if __name__ == "__main__":
        dask.config.set({"whisk.local.root": sys.argv[1]})
        dask.delayed(sum)([1]).compute(scheduler=whisk_get)  # server up, action deployed
        x = da.random.RandomState(0).random((12_000, 12_000), chunks=2_000) + 1  # 1.15 GB
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        got = x.compute(scheduler=whisk_get)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        for i in range(0, 12_000, 2_000):  # against Dask's own answer, a band at a time
            np.testing.assert_array_equal(got[i:i + 2_000], x[i:i + 2_000].compute(scheduler="sync"))
        print(got.nbytes, peak - before, last_report().units)
""")


def test_a_one_gigabyte_array_arrives_on_the_default_action(tmp_path, shared_tmp_path):
    """1.15 GB from 512 MB activations, the client's memory growing by under twice that."""
    store = shared_tmp_path / "store"
    out = subprocess.run([sys.executable, "-c", ONE_GB, str(store)], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    nbytes, grown, units = map(int, out.stdout.split())
    assert nbytes == 12_000 * 12_000 * 8
    assert grown < 2 * nbytes, f"the client grew by {grown / nbytes:.2f}x the result"
    assert not list(store.iterdir())


def test_a_300_megabyte_bag_arrives(local_store_root):
    parts = db.from_sequence(range(30), npartitions=30).map(lambda i: bytes([i]) * 10_000_000)
    got = parts.compute(scheduler=whisk_get)
    assert [len(v) for v in got] == [10_000_000] * 30 and [v[0] for v in got] == list(range(30))


def test_persisted_then_computed(local_store_root):
    x = da.random.RandomState(1).random((2_000, 2_000), chunks=500) * 3
    (p,) = dask.persist(x, scheduler=whisk_get)
    np.testing.assert_array_equal(p.compute(scheduler=whisk_get), x.compute(scheduler="sync"))
    np.testing.assert_array_equal((p + 1).compute(scheduler=whisk_get), x.compute(scheduler="sync") + 1)


def test_finalize_runs_on_the_client_and_callbacks_see_it(local_store_root):
    x = da.ones((40, 40), chunks=10) + 1
    seen = []
    with Callback(posttask=lambda key, res, dsk, state, worker: seen.append((key, worker))):
        np.testing.assert_array_equal(x.compute(scheduler=whisk_get), np.full((40, 40), 2.0))
    on_client = [key for key, worker in seen if worker == "client"]
    assert len(on_client) == 1 and "finalize" in on_client[0], seen
    assert len(seen) == 17  # 16 blocks in activations, their assembly here


def test_assembly_rule_is_by_function_not_by_name():
    """Containers and Dask's finalize functions run on the client when only the client reads
    them; a reduction's last step (real work) and anything another task reads do not."""
    from dask._task_spec import List, Task, TaskRef

    graph = {
        "a": Task("a", np.ones, 3), "b": Task("b", np.ones, 3),
        "pair": Task("pair", list, List(TaskRef("a"), TaskRef("b"))),
        "total": Task("total", np.sum, TaskRef("a")),
        "read": Task("read", list, List(TaskRef("b"))),  # read by 'used'
        "used": Task("used", len, TaskRef("read")),
    }
    plan = build_plan(graph, ["pair", "total", "used"])
    assert list(plan.local) == ["pair"]
    assert "pair" not in plan.producer and {"a", "b"} <= set(plan.producer)


def test_a_result_the_client_cannot_hold_is_refused_before_fetching(local_store_root, monkeypatch):
    monkeypatch.setattr(assemble, "_available_bytes", lambda: 1_000_000)
    monkeypatch.setattr(assemble, "CHECKED_RESULT_BYTES", 0)  # an 8 MB result is checked too
    fetched = []
    monkeypatch.setattr(assemble.Job, "_frame", lambda self, source: fetched.append(source))
    x = da.ones((1_000, 1_000), chunks=500)  # 8 MB
    with pytest.raises(MemoryError, match=r"to_zarr"):
        x.compute(scheduler=whisk_get)
    assert not fetched
    assert not list(local_store_root.iterdir())


def test_blocks_that_break_their_layout_fall_back_to_dask(local_store_root):
    """map_blocks that says float32 but makes float64: the result is what Dask's finalize
    makes of the real blocks, not a silent cast into the layout's dtype."""
    x = da.ones((40, 40), chunks=20).map_blocks(lambda b: b * 1.5, dtype=np.float32)
    got = x.compute(scheduler=whisk_get)
    want = x.compute(scheduler="sync")
    assert got.dtype == want.dtype == np.float64
    np.testing.assert_array_equal(got, want)
