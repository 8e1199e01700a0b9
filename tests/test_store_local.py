"""The local directory store: objects round-trip, and a destroyed job leaves nothing behind even
while activations of a failed job are still writing into it."""
import threading

import pytest

from dask_whisk.store import ObjectMissing, new_job_id
from dask_whisk.store.local import LocalJobStore, open_worker_store


def test_put_get_exists_delete(tmp_path):
    store = LocalJobStore(new_job_id(), tmp_path)
    assert store.put("a", [b"x" * 10, memoryview(b"yz")]) == 12
    assert store.get("a") == b"x" * 10 + b"yz" and store.exists("a")
    store.delete(["a", "never-there"])
    with pytest.raises(ObjectMissing):
        store.get("a")
    store.destroy()
    assert not list(tmp_path.iterdir())


def test_destroy_wins_against_writers_still_running(tmp_path):
    store = LocalJobStore(new_job_id(), tmp_path)
    worker = open_worker_store(store.worker_access([], ["out"]))
    stop = threading.Event()
    failures = []

    def write(index: int) -> None:
        n = 0
        while not stop.is_set():
            try:
                worker.put(f"w{index}-{n}", [b"z" * 200_000])
            except OSError as exc:
                failures.append(exc)
                return
            n += 1

    writers = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for thread in writers:
        thread.start()
    while not any(store.directory.iterdir()):
        pass
    store.destroy()
    stop.set()
    for thread in writers:
        thread.join()
    assert failures, "writers should fail once their job directory is gone"
    assert not list(tmp_path.iterdir()), "a destroyed job left files behind"
