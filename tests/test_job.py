"""What a job does between its plan and its results, observed in the real store and on a real
server: intermediates released after their last reader (and not before), platform failures
retried a bounded number of times (and nothing else retried), tampered objects refused, and
units that outlast OpenWhisk's blocking wait."""
from __future__ import annotations

import logging
import operator
import time

import dask
import numpy as np
import pytest
from dask.diagnostics import Callback

import dask_whisk
from dask_whisk import backend, whisk_get
from dask_whisk.job import ActivationError
from dask_whisk.protocol import SerializationError, TamperedObject
from dask_whisk.server import FaultSettings

from _server_fixtures import whisk_on

#: several tests need values to cross the store between units, or a given number of
#: activations: one task per unit (no fusion, no batching of the units into one activation)
PER_UNIT = {"whisk.fuse": False}


def activations(name: str | None = None) -> int:
    """Activations (of action ``name``, else all) the current backend's server has recorded."""
    b = backend.get_backend()

    async def count():
        total, skip = 0, 0
        while True:
            page = await b.client.list_activations(limit=200, skip=skip, name=name)
            total += len(page)
            if len(page) < 200:
                return total
            skip += 200

    return b.io.run(count())


def job_files(root, prefix: str) -> list:
    """Files named ``prefix*`` in the one job directory under the local store's ``root``."""
    jobs = [p for p in root.iterdir() if not p.name.endswith(".deleting")]
    assert len(jobs) == 1, jobs
    return sorted(p for p in jobs[0].iterdir() if p.name.startswith(prefix))


def wait_until(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def diamond():
    """A (800 kB, stored) read by B and by C (which also reads B), D reads C: A's last reader is C."""
    a = dask.delayed(lambda: np.arange(100_000), name="a")()
    b = dask.delayed(lambda v: int(v[1]), name="b")(a)
    c = dask.delayed(lambda v, w: int(v[2]) + w, name="c")(a, b)
    d = dask.delayed(lambda w: w * 10, name="d")(c)
    return a, b, c, d


# --- release of intermediates -----------------------------------------------------------------


def test_an_intermediate_is_deleted_after_its_last_reader_and_not_before(local_store_root):
    a, b, c, d = diamond()
    seen = {}

    def pretask(key, dsk, state):
        if key == c.key:  # B has finished, C (A's last reader) is about to run: A must be there
            seen["before last reader"] = len(job_files(local_store_root, "o-"))

    def posttask(key, result, dsk, state, worker_id):
        if key == d.key:  # the job is still running (teardown is after this): A must be gone
            seen["after last reader"] = wait_until(lambda: not job_files(local_store_root, "o-"))

    with dask.config.set(PER_UNIT), Callback(pretask=pretask, posttask=posttask):
        assert d.compute(scheduler=whisk_get) == 30
    assert seen == {"before last reader": 1, "after last reader": True}
    assert not list(local_store_root.iterdir())


def test_a_bundle_is_deleted_after_the_last_reader_of_its_last_member(local_store_root):
    """A1 and A2 (160 kB each: stored) come from one activation (parallelism 1 batches them), so
    they share a bundle. B reads A1, C reads A2 and B: after B, A1 is released but the bundle
    stays for C."""
    make = dask.delayed(lambda i: np.arange(20_000) + i, pure=True)
    a1, a2 = make(1), make(2)
    b = dask.delayed(lambda v: int(v[0]), name="b")(a1)
    c = dask.delayed(lambda v, w: int(v[0]) + w, name="c")(a2, b)
    d = dask.delayed(lambda w: w * 10, name="d")(c)
    seen = {}

    def pretask(key, dsk, state):
        if key == c.key:  # B, A1's only reader, has finished
            seen["while C runs"] = [p.name.rsplit("-", 1)[1] for p in job_files(local_store_root, "o-")]

    def posttask(key, result, dsk, state, worker_id):
        if key == d.key:
            seen["after C"] = wait_until(lambda: not job_files(local_store_root, "o-"))

    with dask.config.set({**PER_UNIT, "whisk.parallelism": 1}), Callback(pretask=pretask, posttask=posttask):
        assert d.compute(scheduler=whisk_get) == 30
    assert seen == {"while C runs": ["b0"], "after C": True}


def test_a_function_shared_by_many_units_is_stored_once(local_store_root):
    """300 units of one lambda with 16 kB in its closure: the lambda is stored once (by content
    hash) and the specs refer to it, instead of each carrying the 16 kB."""
    weights = np.arange(2_000)
    parts = [dask.delayed(lambda i: int(weights[i]), pure=True)(i) for i in range(300)]
    total = dask.delayed(sum)(parts)
    seen = []

    def pretask(key, dsk, state):
        if not seen:
            seen.append([p.name for p in job_files(local_store_root, "f-")])

    with dask.config.set(PER_UNIT), Callback(pretask=pretask):
        assert total.compute(scheduler=whisk_get) == sum(range(300))
    report = dask_whisk.last_report()
    assert len(seen[0]) == 1, seen
    assert report.bytes_inline + report.bytes_stored < 300 * 16_000 / 4, report.summary()


class Counted:
    """A task argument that counts how many times the client pickled one (and can refuse to)."""

    pickled = 0

    def __init__(self, value: int, refuse: bool = False):
        self.value, self.refuse = value, refuse

    def __reduce__(self):
        if self.refuse:
            raise TypeError(f"argument {self.value} refuses to be pickled")
        Counted.pickled += 1
        return int, (self.value,)


def test_units_are_serialised_while_the_first_ones_run(local_store_root):
    """2,000 units of one kind: the first goes out once it (not all 2,000) is serialised."""
    n = 2_000
    graph = {("t", i): (operator.add, i, Counted(i)) for i in range(n)}
    at_first_invoke = []

    def pretask(key, dsk, state):
        if not at_first_invoke:
            at_first_invoke.append(Counted.pickled)

    Counted.pickled = 0
    with dask.config.set(PER_UNIT), Callback(pretask=pretask):
        assert whisk_get(graph, list(graph)) == tuple(2 * i for i in range(n))
    assert Counted.pickled == n
    assert 1 <= at_first_invoke[0] < n // 2, at_first_invoke


def test_a_unit_that_fails_to_serialise_after_the_first_invoke_fails_the_job(local_store_root):
    """The last of 500 units of one kind cannot be pickled: it is found while the others run,
    and the job fails with the serialisation error, the store left empty."""
    n = 500
    graph = {("t", i): (operator.add, i, Counted(i, refuse=i == n - 1)) for i in range(n)}
    with dask.config.set(PER_UNIT):
        with pytest.raises(SerializationError, match="argument 499 refuses to be pickled"):
            whisk_get(graph, list(graph))
    assert not list(local_store_root.iterdir())


def test_a_failed_release_is_logged_not_dropped(local_store_root, caplog):
    """A's stored object is replaced by a directory once C ran: deleting it fails, and says so."""
    a, b, c, d = diamond()
    seen = {}

    def posttask(key, result, dsk, state, worker_id):
        if key == c.key:  # before the scheduler releases A
            (stored,) = job_files(local_store_root, "o-")
            stored.unlink()
            stored.mkdir()
        if key == d.key:
            seen["logged"] = wait_until(lambda: "Could not delete" in caplog.text)

    with caplog.at_level(logging.WARNING, logger="dask_whisk"):
        with dask.config.set(PER_UNIT), Callback(posttask=posttask):
            assert d.compute(scheduler=whisk_get) == 30  # the values are right all the same
    assert seen == {"logged": True}, caplog.text
    assert "IsADirectoryError" in caplog.text
    assert not list(local_store_root.iterdir())  # teardown removed what the release could not


def test_a_delete_under_way_when_the_job_ends_finishes_before_its_objects_go(local_store_root,
                                                                             monkeypatch):
    """A's release is slow (a store slow to delete): the job ends while it runs, and its
    teardown waits for it instead of removing the folder from under it."""
    from dask_whisk.store.local import LocalJobStore

    events = []
    delete, destroy = LocalJobStore.delete, LocalJobStore.destroy

    def slow_delete(self, names):
        names = list(names)
        time.sleep(0.5)
        delete(self, names)
        events.append(("deleted", names))

    def recorded_destroy(self):
        events.append(("destroy", None))
        destroy(self)

    monkeypatch.setattr(LocalJobStore, "delete", slow_delete)
    monkeypatch.setattr(LocalJobStore, "destroy", recorded_destroy)
    a, b, c, d = diamond()
    with dask.config.set(PER_UNIT):
        assert d.compute(scheduler=whisk_get) == 30
    kinds = [kind for kind, _ in events]
    assert "deleted" in kinds and kinds[-1] == "destroy", events
    assert not list(local_store_root.iterdir())


# --- warnings ---------------------------------------------------------------------------------


def test_warnings_raised_in_activations_reach_the_caller_once_each(local_store_root):
    """As with scheduler="sync": numpy's RuntimeWarning and a UserWarning from three tasks are
    raised again at compute, each distinct one once per job, and a filter turning them into
    errors makes the compute fail with the warning."""
    import warnings

    def noisy(i):
        warnings.warn("careful with zeros", UserWarning)
        return float(np.log(np.zeros(1))[0])

    parts = [dask.delayed(noisy)(i) for i in range(3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert dask.compute(parts, scheduler=whisk_get) == ([-np.inf] * 3,)
    seen = [(w.category, str(w.message)) for w in caught if w.category is not ResourceWarning]
    assert sorted(seen, key=str) == sorted([(UserWarning, "careful with zeros"),
                                            (RuntimeWarning, "divide by zero encountered in log")], key=str)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with pytest.raises(UserWarning, match="careful with zeros"):
            dask.compute(parts, scheduler=whisk_get)
    assert not list(local_store_root.iterdir())


# --- retries ----------------------------------------------------------------------------------


def test_whisk_internal_errors_are_retried_exactly_the_configured_times(local_store_root):
    with whisk_on(faults=FaultSettings(fault_rate=1.0, kinds=("whisk internal error",))):
        for retries, expected in ((None, 3), (4, 5), (0, 1)):  # None: the default, 2
            settings = {**PER_UNIT, **({} if retries is None else {"whisk.retries": retries})}
            before = activations()
            with dask.config.set(settings):
                with pytest.raises(ActivationError, match="injected fault: whisk internal error") as info:
                    dask.delayed(lambda: 1)().compute(scheduler=whisk_get)
            assert info.value.status == "whisk internal error"
            assert activations() - before == expected, f"whisk.retries={retries}"
    assert not list(local_store_root.iterdir())


def test_user_errors_are_not_retried(local_store_root):
    def fail():
        raise KeyError("no such thing")

    dask.delayed(int)(1).compute(scheduler=whisk_get)  # backend up, action deployed
    before = activations()
    with dask.config.set({**PER_UNIT, "whisk.retries": 5}):
        with pytest.raises(KeyError, match="no such thing"):
            dask.delayed(fail)().compute(scheduler=whisk_get)
    assert activations() - before == 1


# --- tampered objects -------------------------------------------------------------------------


def tamper(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-8] + bytes(b ^ 0xFF for b in data[-8:]))


def test_a_tampered_final_result_is_refused_on_the_client(local_store_root):
    big = dask.delayed(lambda: np.arange(100_000))()  # 800 kB: stored, decoded by the client

    def posttask(key, result, dsk, state, worker_id):
        (stored,) = job_files(local_store_root, "o-")
        tamper(stored)

    with Callback(posttask=posttask):
        with pytest.raises(TamperedObject, match="integrity check"):
            big.compute(scheduler=whisk_get)
    assert not list(local_store_root.iterdir())


@pytest.mark.parametrize("prefix", ["spec-", "f-"])
def test_a_tampered_stored_spec_or_shared_function_is_refused_as_tampered(local_store_root, prefix):
    """The 400 kB argument makes the unit's spec a stored object; the 400 kB closure makes the
    function a shared one (stored once, by hash, as two units use it): tampering with either is
    refused."""
    data, closed_over = np.arange(50_000), np.arange(50_000)

    def total(values):
        return float(values.sum() + closed_over.sum())

    work = [dask.delayed(total)(data)]
    if prefix == "f-":  # shared by two units: stored apart from the specs
        work.append(dask.delayed(total)(data[:10]))
    # backend up, action deployed (not with ``total``: a warm container would keep it)
    dask.delayed(sum)([1, 2]).compute(scheduler=whisk_get)
    found = []

    def pretask(key, dsk, state):  # after the job stored the specs, before the first invoke
        if not found:  # once: a second flip would undo the first
            found.extend(job_files(local_store_root, prefix))
            tamper(found[0])

    before = activations()
    with Callback(pretask=pretask):
        with pytest.raises(TamperedObject, match="integrity check"):
            dask.compute(*work, scheduler=whisk_get)
    assert found, f"no {prefix}* object was stored"
    assert activations() - before <= len(work)
    assert dask_whisk.last_report().max_attempts == 1, "a tampered object is not a platform failure to retry"
    assert not list(local_store_root.iterdir())


def test_a_stored_object_swapped_for_another_is_refused(local_store_root):
    """Two intact frames of the same job exchanged in the store (as anyone who can write it
    could): each is bound to its own name, so neither decodes in the other's place."""
    first, second = np.arange(50_000), np.arange(50_000) * 2  # specs of 400 kB: both stored

    a = dask.delayed(np.sum)(first)
    b = dask.delayed(np.sum)(second)
    dask.compute(a, b, scheduler=whisk_get)  # backend up, action deployed
    swapped = []

    def pretask(key, dsk, state):  # before the first invoke; the second spec may be on its way
        if not swapped:
            assert wait_until(lambda: len(job_files(local_store_root, "spec-")) == 2)
            x, y = job_files(local_store_root, "spec-")
            x_bytes, y_bytes = x.read_bytes(), y.read_bytes()
            x.write_bytes(y_bytes)
            y.write_bytes(x_bytes)
            swapped.append((x.name, y.name))

    with dask.config.set({"whisk.fuse": False, "whisk.batch-max-units": 1}):
        with Callback(pretask=pretask):
            with pytest.raises(TamperedObject, match="in the place of another object"):
                dask.compute(a, b, scheduler=whisk_get)
    assert swapped
    assert not list(local_store_root.iterdir())


# --- longer than the blocking wait ------------------------------------------------------------


def test_a_unit_longer_than_the_blocking_wait_is_polled_to_its_result(local_store_root):
    """OpenWhisk answers 202 when its blocking wait ends first: the record is polled for."""
    with whisk_on(max_blocking_wait_ms=500):
        slow = dask.delayed(lambda: (time.sleep(1.5), 7)[1])()
        client = backend.get_backend().client
        polls = client.stats.polls
        assert slow.compute(scheduler=whisk_get) == 7
        assert client.stats.polls > polls, "the blocking invoke did not end with 202"
    assert not list(local_store_root.iterdir())
