"""dask-whisk clean: removes old job namespaces from the local store and from a real Swift."""
from __future__ import annotations

import time

import dask
import pytest
import swiftclient

from dask_whisk.cli import main
from dask_whisk.store import JOB_PREFIX, open_job_store


def job_id(hours_ago: float, suffix: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - hours_ago * 3600))
    return f"{JOB_PREFIX}{stamp}-{suffix}"


@pytest.fixture
def swift_vars(swift_env, monkeypatch):
    monkeypatch.setenv("ST_AUTH", swift_env.auth_url)
    monkeypatch.setenv("ST_USER", swift_env.user)
    monkeypatch.setenv("ST_KEY", swift_env.key)
    return swiftclient.Connection(swift_env.auth_url, swift_env.user, swift_env.key)


def test_local_clean_removes_only_old_jobs(tmp_path, capsys):
    old, young = tmp_path / job_id(30, "0ld0"), tmp_path / job_id(1, "y0un")
    for d in (old, young, tmp_path / "not-a-job"):
        d.mkdir()
        (d / "k-x").write_bytes(b"x")
    with dask.config.set({"whisk.local.root": str(tmp_path)}):
        assert main(["clean", "--store", "local", "--dry-run"]) == 0
        assert old.exists() and "would remove local " + old.name in capsys.readouterr().out
        assert main(["clean", "--store", "local", "--older-than", "24"]) == 0
    assert not old.exists() and young.exists() and (tmp_path / "not-a-job").exists()
    assert "removed local " + old.name in capsys.readouterr().out


def test_swift_clean_per_job_containers(swift_vars, capsys):
    old_id, young_id = job_id(48, "0ld1"), job_id(0.5, "y0u1")
    for jid in (old_id, young_id):
        s = open_job_store("swift", jid, segment_size=1000)
        s.put("k", [b"v" * 2500])
        s.close()
    try:
        assert main(["clean", "--store", "swift", "--older-than", "24", "--dry-run"]) == 0
        swift_vars.head_container(old_id)
        assert main(["clean", "--store", "swift", "--older-than", "24"]) == 0
        assert f"removed swift {old_id}" in capsys.readouterr().out
        with pytest.raises(swiftclient.ClientException):
            swift_vars.head_container(old_id)
        assert swift_vars.get_container(young_id)[1]
    finally:
        open_job_store("swift", young_id).destroy()


def test_swift_clean_prefixes_in_a_shared_container(swift_vars, capsys):
    old_id, young_id = job_id(48, "0ld2"), job_id(0.5, "y0u2")
    with dask.config.set({"whisk.swift.container": "dask-whisk-clean-test"}):
        swift_vars.put_container("dask-whisk-clean-test")
        for jid in (old_id, young_id):
            open_job_store("swift", jid).put("k", [b"v"])
        assert main(["clean", "--store", "swift", "--older-than", "24"]) == 0
        names = [o["name"] for o in swift_vars.get_container("dask-whisk-clean-test")[1]]
        assert names == [f"{young_id}/k"]
        open_job_store("swift", young_id).destroy()
    swift_vars.delete_container("dask-whisk-clean-test")


def test_swift_clean_reports_bad_settings(swift_vars, monkeypatch, capsys):
    monkeypatch.setenv("ST_KEY", "n0t-the-key")
    assert main(["clean", "--store", "swift"]) == 1
    err = capsys.readouterr().err
    assert "rejected" in err and "n0t-the-key" not in err


def test_clean_skips_unconfigured_swift(monkeypatch, tmp_path, capsys):
    for name in ("ST_AUTH", "OS_AUTH_URL", "OS_STORAGE_URL", "OS_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with dask.config.set({"whisk.local.root": str(tmp_path)}):
        assert main(["clean"]) == 0
        assert "swift: not configured, skipped" in capsys.readouterr().err
        assert main(["clean", "--store", "swift"]) == 1
