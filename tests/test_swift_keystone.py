"""Keystone v3 for real: a Keystone on loopback, a Swift proxy that trusts it, the OS_* variables."""
from __future__ import annotations

import json

import dask
import dask.array as da
import numpy as np
import pytest
import swiftclient

import dask_whisk.config  # noqa: F401  (whisk.* defaults exist before any dask.config.set)
from dask_whisk import whisk_get
from dask_whisk.store import JOB_PREFIX, new_job_id, open_job_store, open_worker_store
from dask_whisk.store.swift_settings import SwiftConfigError

from _swift_fixtures import swift_job


@pytest.fixture
def os_environ(keystone_swift, monkeypatch):
    for name in ("ST_AUTH", "ST_USER", "ST_KEY", "OS_STORAGE_URL", "OS_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in keystone_swift.environ().items():
        monkeypatch.setenv(name, value)
    return keystone_swift


def user_connection(env) -> swiftclient.Connection:
    return swiftclient.Connection(env.auth_url, env.username, env.password, auth_version="3",
                                  os_options={"project_name": env.project_name,
                                              "user_domain_name": env.user_domain_name,
                                              "project_domain_name": env.project_domain_name})


def test_v3_settings_from_the_environment(os_environ):
    with swift_job() as s:
        assert s.settings.auth_version == "3" and "/v1/AUTH_" in s.storage_url
        s.put("a", [b"through keystone", memoryview(np.arange(3.0))])
        assert s.get("a")[:16] == b"through keystone"
        access = s.worker_access(["a"], ["b"])
        text = json.dumps(access)
        assert access["mode"] == "tempurl" and os_environ.password not in text
        worker = open_worker_store(access)
        assert bytes(worker.get("a"))[:16] == b"through keystone"
        worker.put("b", [b"from a worker"])
        assert s.get("b") == b"from a worker"
    assert not user_connection(os_environ).get_account(prefix=JOB_PREFIX)[1]


def test_workers_get_a_project_token_when_tempurls_are_off(os_environ):
    with swift_job(worker_auth="token") as s:
        s.put("in", [b"x" * 10])
        access = s.worker_access(["in"], ["out"])
        assert access["mode"] == "token" and os_environ.password not in json.dumps(access)
        worker = open_worker_store(access)
        assert bytes(worker.get("in")) == b"x" * 10
        worker.put("out", [b"y"])
        assert s.get("out") == b"y"


@pytest.mark.parametrize("variable, value, message", [
    ("OS_PASSWORD", "Wr0ng-Passw0rd", "Keystone at .* rejected the credentials of user 'whisker'"),
    ("OS_PROJECT_NAME", "no-such-project", "rejected the credentials of user 'whisker'"),
    ("OS_USER_DOMAIN_NAME", "NoSuchDomain", "rejected the credentials of user 'whisker'"),
])
def test_wrong_v3_settings_are_clear_errors(os_environ, monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SwiftConfigError, match=message) as info:
        open_job_store("swift", new_job_id(), retries=0)
    assert "Wr0ng-Passw0rd" not in str(info.value) and os_environ.password not in str(info.value)


def test_unreachable_keystone(os_environ, monkeypatch):
    from dask_whisk.store.saio import free_port

    monkeypatch.setenv("OS_AUTH_URL", f"http://127.0.0.1:{free_port()}/v3")
    with pytest.raises(SwiftConfigError, match="Cannot reach Keystone at http://127.0.0.1:"):
        open_job_store("swift", new_job_id(), retries=0)


def test_a_region_without_swift_is_a_clear_error(os_environ, monkeypatch):
    monkeypatch.setenv("OS_REGION_NAME", "NoSuchRegion")
    with pytest.raises(SwiftConfigError, match="no object-store endpoint"):
        open_job_store("swift", new_job_id(), retries=0)


def test_a_job_through_keystone(os_environ):
    x = da.random.RandomState(0).random((400, 400), chunks=(100, 100))
    with dask.config.set({"whisk.store": "swift"}):
        (got,) = dask.compute((x + x.T).sum(axis=0), scheduler=whisk_get)
    np.testing.assert_allclose(got, (x + x.T).sum(axis=0).compute(scheduler="sync"))
    assert not user_connection(os_environ).get_account(prefix=JOB_PREFIX)[1]
