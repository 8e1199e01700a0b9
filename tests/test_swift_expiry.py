"""Tokens that really expire: a swift-saio whose tempauth tokens live SHORT_TOKEN_LIFE seconds."""
from __future__ import annotations

import time

import dask
import numpy as np
import pytest
import swiftclient

import dask_whisk.config  # noqa: F401  (whisk.* defaults exist before any dask.config.set)
from dask_whisk import whisk_get
from dask_whisk.store import JOB_PREFIX, StoreError, new_job_id, open_job_store, open_worker_store

from _swift_fixtures import JOB_TOKEN_LIFE, SHORT_TOKEN_LIFE, swift_job


def wait_for_expiry() -> None:
    time.sleep(SHORT_TOKEN_LIFE + 1.1)  # fernet timestamps have 1 s resolution


def rejected(url: str, token: str) -> bool:
    try:
        swiftclient.head_account(url, token)
    except swiftclient.ClientException as exc:
        return exc.http_status == 401
    return False


def test_client_renews_an_expired_token(short_token_swift):
    with swift_job(**short_token_swift.options()) as s:
        s.put("a", [b"before"])
        old = s._conn().token
        wait_for_expiry()
        assert rejected(s.storage_url, old)
        s.put("b", [b"after"])
        assert s.get("a") == b"before" and s._conn().token != old
        assert bytes(open_worker_store(s.worker_access(["b"], [])).get("b")) == b"after"


def test_workers_are_never_handed_an_expired_job_token(short_token_swift):
    with swift_job(**short_token_swift.options(worker_auth="token")) as s:
        s.put("in", [b"x"])
        first = s.worker_access(["in"], [])["token"]
        wait_for_expiry()
        access = s.worker_access(["in"], ["out"])
        assert access["token"] != first and rejected(s.storage_url, first)
        worker = open_worker_store(access)
        assert bytes(worker.get("in")) == b"x"
        worker.put("out", [b"y"])
        assert s.get("out") == b"y"


def test_an_old_job_token_is_replaced_before_it_expires(short_token_swift):
    with swift_job(**short_token_swift.options(worker_auth="token", token_refresh=0.5)) as s:
        first = s.worker_access([], [])["token"]
        assert s.worker_access([], [])["token"] == first  # young: kept
        time.sleep(0.7)
        second = s.worker_access([], [])["token"]
        assert second != first and not rejected(s.storage_url, first)  # replaced while valid


def test_an_expired_preauthenticated_token_says_what_to_do(short_token_swift):
    url, token = swiftclient.get_auth(short_token_swift.auth_url, short_token_swift.user,
                                      short_token_swift.key)
    s = open_job_store("swift", new_job_id(), storage_url=url, token=token, retries=0)
    s.put("a", [b"1"])
    wait_for_expiry()
    with pytest.raises(StoreError, match="OS_AUTH_TOKEN .* expired or was revoked") as info:
        s.put("b", [b"2"])
    assert token not in str(info.value) and token[-12:] not in str(info.value)
    s.close()
    cleanup = swiftclient.Connection(short_token_swift.auth_url, short_token_swift.user,
                                     short_token_swift.key)
    for obj in cleanup.get_container(s.container)[1]:
        cleanup.delete_object(s.container, obj["name"])
    cleanup.delete_container(s.container)


def test_a_job_outlives_several_tokens_in_token_mode(job_token_swift):
    """Every unit sleeps; the job outlives its first tokens, and each worker reads and writes
    through Swift with the token it was handed."""
    def step(a, i):
        time.sleep(1.0)  # ten steps outlast 1.2 token lifetimes
        return a + i

    x = np.ones(20_000)  # 160 kB: over the inline limit, so values travel through Swift
    for i in range(10):
        x = dask.delayed(step)(x, i)
    env = job_token_swift
    settings = {"whisk.store": "swift", "whisk.swift.auth-url": env.auth_url,
                "whisk.swift.user": env.user, "whisk.swift.key": env.key,
                "whisk.swift.worker-auth": "token", "whisk.swift.token-refresh": 0.5,
                "whisk.fuse": False}  # one activation per step, each handed the token of its time
    started = time.monotonic()
    with dask.config.set(settings):
        (got,) = dask.compute(x, scheduler=whisk_get)
    assert time.monotonic() - started > 1.2 * JOB_TOKEN_LIFE
    np.testing.assert_array_equal(got, np.ones(20_000) + sum(range(10)))
    conn = swiftclient.Connection(env.auth_url, env.user, env.key)
    assert not conn.get_account(prefix=JOB_PREFIX)[1], "job containers left in Swift"
