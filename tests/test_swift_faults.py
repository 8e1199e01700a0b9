"""The fault-injecting Swift proxy (tests/_swift_faults.py) and the Swift store through it.

The proxy fails the fraction of requests it is asked to, each fault of the kind it says; and the
project's Swift store, client and activation side, moves objects correctly through it.
"""
from __future__ import annotations

import http.client
import math
import time
import urllib.parse

import numpy as np
import pytest
import swiftclient

from dask_whisk.store import StoreError, new_job_id, open_job_store, open_worker_store

from _swift_faults import DEFAULT_KINDS, KINDS, SwiftFaultProxy, fault_proxy

DROPPED = "dropped"


class Client:
    """Plain HTTP requests to one host, reconnecting after a dropped connection."""

    def __init__(self, url: str):
        self.netloc = urllib.parse.urlsplit(url).netloc
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, headers: dict | None = None,
                body: bytes | None = None) -> tuple[int | str, dict, bytes]:
        """Status, headers and body; or DROPPED if the connection closed before the whole answer."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.netloc, timeout=30)
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            resp = self.conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        except (http.client.HTTPException, ConnectionError):  # unanswered, or cut mid-body
            self.conn.close()
            self.conn = None
            return DROPPED, {}, b""


def auth(client: Client, env) -> tuple[str, str]:
    status, headers, _ = client.request("GET", "/auth/v1.0", {"X-Auth-User": env.user,
                                                              "X-Auth-Key": env.key})
    assert status == 200, status
    return headers["X-Storage-Url"], headers["X-Auth-Token"]


def test_faults_come_at_the_asked_rate_and_are_what_they_say(swift_env):
    n, rate = 1000, 0.1
    with fault_proxy(swift_env.auth_url, rate=rate, seed=11) as proxy:
        client = Client(proxy.url)
        seen = [client.request("GET", "/info")[0] for _ in range(n)]
    failed = sum(1 for s in seen if s != 200)
    assert proxy.requests == n and failed == proxy.injected
    sigma = math.sqrt(n * rate * (1 - rate))
    assert abs(proxy.injected - n * rate) < 4 * sigma, proxy.faults
    assert set(proxy.faults) == set(DEFAULT_KINDS)
    assert all(count > n * rate / len(DEFAULT_KINDS) / 3 for count in proxy.faults.values())
    # a 503 is an answer, a reset (before or after forwarding) is a connection closed unanswered
    assert seen.count(503) == proxy.faults["503"]
    assert seen.count(DROPPED) == proxy.faults["reset"] + proxy.faults["reset-after"]
    assert set(seen) == {200, 503, DROPPED}


def test_the_same_seed_fails_the_same_requests(swift_env):
    runs = []
    for _ in range(2):
        with fault_proxy(swift_env.auth_url, rate=0.2, seed=5) as proxy:
            client = Client(proxy.url)
            runs.append([client.request("GET", "/info")[0] for _ in range(100)])
    assert runs[0] == runs[1] and DROPPED in runs[0] and 503 in runs[0]
    with fault_proxy(swift_env.auth_url, rate=0.0) as proxy:
        client = Client(proxy.url)
        assert {client.request("GET", "/info")[0] for _ in range(100)} == {200}
        assert proxy.injected == 0


def test_storage_url_points_at_the_proxy_and_resets_land_before_or_after_swift(swift_env):
    with fault_proxy(swift_env.auth_url) as proxy:
        client = Client(proxy.url)
        storage_url, token = auth(client, swift_env)
        assert storage_url.startswith(proxy.url + "/v1/")
        base = urllib.parse.urlsplit(storage_url).path
        headers = {"X-Auth-Token": token}
        container = f"{base}/{new_job_id()}"
        assert client.request("PUT", container, headers)[0] in (201, 202)
        proxy.fail_next("reset")
        assert client.request("PUT", f"{container}/before", headers, b"x")[0] == DROPPED
        proxy.fail_next("reset-after")
        assert client.request("PUT", f"{container}/after", headers, b"y" * 10)[0] == DROPPED
        status, head, _ = client.request("HEAD", f"{container}/after", headers)
        assert status == 200 and head["Content-Length"] == "10"  # a HEAD keeps its length
        assert client.request("HEAD", f"{container}/before", headers)[0] == 404
        proxy.fail_next(507)
        assert client.request("GET", f"{container}/after", headers)[0] == 507
        proxy.fail_next("truncate")
        assert client.request("GET", f"{container}/after", headers)[0] == DROPPED
        assert client.request("GET", f"{container}/after", headers)[2] == b"y" * 10
        for obj in ("after", ""):
            assert client.request("DELETE", f"{container}/{obj}".rstrip("/"), headers)[0] == 204
    assert proxy.faults == {"reset": 1, "reset-after": 1, "507": 1, "truncate": 1}
    assert [method for method, _, _ in proxy.log] == ["PUT", "PUT", "GET", "GET"]


def test_store_moves_200_objects_correctly_through_5_percent_faults(swift_env):
    """Client puts, gets and deletes, activation puts and gets, segmented objects on both sides,
    and the job's teardown, all through 5% of requests failing (503s, resets before and after
    the request reached Swift, answers cut mid-body): every byte read is right and nothing is
    left."""
    rng = np.random.default_rng(3)
    sizes = [int(s) for s in rng.integers(0, 3000, 200)]
    sizes[::20] = [9000] * 10  # every twentieth is segmented (4 KiB segments)
    payloads = {f"o{i:03d}": rng.bytes(size) for i, size in enumerate(sizes)}
    names = list(payloads)
    client_side, worker_side = names[:120], names[120:]
    direct = swiftclient.Connection(swift_env.auth_url, swift_env.user, swift_env.key)
    started = time.monotonic()
    with fault_proxy(swift_env.auth_url, rate=0.05, seed=2026, kinds=KINDS) as proxy:
        store = open_job_store("swift", new_job_id(), auth_url=proxy.auth_url,
                               user=swift_env.user, key=swift_env.key, backoff=0.01,
                               segment_size=4096)
        try:
            for name in client_side:
                data = payloads[name]
                assert store.put(name, [data[:7], memoryview(data)[7:]]) == len(data)
            worker = open_worker_store(store.worker_access(client_side, worker_side))
            assert worker._base.startswith(proxy.url + "/v1/")
            for name in worker_side:
                assert worker.put(name, [payloads[name]]) == len(payloads[name])
            for name in names[::4]:
                assert bytes(worker.get(name) if name in client_side else
                             store.get(name)) == payloads[name], name
            for name in names:
                assert store.get(name) == payloads[name], name
            for i in range(0, 200, 10):
                store.delete(names[i:i + 10])
                owners = {_owner(o) for o in _listing(direct, store.container)}
                assert owners == set(names[i + 10:])  # segments of deleted objects included
        finally:
            store.destroy()
            store.close()
    with pytest.raises(swiftclient.ClientException) as info:
        direct.head_container(store.container)
    assert info.value.http_status == 404
    # the faults really happened, of every kind, on every kind of request
    assert proxy.requests > 500 and proxy.injected >= 0.03 * proxy.requests, proxy.faults
    assert set(proxy.faults) == set(KINDS)
    assert {method for method, _, _ in proxy.log} >= {"GET", "PUT", "POST"}
    print(f"{proxy.requests} requests, faults {dict(proxy.faults)}, "
          f"{time.monotonic() - started:.1f} s")


def _listing(conn: swiftclient.Connection, container: str) -> list[str]:
    return [o["name"] for o in conn.get_container(container, full_listing=True)[1]]


def _owner(obj: str) -> str:
    """The object an object in the container belongs to: itself, or the one it is a segment of."""
    return obj.split("/")[1] if obj.startswith(".segments/") else obj


def test_answers_cut_mid_body_are_retried(swift_env):
    """swiftclient retries a connection dropped before the answer, not one dropped in the middle
    of the body (urllib3's ProtocolError escaped its retries): object reads, listings and the
    activation side all read the whole answer again."""
    with SwiftFaultProxy(swift_env.auth_url) as proxy:
        store = open_job_store("swift", new_job_id(), auth_url=proxy.auth_url,
                               user=swift_env.user, key=swift_env.key, backoff=0.01, retries=2,
                               segment_size=4096)
        try:
            payload = np.random.default_rng(4).bytes(10_000)
            store.put("plain", [payload[:4000]])
            store.put("large", [payload])  # a static large object
            for name, data in (("plain", payload[:4000]), ("large", payload)):
                proxy.fail_next("truncate", "truncate")
                assert store.get(name) == data
            proxy.fail_next("truncate")
            assert len(store._list(".segments/")) == 3
            proxy.fail_next("truncate", "truncate")
            worker = open_worker_store(store.worker_access(["plain"], []))
            assert bytes(worker.get("plain")) == payload[:4000]
            assert not proxy.failures and proxy.faults["truncate"] == 7
            proxy.fail_next(*["truncate"] * 3)
            with pytest.raises(StoreError, match="ConnectionError"):  # still bounded
                store.get("plain")
        finally:
            proxy.failures.clear()
            store.destroy()
            store.close()


def test_swiftclient_retries_are_bounded_and_their_delays_jittered(swift_env, monkeypatch):
    """swiftclient alone sleeps exactly backoff, 2 x backoff, ...: every client that failed at
    the same moment would retry at the same moment."""
    import swiftclient.client

    slept: list[float] = []
    monkeypatch.setattr(swiftclient.client, "sleep", slept.append)
    with SwiftFaultProxy(swift_env.auth_url) as proxy:
        store = open_job_store("swift", new_job_id(), auth_url=proxy.auth_url,
                               user=swift_env.user, key=swift_env.key, backoff=0.2, retries=3)
        try:
            firsts = []
            for _ in range(8):
                slept.clear()
                proxy.fail_next(503, "reset", 503)
                store.put("a", [b"x"])
                assert len(slept) == 3 and 0.1 <= slept[0] <= 0.3
                assert slept[1] == pytest.approx(2 * slept[0]) and slept[2] <= 4 * slept[0] + 1e-9
                firsts.append(slept[0])
            assert len(set(firsts)) == len(firsts)  # spread out, not in lockstep
            before = proxy.requests
            proxy.fail_next(*[503] * 5)
            with pytest.raises(StoreError, match="HTTP 503"):
                store.get("a")
            assert proxy.requests - before == 4  # 1 + retries attempts, then it gives up
        finally:
            proxy.failures.clear()
            store.destroy()
            store.close()


def test_get_info_is_retried_on_5xx(swift_env, monkeypatch):
    """swiftclient does not retry GET /info (it runs as a job's store opens): the store does."""
    from swiftclient import ClientException, Connection

    real, calls = Connection.get_capabilities, []

    def unavailable_twice(self, url=None):
        calls.append(url)
        if len(calls) <= 2:
            raise ClientException("injected", http_status=503)
        return real(self, url)

    monkeypatch.setattr(Connection, "get_capabilities", unavailable_twice)
    store = open_job_store("swift", new_job_id(), **swift_env.options())
    try:
        assert "tempurl" in store._capabilities and len(calls) == 3
    finally:
        store.destroy()
        store.close()
