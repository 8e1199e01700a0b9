"""Least privilege with Swift: activations get prefix-scoped TempURLs, never the user's token
unless asked for, and a Swift or container without TempURLs refuses the job before any activation."""
from __future__ import annotations

import contextlib
import json
import uuid

import dask
import pytest
import swiftclient

from dask_whisk import whisk_get
from dask_whisk.store import JOB_PREFIX, StoreError, new_job_id, open_job_store, open_worker_store
from dask_whisk.store.swift_settings import SwiftConfigError

from _server_fixtures import run_raw, whisk_on
from _swift_fixtures import _saio, swift_job


def connection(env) -> swiftclient.Connection:
    return swiftclient.Connection(env.auth_url, env.user, env.key)


def swift_config(env, **extra) -> dict:
    return {"whisk.store": "swift", "whisk.swift.auth-url": env.auth_url, "whisk.swift.user": env.user,
            "whisk.swift.key": env.key, **{f"whisk.swift.{k}": v for k, v in extra.items()}}


def activation_count(server) -> int:
    async def scenario(ow):
        status, records, _ = await ow.request("GET", "activations", params={"limit": "200"})
        assert status == 200
        return len(records)
    return run_raw(server, scenario)


def test_a_swift_without_tempurls_refuses_the_job_unless_opted_in():
    """No tempurl middleware: the job fails before any activation with a message naming the
    opt-in, and leaves no container; with ``worker-auth: token`` it runs on the job's token."""
    total = dask.delayed(sum)([dask.delayed(bytes)(100_000) for _ in range(3)])  # stored values
    with _saio(tempurl=False) as env, whisk_on() as server:
        with dask.config.set(swift_config(env)):
            with pytest.raises(SwiftConfigError, match="no tempurl middleware") as refused:
                dask.compute(total, scheduler=whisk_get)
        assert "whisk.swift.worker-auth: token" in str(refused.value)
        assert env.key not in str(refused.value)
        assert activation_count(server) == 0
        assert not connection(env).get_account(prefix=JOB_PREFIX)[1], "the refused job left a container"
        lengths = dask.delayed(lambda parts: sum(len(p) for p in parts))(
            [dask.delayed(bytes)(100_000) for _ in range(3)])
        with dask.config.set(swift_config(env, **{"worker-auth": "token"})):
            assert dask.compute(lengths, scheduler=whisk_get) == (300_000,)
        assert activation_count(server) > 0


@contextlib.contextmanager
def account_without_tempurl_key(env):
    """The session Swift's account with its TempURL key removed for the block, then restored."""
    conn = connection(env)
    key = conn.head_account().get("x-account-meta-temp-url-key")
    conn.post_account({"X-Account-Meta-Temp-URL-Key": ""})
    try:
        yield conn
    finally:
        conn.post_account({"X-Account-Meta-Temp-URL-Key": key})


def test_a_shared_container_without_any_tempurl_key_is_refused(swift_env):
    """Neither the account nor the shared container has a key: refused (dask-whisk does not
    change a container it does not own); a key on the container is used once there is one."""
    shared = f"shared-{uuid.uuid4().hex[:8]}"
    with account_without_tempurl_key(swift_env) as conn:
        conn.put_container(shared)
        try:
            with pytest.raises(SwiftConfigError, match=f"shared container '{shared}' has a TempURL"):
                open_job_store("swift", new_job_id(), **swift_env.options(container=shared))
            assert "x-container-meta-temp-url-key" not in conn.head_container(shared)
            conn.post_container(shared, {"X-Container-Meta-Temp-URL-Key": "k" * 32})
            with swift_job(**swift_env.options(container=shared)) as store:
                store.put("in", [b"shared"])
                access = store.worker_access([""], [])
                assert access["mode"] == "tempurl"
                assert bytes(open_worker_store(access).get("in")) == b"shared"
        finally:
            for obj in conn.get_container(shared)[1]:
                conn.delete_object(shared, obj["name"])
            conn.delete_container(shared)


def test_prefix_grants_do_not_grow_with_a_units_width_and_stay_scoped(swift_env):
    """One signature per prefix and method (and one for its segments): a grant for 20,000
    inputs is as small as one for one input. The write prefix of one attempt opens its own
    outputs (plain and segmented) and nothing else."""
    with swift_job(**swift_env.options(segment_size=1000)) as store:
        store.put("k-input", [b"from the client"])
        access = store.worker_access([""], ["o-u7-a2-"])
        assert len(access["get"]) == len(access["put"]) == 2
        assert len(json.dumps(access)) < 1200
        worker = open_worker_store(access)
        assert bytes(worker.get("k-input")) == b"from the client"
        worker.put("o-u7-a2-0", [b"small"])
        worker.put("o-u7-a2-1", [b"s" * 2500])  # three segments and a manifest
        assert store.get("o-u7-a2-1") == b"s" * 2500
        assert bytes(worker.get("o-u7-a2-1")) == b"s" * 2500
        for other in ("o-u7-a1-0", "o-u7-a20-0", "o-u8-a2-0", "k-input"):
            with pytest.raises(StoreError, match="not granted write"):
                worker.put(other, [b"x"])
        narrow = open_worker_store(store.worker_access(["k-"], []))
        assert bytes(narrow.get("k-input")) == b"from the client"
        with pytest.raises(StoreError, match="not granted read"):
            narrow.get("o-u7-a2-0")
        forged = store.worker_access(["k-"], [])
        forged["get"]["o-"] = forged["get"]["k-"]  # a signature presented for another prefix
        forged["get"][".segments/o-"] = forged["get"][".segments/k-"]
        with pytest.raises(StoreError, match="signature"):
            open_worker_store(forged).get("o-u7-a2-0")
