"""The local directory store: objects round-trip, and a destroyed job leaves nothing behind even
while activations of a failed job are still writing into it."""
import json
import os
import subprocess
import sys
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


# --- job age is UTC under any local time zone -------------------------------------------------

#: POSIX TZ rules (no tzdata needed) of London and Sydney: at any date one of them is on DST
DST_ZONES = ("GMT0BST,M3.5.0/1,M10.5.0", "AEST-10AEDT,M10.1.0,M4.1.0/3")

_AGES = r"""
import calendar, json, subprocess, sys, time
from pathlib import Path
from dask_whisk.store import JOB_PREFIX, job_age_seconds, new_job_id
ages = {}
for stamp in ("20260701T120000Z", "20260115T120000Z"):  # summer in London, summer in Sydney
    now = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ")) + 60
    ages[stamp] = job_age_seconds(f"{JOB_PREFIX}{stamp}-abcd", now=now)
root = Path(sys.argv[1])
fresh = new_job_id()
(root / fresh).mkdir()
ages["fresh"] = job_age_seconds(fresh)
clean = subprocess.run([sys.executable, "-m", "dask_whisk.cli", "clean", "--store", "local",
                        "--older-than", "0.5"], capture_output=True, text=True)
print(json.dumps({"isdst": time.localtime().tm_isdst, "ages": ages, "clean": clean.stdout,
                  "fresh_kept": (root / fresh).is_dir()}))
"""


@pytest.mark.parametrize("zone", DST_ZONES)
def test_job_age_is_utc_under_daylight_saving_time(zone, tmp_path):
    """A job is 0 h old at its start whatever TZ says: under DST, mktime - timezone made it 1 h
    old, so `dask-whisk clean --older-than 0.5` removed a job that had just started."""
    env = {**os.environ, "TZ": zone, "DASK_WHISK__LOCAL__ROOT": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", _AGES, str(tmp_path)], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    result = json.loads(out)
    assert result["fresh_kept"] and "removed" not in result["clean"], result
    assert result["ages"] == {"20260701T120000Z": 60, "20260115T120000Z": 60,
                              "fresh": pytest.approx(0, abs=30)}


def test_some_dst_zone_is_on_daylight_saving_time_now():
    """The fresh-job half of the test above only bites in a zone that is on DST today."""
    flags = [subprocess.run([sys.executable, "-c", "import time; print(time.localtime().tm_isdst)"],
                            env={**os.environ, "TZ": zone}, capture_output=True, text=True,
                            check=True).stdout.strip() for zone in DST_ZONES]
    assert "1" in flags, flags


def test_the_store_folder_is_private_to_its_user(tmp_path):
    """Created 0700; refused when another user owns it or may write into it."""
    import os

    import pytest

    from dask_whisk.store.local import LocalJobStore

    fresh = tmp_path / "fresh"
    LocalJobStore("job-1", fresh).destroy()
    assert fresh.stat().st_mode & 0o777 == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(PermissionError, match="chmod go-w"):
        LocalJobStore("job-2", shared)
    if os.getuid() == 0:  # only root can give a folder away
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o700)
        os.chown(foreign, 4321, 4321)
        with pytest.raises(PermissionError, match="belongs to user id 4321"):
            LocalJobStore("job-3", foreign)


def test_a_store_under_tmp_is_refused_with_the_fix(tmp_path):
    """Each local container's /tmp is its own: a job store there would be invisible to the
    activations, so a job refuses it up front (pytest's tmp_path is under /tmp)."""
    import pytest

    from dask_whisk.store.local import default_root, open_job_store

    assert str(tmp_path).startswith("/tmp/")
    with pytest.raises(ValueError, match=r"under /tmp, which each container .* whisk.local.root"):
        open_job_store(new_job_id(), tmp_path / "store")
    assert not (tmp_path / "store").exists()
    assert not str(default_root()).startswith("/tmp")
