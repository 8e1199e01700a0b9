"""The user's own data in Swift through ``whisk_get``: swift:// paths read and written inside
activations with the job's scoped grants, each job compared with ``scheduler="sync"`` over the
same paths. The activations hold no credential: paths the graph did not declare are refused
there, and no user credential reaches any invocation payload."""
from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import sys
import uuid

import cloudpickle
import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import fsspec
import numpy as np
import pandas as pd
import pytest
import swiftclient

from dask_whisk import whisk_get
from dask_whisk.store import swift_grants
from dask_whisk.store.swiftfs import SwiftFileSystem

from _server_fixtures import whisk_on
from _swift_faults import SwiftFaultProxy

MiB = 1024 * 1024
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # its task functions


def connection(env) -> swiftclient.Connection:
    return swiftclient.Connection(env.auth_url, env.user, env.key)


@pytest.fixture
def data(swift_env, local_store_root):
    """A fresh container of the session's Swift, the user's settings as dask config (the job
    store stays local), and fresh filesystems (their record of the client's writes starts
    empty). Yields the container's name; it is emptied and removed after."""
    container = f"data-{uuid.uuid4().hex[:10]}"
    SwiftFileSystem.clear_instance_cache()
    with dask.config.set({"whisk.swift.auth-url": swift_env.auth_url,
                          "whisk.swift.user": swift_env.user, "whisk.swift.key": swift_env.key}):
        fsspec.filesystem("swift").mkdir(container)
        yield container
        fs = fsspec.filesystem("swift")
        fs.rm(container, recursive=True)
        if fs.exists(f"{container}_segments"):
            fs.rm(f"{container}_segments", recursive=True)
    SwiftFileSystem.clear_instance_cache()


@pytest.fixture
def granted(monkeypatch) -> list[dict]:
    """The grants each job of the test made, as (read, write) prefixes per container."""
    made: list[dict] = []
    real = swift_grants.for_graph

    def recording(plan):
        grants = real(plan)
        for account in (grants or {}).get("accounts", {}).values():
            made.append({kind: {c: sorted(p) for c, p in account[kind].items()}
                         for kind in ("read", "write")})
        return grants

    monkeypatch.setattr(swift_grants, "for_graph", recording)
    return made


def test_read_text_over_a_glob_of_gzip_files(data, granted):
    fs = fsspec.filesystem("swift")
    for day in range(1, 6):
        lines = [f"2026-11-{day:02d} GET /page/{(day * i) % 7} {200 if i % 5 else 404}"
                 for i in range(300)]
        fs.pipe(f"{data}/logs/2026-11-{day:02d}.gz", gzip.compress("\n".join(lines).encode()))
    fs.pipe(f"{data}/logs/2026-12-01.gz", gzip.compress(b"2026-12-01 GET /other 500"))
    logs = db.read_text(f"swift://{data}/logs/2026-11-*.gz")
    assert logs.npartitions == 5
    errors = logs.map(str.split).filter(lambda f: f[3] != "200").pluck(2).frequencies()
    got = sorted(errors.compute(scheduler=whisk_get))
    assert got == sorted(errors.compute(scheduler="sync"))
    assert sum(n for _, n in got) == 5 * 60 and ("/other", 1) not in got
    # one read-only prefix for the month's files: not December's, not the folder
    assert granted == [{"read": {data: ["logs/2026-11-0"]}, "write": {}}]


def test_read_csv(data, granted):
    fs = fsspec.filesystem("swift")
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"id": np.arange(900), "team": [f"t{i % 4}" for i in range(900)],
                          "score": rng.normal(50, 10, 900)})
    for i in range(3):
        with fs.open(f"{data}/csv/people-{i}.csv", "w") as f:
            frame.iloc[i * 300:(i + 1) * 300].to_csv(f, index=False)
    people = dd.read_csv(f"swift://{data}/csv/people-*.csv", blocksize=2000)
    assert people.npartitions > 3  # several byte ranges of each file
    total = people.groupby("team").score.sum()
    pd.testing.assert_series_equal(total.compute(scheduler=whisk_get), total.compute(scheduler="sync"))
    pd.testing.assert_series_equal(total.compute(scheduler=whisk_get), frame.groupby("team").score.sum(),
                                   check_index_type=False)
    assert granted[0] == {"read": {data: ["csv/people-"]}, "write": {}}


def test_parquet_round_trips(data, granted):
    """to_parquet by activations and by sync; each folder read back by both schedulers."""
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"id": np.arange(2000), "x": rng.random(2000),
                          "kind": [f"k{i % 3}" for i in range(2000)]})
    table = dd.from_pandas(frame, npartitions=5)
    table.to_parquet(f"swift://{data}/pq-whisk/", compute_kwargs={"scheduler": whisk_get})
    assert granted == [{"read": {}, "write": {data: ["pq-whisk/"]}}]
    table.to_parquet(f"swift://{data}/pq-sync/", compute_kwargs={"scheduler": "sync"})
    fs = fsspec.filesystem("swift")
    assert fs.ls(f"{data}/pq-whisk", detail=False) == [
        f"{data}/pq-whisk/part.{i}.parquet" for i in range(5)]
    for folder in ("pq-whisk", "pq-sync"):
        back = dd.read_parquet(f"swift://{data}/{folder}/")
        got = back.compute(scheduler=whisk_get)
        pd.testing.assert_frame_equal(got, back.compute(scheduler="sync"), obj=folder)
        pd.testing.assert_frame_equal(got.reset_index(drop=True), frame, obj=folder,
                                      check_dtype=False)  # dask reads strings as pyarrow's
        pd.testing.assert_series_equal(back.groupby("kind").x.mean().compute(scheduler=whisk_get),
                                       frame.groupby("kind").x.mean(), check_index_type=False)
    assert granted[-1] == {"read": {data: ["pq-sync/part."]}, "write": {}}


def test_zarr_round_trips_of_a_chunked_array(data):
    x = da.random.default_rng(3).random((300, 200), chunks=(100, 50))
    want = x.compute()
    da.to_zarr(x, f"swift://{data}/x-whisk.zarr", compute=False).compute(scheduler=whisk_get)
    da.to_zarr(x, f"swift://{data}/x-sync.zarr", compute=False).compute(scheduler="sync")
    fs = fsspec.filesystem("swift")
    assert len(fs.find(f"{data}/x-whisk.zarr/c")) == 12  # one object per chunk, written remotely
    for name in ("x-whisk.zarr", "x-sync.zarr"):
        y = da.from_zarr(f"swift://{data}/{name}")
        assert y.chunks == x.chunks
        np.testing.assert_array_equal(y.compute(scheduler=whisk_get), want)
        np.testing.assert_array_equal(y.compute(scheduler="sync"), want)
        assert float((y - 0.5).std().compute(scheduler=whisk_get)) == pytest.approx(
            float(np.std(want - 0.5)))


def read_undeclared(container: str) -> bytes:
    """A task that names its path only in its own code: the graph does not declare it."""
    with fsspec.open(f"swift://{container}/private/" + "secret.txt", "rb") as f:
        return f.read()


def write_beside(source: fsspec.core.OpenFile) -> None:
    """A task that writes next to a file the graph only reads."""
    with source.fs.open(source.path + ".copy", "wb") as f:
        f.write(b"should not be written")


def test_a_path_outside_the_grant_is_refused_inside_the_activation(data, granted):
    fs = fsspec.filesystem("swift")
    fs.pipe({f"{data}/private/secret.txt": b"the user's", f"{data}/public/a.txt": b"readable"})
    public = fsspec.open(f"swift://{data}/public/a.txt", "rb")
    assert dask.delayed(lambda f: f.open().read())(public).compute(scheduler=whisk_get) == b"readable"
    outside = dask.delayed(lambda _, c: read_undeclared(c))(public, data)
    with pytest.raises(swift_grants.NotGranted) as refused:
        outside.compute(scheduler=whisk_get)
    message = str(refused.value)
    assert f"swift://{data}/private/secret.txt may not be read by this activation" in message
    assert "did not declare" in message and "fsspec.open(" in message
    assert read_undeclared(data) == b"the user's"  # the client itself may read it
    with pytest.raises(swift_grants.NotGranted, match=r"public/a\.txt\.copy may not be written"):
        dask.delayed(write_beside)(public).compute(scheduler=whisk_get)
    with pytest.raises(swift_grants.NotGranted, match="granted no swift:// paths"):
        dask.delayed(read_undeclared)(data).compute(scheduler=whisk_get)
    writable = fsspec.open(f"swift://{data}/public/a.txt.copy", "wb")
    dask.delayed(lambda f: f.open().write(b"declared") and None)(writable).compute(scheduler=whisk_get)
    assert fs.cat(f"{data}/public/a.txt.copy") == b"declared"
    assert granted[-1] == {"read": {}, "write": {data: ["public/a.txt.copy"]}}
    assert not fs.exists(f"{data}/public/a.txt.copy.copy")


def test_no_user_credential_reaches_any_invocation(swift_env, data):
    """Every request the OpenWhisk server received (invocations, with their inline frames
    decoded) holds grants and signatures, and none of the key, the tokens, or the TempURL key."""
    conn = connection(swift_env)
    tempurl_key = conn.head_account()["x-account-meta-temp-url-key"]
    fs = fsspec.filesystem("swift")
    fs.pipe({f"{data}/in/{i}.txt": f"{i} {'word ' * i}".encode() for i in range(8)})
    given = {"auth_url": swift_env.auth_url, "user": swift_env.user, "key": swift_env.key}
    with whisk_on() as server, SwiftFaultProxy(server.url) as proxy:
        with dask.config.set({"whisk.apihost": proxy.url}):  # credentials as storage options too
            words = db.read_text(f"swift://{data}/in/*.txt", storage_options=given).str.split().flatten()
            counted = words.frequencies().to_dataframe(
                meta=pd.DataFrame({"word": pd.Series(dtype=str), "n": pd.Series(dtype=int)}))
            counted.to_parquet(f"swift://{data}/out/", storage_options=given,
                               compute_kwargs={"scheduler": whisk_get})
    back = dd.read_parquet(f"swift://{data}/out/").compute(scheduler="sync")
    assert dict(zip(back.word, back.n)) == dict(words.frequencies().compute(scheduler="sync"))
    secrets = {"key": swift_env.key, "client token": fs.account()._conn().token,
               "a fresh token": conn.get_auth()[1], "TempURL key": tempurl_key}
    invocations = [json.loads(body) for method, path, body in proxy.received
                   if method == "POST" and "/actions/" in path]
    assert invocations and all("grants" in body for body in invocations)
    texts = []
    for method, path, body in proxy.received:
        texts.append(body.decode("latin-1"))
        for inline in _inline_frames(body):
            texts.append(inline.decode("latin-1"))
    for name, secret in secrets.items():
        leaked = [text[:200] for text in texts if secret in text]
        assert not leaked, f"the {name} reached the OpenWhisk server: {leaked}"
    signed = invocations[0]["grants"]["accounts"]
    assert all(len(sig) == 64 for a in signed.values() for sig in a["read"][data].values())


def _inline_frames(body: bytes) -> list[bytes]:
    """The base64 frames a JSON body carries inline (pickled values and specs)."""
    try:
        found: list[bytes] = []
        stack = [json.loads(body)]
    except ValueError:
        return []
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("inline"), str):
                found.append(base64.b64decode(item["inline"]))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def pseudo_random_block(index: int) -> bytes:
    return hashlib.shake_256(index.to_bytes(8, "little")).digest(MiB)


def digest_in_ranges(source: fsspec.core.OpenFile, step: int) -> tuple[str, int, int]:
    """In an activation: the object's sha256, read ``step`` bytes at a time, with the largest
    growth of this process's resident memory seen while reading, and the bytes read."""
    def resident() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    digest, start, peak, total = hashlib.sha256(), resident(), 0, 0
    with source as f:
        while chunk := f.read(step):
            digest.update(chunk)
            total += len(chunk)
            del chunk
            peak = max(peak, resident() - start)
    return digest.hexdigest(), peak, total


def test_a_1_gib_object_streams_through_an_activation_in_64_mib_ranges(swift_env, data):
    """A 512 MB activation reads 1 GiB in 64 MiB ranges holding at most a few ranges at once."""
    blocks = 1024
    digest = hashlib.sha256()
    for i in range(blocks):
        digest.update(pseudo_random_block(i))
    connection(swift_env).put_object(data, "big.bin", (pseudo_random_block(i) for i in range(blocks)),
                                     chunk_size=MiB)
    source = fsspec.open(f"swift://{data}/big.bin", "rb", block_size=4 * MiB)
    got, peak, total = dask.delayed(digest_in_ranges)(source, 64 * MiB).compute(scheduler=whisk_get)
    assert total == blocks * MiB and got == digest.hexdigest()
    assert peak < 4 * 64 * MiB, f"the activation grew by {peak / MiB:.0f} MiB"
    print(f"1 GiB read in 64 MiB ranges; resident memory grew by at most {peak / MiB:.0f} MiB")
