"""The Swift job store and worker store against a real Swift (swift-saio or $ST_AUTH)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse

import numpy as np
import pytest
import swiftclient

from dask_whisk.store import (JOB_PREFIX, ObjectMissing, StoreError, new_job_id, open_job_store,
                              open_worker_store)
from dask_whisk.store import swift as swift_store
from dask_whisk.store.swift_settings import SwiftConfigError, resolve_settings
from dask_whisk.store.swift_worker import MANIFEST_TYPE

from _swift_fixtures import swift_job

SMALL_SEGMENTS = 1000


@pytest.fixture
def store(swift_env):
    s = open_job_store("swift", new_job_id(), **swift_env.options(backoff=0.01))
    yield s
    s.destroy()
    s.close()


def raw_connection(env) -> swiftclient.Connection:
    return swiftclient.Connection(env.auth_url, env.user, env.key)


def test_v1_roundtrip_of_parts_without_joining(store):
    array = np.arange(1000, dtype=np.float64).reshape(10, 100)
    written = store.put("k-a", [b"head", memoryview(array), bytearray(b"tail")])
    assert written == 4 + array.nbytes + 4
    data = store.get("k-a")
    assert data[:4] == b"head" and data[-4:] == b"tail"
    assert np.frombuffer(data[4:-4], dtype=np.float64).tolist() == array.ravel().tolist()
    assert store.exists("k-a") and not store.exists("k-b")
    with pytest.raises(ObjectMissing):
        store.get("k-b")
    store.delete(["k-a", "k-never-written"])
    assert not store.exists("k-a")


def test_empty_object_and_invalid_names(store):
    assert store.put("empty", []) == 0
    assert store.get("empty") == b""
    for bad in ("", "a/b", ".segments", "x" * 600):
        with pytest.raises(ValueError, match="Invalid object name"):
            store.put(bad, [b"x"])


def test_pre_authenticated_url_and_token(swift_env):
    url, token = raw_connection(swift_env).get_auth()
    with swift_job(storage_url=url, token=token) as s:
        s.put("x", [b"pre-authenticated"])
        assert s.get("x") == b"pre-authenticated"


def test_settings_from_environment_and_dask_config(swift_env, monkeypatch):
    import dask

    monkeypatch.setenv("ST_AUTH", swift_env.auth_url)
    monkeypatch.setenv("ST_USER", swift_env.user)
    monkeypatch.setenv("ST_KEY", swift_env.key)
    assert resolve_settings().auth_url == swift_env.auth_url
    with dask.config.set({"whisk.swift.segment-size": 1234, "whisk.swift.user": "cfg:user"}):
        settings = resolve_settings()
        assert (settings.segment_size, settings.user) == (1234, "cfg:user")
        assert resolve_settings(user="arg:user").user == "arg:user"
    assert "testing" not in repr(settings)
    preauth = resolve_settings(storage_url="http://127.0.0.1:1/v1/AUTH_x", token="tk")
    assert preauth.auth_url is None and preauth.token == "tk"
    monkeypatch.setenv("OS_AUTH_TOKEN", "env-token")
    monkeypatch.setenv("OS_STORAGE_URL", "http://127.0.0.1:1/v1/AUTH_x")
    monkeypatch.delenv("ST_AUTH")
    assert resolve_settings().token == "env-token"
    from_args = resolve_settings(auth_url=swift_env.auth_url)  # the auth URL given decides
    assert from_args.token is None and from_args.storage_url is None


def test_expired_token_is_renewed(store):
    store.put("a", [b"1"])
    conn = store._conn()
    conn.token = "AUTH_tk" + "0" * 32  # what Swift answers for an expired token: 401
    store.put("b", [b"2"])
    assert store.get("a") == b"1" and conn.token != "AUTH_tk" + "0" * 32


def test_swiftclient_request_log_hides_credentials(swift_env, caplog):
    with caplog.at_level("DEBUG", logger="swiftclient"):
        with swift_job(**swift_env.options()) as s:
            s.put("a", [b"1"])
            token = s._conn().token
    assert "X-Auth-Token" in caplog.text
    assert token[-8:] not in caplog.text and token[:12] not in caplog.text
    assert f"X-Auth-Key: {swift_env.key}" not in caplog.text


def test_connections_are_per_thread(store):
    errors = []

    def work(i: int) -> None:
        try:
            for j in range(5):
                payload = f"{i}-{j}".encode() * 100
                store.put(f"t{i}-{j}", [payload])
                assert store.get(f"t{i}-{j}") == payload
        except Exception as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({id(c) for c in store._conns}) == len(store._conns) >= 6


# --- worker access -------------------------------------------------------------------------------

def test_worker_gets_signed_urls_only(store, swift_env):
    store.put("in", [b"input bytes"])
    access = json.loads(json.dumps(store.worker_access(["in"], ["out"])))
    text = json.dumps(access)
    assert access["mode"] == "tempurl"
    assert swift_env.key not in text and "token" not in access and "AUTH_tk" not in text
    assert access["expires"] <= time.time() + store.settings.max_job_duration + 1
    worker = open_worker_store(access)
    assert bytes(worker.get("in")) == b"input bytes"
    assert worker.put("out", [b"out", memoryview(np.ones(4))]) == 3 + 32
    assert store.get("out")[:3] == b"out"
    with pytest.raises(StoreError, match="not granted write"):
        worker.put("in", [b"overwrite"])
    with pytest.raises(StoreError, match="not granted read"):
        worker.get("out")
    with pytest.raises(ObjectMissing):
        open_worker_store(store.worker_access(["missing"], [])).get("missing")


def test_tampered_signature_is_rejected_without_leaking_it(store):
    store.put("in", [b"secret"])
    access = store.worker_access(["in"], ["out"])
    sig = access["get"]["in"]
    access["get"]["in"] = sig[:-4] + ("0000" if not sig.endswith("0000") else "1111")
    access["put"]["out"] = access["get"]["in"]
    worker = open_worker_store(access)
    for action in (lambda: worker.get("in"), lambda: worker.put("out", [b"x"])):
        with pytest.raises(StoreError, match="signature") as info:
            action()
        assert sig[:16] not in str(info.value) and access["get"]["in"][:16] not in str(info.value)
    assert not store.exists("out")


def test_signed_url_for_one_object_does_not_open_another(store):
    store.put("a", [b"A"])
    store.put("b", [b"B"])
    access = store.worker_access(["a"], [])
    access["get"]["b"] = access["get"]["a"]  # a grant for prefix "a" presented as one for "b"
    access["get"][".segments/b"] = access["get"][".segments/a"]
    with pytest.raises(StoreError, match="signature"):
        open_worker_store(access).get("b")


def test_token_mode_when_tempurls_are_off(swift_env):
    with swift_job(**swift_env.options(worker_auth="token")) as s:
        s.put("in", [b"via token"])
        access = s.worker_access(["in"], ["out"])
        assert access["mode"] == "token" and swift_env.key not in json.dumps(access)
        worker = open_worker_store(access)
        assert bytes(worker.get("in")) == b"via token"
        worker.put("out", [b"written"])
        assert s.get("out") == b"written"


def test_container_scoped_tempurl_key(swift_env):
    with swift_job(**swift_env.options(tempurl="container")) as s:
        meta = raw_connection(swift_env).head_container(s.container)
        assert meta.get("x-container-meta-temp-url-key")
        s.put("in", [b"container key"])
        worker = open_worker_store(s.worker_access(["in"], []))
        assert bytes(worker.get("in")) == b"container key"


#: POSIX TZ rules (no tzdata needed) of London and Sydney: at any date one of them is on DST
DST_ZONES = ("GMT0BST,M3.5.0/1,M10.5.0", "AEST-10AEDT,M10.1.0,M4.1.0/3")

_EXPIRY = r"""
import json, sys, time
from dask_whisk.store import new_job_id, open_job_store, open_worker_store
store = open_job_store("swift", new_job_id(), auth_url=sys.argv[1], user=sys.argv[2],
                       key=sys.argv[3], max_job_duration=1800)
try:
    access = store.worker_access([], ["out"])
    open_worker_store(access).put("out", [b"signed"])
    print(json.dumps({"left": access["expires"] - time.time(), "out": store.get("out").decode()}))
finally:
    store.destroy()
    store.close()
"""


@pytest.mark.parametrize("zone", DST_ZONES)
def test_tempurls_last_the_whole_job_under_daylight_saving_time(swift_env, zone):
    """TempURLs expire max-job-duration after the job's start in UTC: under DST the start read
    with mktime was an hour early, so a 30-minute job was refused worker access at once."""
    env = {**os.environ, "TZ": zone}
    run = subprocess.run([sys.executable, "-c", _EXPIRY, swift_env.auth_url, swift_env.user,
                          swift_env.key], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    assert result["out"] == "signed" and 1800 - 60 < result["left"] <= 1800


# --- segmented objects ---------------------------------------------------------------------------

def test_client_writes_static_large_objects(swift_env):
    with swift_job(**swift_env.options(segment_size=SMALL_SEGMENTS)) as s:
        payload = np.random.default_rng(0).bytes(4500)
        assert s.put("big", [payload[:100], payload[100:]]) == 4500
        head = raw_connection(swift_env).head_object(s.container, "big")
        assert head["x-static-large-object"] == "True"
        assert s.get("big") == payload
        assert bytes(open_worker_store(s.worker_access(["big"], [])).get("big")) == payload
        s.delete(["big"])
        assert s._list("") == []


def test_worker_writes_segments_and_both_sides_read_them(swift_env):
    with swift_job(**swift_env.options(segment_size=SMALL_SEGMENTS)) as s:
        payload = np.random.default_rng(1).bytes(3210)
        writer = open_worker_store(s.worker_access([], ["big"]))
        assert writer.put("big", [memoryview(payload)]) == 3210
        head = raw_connection(swift_env).head_object(s.container, "big")
        assert head["content-type"] == MANIFEST_TYPE
        assert len(s._list(".segments/big/")) == 4
        assert bytes(open_worker_store(s.worker_access(["big"], [])).get("big")) == payload
        assert s.get("big") == payload
        s.delete(["big"])
        assert s._list("") == []


def listed(env, container: str, prefix: str = "") -> list[str]:
    """What is really in the container (asked straight of Swift, not through the store)."""
    return [o["name"] for o in raw_connection(env).get_container(container, prefix=prefix,
                                                                   full_listing=True)[1]]


def test_deleting_a_worker_written_segmented_object_removes_its_segments(swift_env):
    """An activation writes a large output as segments; readers are activations too, so the
    client never reads it: releasing it must still remove every segment (the old delete knew only
    the segmented objects the client itself wrote or read, and left these until the job ended)."""
    with swift_job(**swift_env.options(segment_size=SMALL_SEGMENTS)) as s:
        payload = np.random.default_rng(2).bytes(3500)
        writer = open_worker_store(s.worker_access([], ["big", "big2", "small"]))
        writer.put("big", [memoryview(payload)])
        writer.put("big2", [payload[:2500]])  # a name that starts like the one deleted
        writer.put("small", [b"s"])
        reader = open_worker_store(s.worker_access(["big"], []))
        assert bytes(reader.get("big")) == payload
        assert len(listed(swift_env, s.container, ".segments/big/")) == 4
        s.delete(["big"])
        assert listed(swift_env, s.container, ".segments/big/") == []
        assert sorted(listed(swift_env, s.container)) == sorted(
            ["big2", "small"] + listed(swift_env, s.container, ".segments/big2/"))
        assert s.get("big2") == payload[:2500]  # the neighbour is intact
        s.delete(["big2", "small"])
        assert listed(swift_env, s.container) == []


def test_segments_of_a_write_that_never_got_its_manifest_are_deleted(swift_env):
    """An attempt that died after its segments but before its manifest: the client forgets the
    attempt's output names, and that removes the orphaned segments too."""
    with swift_job(**swift_env.options(segment_size=SMALL_SEGMENTS)) as s:
        open_worker_store(s.worker_access([], ["out"])).put("out", [b"o" * 2200])
        raw_connection(swift_env).delete_object(s.container, "out")  # as if never written
        assert len(listed(swift_env, s.container)) == 3
        s.delete(["out"])
        assert listed(swift_env, s.container) == []


def test_released_segmented_objects_leave_nothing_in_a_shared_container(swift_env):
    conn = raw_connection(swift_env)
    conn.put_container("dask-whisk-shared-release")
    s = open_job_store("swift", new_job_id(), **swift_env.options(
        container="dask-whisk-shared-release", segment_size=SMALL_SEGMENTS))
    try:
        worker = open_worker_store(s.worker_access([], ["w"]))
        worker.put("w", [b"w" * 2500])
        s.put("c", [b"c" * 2500])  # a static large object the client writes
        assert len(listed(swift_env, s.container, s.namespace)) == 2 + 3 + 3
        s.delete(["w", "c"])
        assert listed(swift_env, s.container) == []
    finally:
        s.destroy()
        s.close()
        conn.delete_container("dask-whisk-shared-release")


def test_shared_container_with_job_prefix(swift_env):
    conn = raw_connection(swift_env)
    conn.put_container("dask-whisk-shared-test")
    conn.put_object("dask-whisk-shared-test", "someone-else", b"keep me")
    job_id = new_job_id()
    s = open_job_store("swift", job_id, **swift_env.options(
        container="dask-whisk-shared-test", segment_size=SMALL_SEGMENTS))
    try:
        s.put("small", [b"s"])
        s.put("big", [b"b" * 2500])
        worker = open_worker_store(s.worker_access(["small", "big"], ["out"]))
        assert bytes(worker.get("big")) == b"b" * 2500
        worker.put("out", [b"o" * 1500])
        assert s.get("out") == b"o" * 1500
        names = [o["name"] for o in conn.get_container("dask-whisk-shared-test")[1]]
        assert all(n.startswith(job_id + "/") for n in names if n != "someone-else")
        s.destroy()
        names = [o["name"] for o in conn.get_container("dask-whisk-shared-test")[1]]
        assert names == ["someone-else"]
    finally:
        conn.delete_object("dask-whisk-shared-test", "someone-else")
        conn.delete_container("dask-whisk-shared-test")


def test_destroy_leaves_nothing(swift_env, monkeypatch):
    monkeypatch.setattr(swift_store, "BULK_DELETE_BATCH", 20)
    s = open_job_store("swift", new_job_id(), **swift_env.options(segment_size=SMALL_SEGMENTS))
    for i in range(50):  # several bulk-delete requests
        s.put(f"o{i}", [b"x"])
    s.put("big", [b"y" * 3000])
    s.destroy()
    with pytest.raises(swiftclient.ClientException) as info:
        raw_connection(swift_env).head_container(s.container)
    assert info.value.http_status == 404
    s.destroy()  # idempotent


# --- transient failures --------------------------------------------------------------------------

def test_client_retries_injected_503s_and_resets(swift_env, faulty_proxy):
    s = open_job_store("swift", new_job_id(), auth_url=faulty_proxy.url + "/auth/v1.0",
                       user=swift_env.user, key=swift_env.key, backoff=0.01, retries=3)
    try:
        faulty_proxy.fail_next(503, 503)
        s.put("a", [b"payload", b"-2"])
        faulty_proxy.fail_next(503, "reset")
        assert s.get("a") == b"payload-2"
        assert not faulty_proxy.failures
        faulty_proxy.fail_next(*[503] * 4)
        with pytest.raises(StoreError, match="HTTP 503"):
            s.get("a")
    finally:
        faulty_proxy.failures.clear()
        s.destroy()


def test_authentication_retries_transient_failures(swift_env, faulty_proxy):
    faulty_proxy.fail_next(503, "reset", 502)  # the first auth request, then its retries
    with swift_job(auth_url=faulty_proxy.url + "/auth/v1.0", user=swift_env.user,
                   key=swift_env.key, backoff=0.01, retries=3) as s:
        assert not faulty_proxy.failures
        s.put("a", [b"ok"])
    faulty_proxy.fail_next(*[503] * 4)
    with pytest.raises(SwiftConfigError, match="failed to authenticate: 503"):
        open_job_store("swift", new_job_id(), auth_url=faulty_proxy.url + "/auth/v1.0",
                       user=swift_env.user, key=swift_env.key, backoff=0.01, retries=3)


def test_worker_retries_injected_503s_and_resets(swift_env, faulty_proxy):
    s = open_job_store("swift", new_job_id(), auth_url=faulty_proxy.url + "/auth/v1.0",
                       user=swift_env.user, key=swift_env.key, backoff=0.01, retries=3,
                       segment_size=SMALL_SEGMENTS)
    try:
        s.put("in", [b"z" * 10])
        access = s.worker_access(["in"], ["out"])
        assert access["url"].startswith(faulty_proxy.url)
        worker = open_worker_store(access)
        faulty_proxy.fail_next(503, "reset", 502)
        assert bytes(worker.get("in")) == b"z" * 10
        faulty_proxy.fail_next(503, 503)
        worker.put("out", [b"w" * 2500])  # three segments and a manifest
        assert not faulty_proxy.failures
        assert s.get("out") == b"w" * 2500
        faulty_proxy.fail_next(*[503] * 4)
        with pytest.raises(StoreError, match="after 4 attempts: HTTP 503"):
            worker.get("in")
    finally:
        faulty_proxy.failures.clear()
        s.destroy()


# --- configuration errors ------------------------------------------------------------------------

@pytest.fixture
def no_swift_env(monkeypatch):
    for name in ("ST_AUTH", "ST_USER", "ST_KEY", "OS_AUTH_URL", "OS_USERNAME", "OS_PASSWORD",
                 "OS_PROJECT_NAME", "OS_STORAGE_URL", "OS_AUTH_TOKEN", "ST_AUTH_VERSION",
                 "OS_IDENTITY_API_VERSION", "OS_TENANT_NAME"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("options, message", [
    ({}, "Swift is not configured: set ST_AUTH, ST_USER and ST_KEY"),
    ({"auth_url": "http://127.0.0.1:1/auth/v1.0", "key": "k"}, "no user: set ST_USER"),
    ({"auth_url": "http://127.0.0.1:1/v3", "user": "u", "key": "k"}, "set OS_PROJECT_NAME"),
    ({"storage_url": "http://127.0.0.1:1/v1/AUTH_x"}, "set OS_AUTH_TOKEN"),
    ({"auth_url": "ftp://x/auth", "user": "u", "key": "k"}, "must be an http"),
    ({"auth_url": "http://x/auth/v1.0", "user": "u", "key": "k", "segment_size": 6 * 1024**3},
     "segment-size must be between"),
    ({"auth_url": "http://x/auth/v1.0", "user": "u", "key": "k", "tempurl": "maybe"},
     "tempurl must be one of"),
    ({"auth_url": "http://x/auth/v1.0", "user": "u", "key": "k", "bogus": 1}, "Unknown Swift option"),
])
def test_bad_settings_say_what_to_set(no_swift_env, options, message):
    with pytest.raises(SwiftConfigError, match=message):
        open_job_store("swift", new_job_id(), **options)


def test_wrong_password_is_reported_without_echoing_it(swift_env):
    with pytest.raises(SwiftConfigError, match="rejected the credentials of user 'test:tester'") as info:
        open_job_store("swift", new_job_id(), **swift_env.options(key="Wr0ngPassw0rd"))
    assert "Wr0ngPassw0rd" not in str(info.value)


def test_wrong_token_is_reported_without_echoing_it(swift_env):
    url, _ = raw_connection(swift_env).get_auth()
    bad = "AUTH_tk" + "f" * 32
    with pytest.raises(SwiftConfigError, match="rejected the token") as info:
        open_job_store("swift", new_job_id(), storage_url=url, token=bad)
    assert bad not in str(info.value)


def test_unreachable_swift(no_swift_env):
    from dask_whisk.store.saio import free_port

    url = f"http://127.0.0.1:{free_port()}/auth/v1.0"
    with pytest.raises(SwiftConfigError, match="Cannot reach Swift at http://127.0.0.1"):
        open_job_store("swift", new_job_id(), auth_url=url, user="u", key="k", retries=0)


def test_job_namespace_names(store):
    assert store.container.startswith(JOB_PREFIX) and store.namespace == ""
    assert urllib.parse.quote(store.container) in store.worker_access([], [])["url"]
