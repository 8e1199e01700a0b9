"""The swift:// fsspec filesystem on the client, against a real Swift (swift-saio or $ST_AUTH):
paths, listings (paginated), ranged reads, segmented writes, removal, containers, settings."""
from __future__ import annotations

import hashlib
import os
import pickle
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import dask
import fsspec
import pytest
import swiftclient

from dask_whisk.store.swift_settings import SwiftConfigError
from dask_whisk.store.swiftfs import SwiftFileSystem


def connection(env) -> swiftclient.Connection:
    return swiftclient.Connection(env.auth_url, env.user, env.key)


def swift_fs(env, **options) -> SwiftFileSystem:
    """A filesystem of its own (not fsspec's cached instance) on the session's Swift."""
    return fsspec.filesystem("swift", **{"skip_instance_cache": True, "auth_url": env.auth_url,
                                         "user": env.user, "key": env.key, **options})


@pytest.fixture
def container(swift_env):
    """A fresh container name; it and its segments container are removed after the test."""
    name = f"fs-{uuid.uuid4().hex[:10]}"
    yield name
    conn = connection(swift_env)
    for c in (name, f"{name}_segments"):
        try:
            for obj in conn.get_container(c, full_listing=True)[1]:
                conn.delete_object(c, obj["name"])
            conn.delete_container(c)
        except swiftclient.ClientException as exc:
            assert exc.http_status == 404


def test_the_entry_point_registers_swift_for_fsspec():
    """No import of dask_whisk needed: fsspec finds the class through the package's entry point."""
    import importlib.metadata

    points = [e for e in importlib.metadata.entry_points(group="fsspec.specs") if e.name == "swift"]
    assert [e.value for e in points] == ["dask_whisk.store.swiftfs:SwiftFileSystem"]
    assert fsspec.get_filesystem_class("swift") is SwiftFileSystem


def test_folders_listings_info_glob_and_removal(swift_env, container):
    fs = swift_fs(swift_env)
    fs.mkdir(container)
    with pytest.raises(FileExistsError):
        fs.mkdir(container)
    fs.pipe({f"{container}/logs/2026-11-01.gz": b"a", f"{container}/logs/2026-11-02.gz": b"bb",
             f"{container}/logs/2026-12-01.gz": b"ccc", f"{container}/logs/old/x.txt": b"x",
             f"{container}/top.csv": b"1,2\n"})
    assert fs.ls(container, detail=False) == [f"{container}/logs", f"{container}/top.csv"]
    assert fs.ls(f"swift://{container}/logs/", detail=False) == [
        f"{container}/logs/2026-11-01.gz", f"{container}/logs/2026-11-02.gz",
        f"{container}/logs/2026-12-01.gz", f"{container}/logs/old"]
    assert fs.ls(f"{container}/top.csv", detail=False) == [f"{container}/top.csv"]  # a file: itself
    assert container in fs.ls("", detail=False)
    info = fs.info(f"{container}/logs/2026-11-02.gz")
    assert (info["type"], info["size"], info["name"]) == ("file", 2, f"{container}/logs/2026-11-02.gz")
    assert fs.info(f"{container}/logs")["type"] == "directory"
    assert fs.info(container) == {"name": container, "type": "directory", "size": 11, "count": 5}
    assert fs.isdir(f"{container}/logs/old") and fs.isfile(f"{container}/top.csv")
    assert not fs.exists(f"{container}/logs/2026-10-01.gz") and not fs.exists(f"{container}/lo")
    with pytest.raises(FileNotFoundError):
        fs.ls(f"{container}/nothing")
    with pytest.raises(FileNotFoundError):
        fs.info(f"no-such-{container}")
    assert fs.glob(f"swift://{container}/logs/2026-11-*.gz") == [
        f"{container}/logs/2026-11-01.gz", f"{container}/logs/2026-11-02.gz"]
    assert fs.glob(f"{container}/logs/*") == [
        f"{container}/logs/2026-11-01.gz", f"{container}/logs/2026-11-02.gz",
        f"{container}/logs/2026-12-01.gz", f"{container}/logs/old"]
    assert fs.glob(f"{container}/**/*.txt") == [f"{container}/logs/old/x.txt"]
    assert fs.find(f"{container}/logs", maxdepth=1) == [
        f"{container}/logs/2026-11-01.gz", f"{container}/logs/2026-11-02.gz",
        f"{container}/logs/2026-12-01.gz"]
    assert fs.du(container) == 11
    with pytest.raises(OSError, match="not empty"):
        fs.rmdir(container)
    with pytest.raises(IsADirectoryError):
        fs.rm(f"{container}/logs")
    fs.rm(f"{container}/logs", recursive=True)
    assert fs.ls(container, detail=False) == [f"{container}/top.csv"]
    fs.rm_file(f"{container}/top.csv")
    with pytest.raises(FileNotFoundError):
        fs.rm(f"{container}/top.csv")
    fs.rmdir(container)
    assert not fs.exists(container)


def test_ranged_reads_and_writes_segmented_above_the_segment_size(swift_env, container):
    """A file written in pieces past the segment size becomes a static large object of
    segments in <container>_segments (readable by any Swift client); reads are ranged GETs,
    across segment boundaries too; removing it removes its segments."""
    fs = swift_fs(swift_env, segment_size=1000)
    fs.mkdir(container)
    data = bytes(range(256)) * 10  # 2560 bytes: three segments
    with fs.open(f"{container}/big.bin", "wb", block_size=300) as f:
        for start in range(0, len(data), 170):
            f.write(data[start:start + 170])
    fs.pipe(f"{container}/exact.bin", data[:1000])  # exactly one segment's size: one object
    conn = connection(swift_env)
    head = conn.head_object(container, "big.bin")
    assert head["x-static-large-object"] == "True" and int(head["content-length"]) == 2560
    segments = conn.get_container(f"{container}_segments")[1]
    assert [s["bytes"] for s in segments] == [1000, 1000, 560]
    assert conn.get_object(container, "big.bin")[1] == data, "another client reads it whole"
    assert "x-static-large-object" not in conn.head_object(container, "exact.bin")
    assert fs.cat(f"{container}/big.bin") == data
    assert fs.cat_file(f"{container}/big.bin", 990, 2010) == data[990:2010]
    assert fs.cat_file(f"{container}/big.bin", -100) == data[-100:]
    assert fs.cat_file(f"{container}/big.bin", 2500, 9999) == data[2500:]
    with fs.open(f"{container}/big.bin", block_size=256) as f:
        f.seek(1999)
        assert f.read(3) == data[1999:2002]
        assert f.read() == data[2002:]
    with fs.open(f"{container}/text.csv", "w") as f:
        f.write("a,b\n1,2\n")
    assert conn.head_object(container, "text.csv")["content-type"] == "text/csv"
    fs.rm(f"{container}/big.bin")
    assert conn.get_container(f"{container}_segments")[1] == []
    assert fs.ls(container, detail=False) == [f"{container}/exact.bin", f"{container}/text.csv"]


def put_objects(env, container: str, names: list[str]) -> None:
    """Create ``names`` with 16 concurrent PUTs (one connection per thread)."""
    local = threading.local()

    def put(name: str) -> None:
        if not hasattr(local, "conn"):
            local.conn = connection(env)
        local.conn.put_object(container, name, name.encode())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, names))


def list_objects(env, container: str, names: list[str]) -> None:
    """Make ``names`` appear in ``container``'s listing: on the tests' own swift-saio by the
    container updates its object servers send after a PUT (12,000 PUTs take a minute of its
    CPU, these 8 s), else by PUTs."""
    if env.saio_dir is None:
        put_objects(env, container, names)
        return
    from swift.common import utils
    from swift.common.direct_client import direct_put_container_object
    from swift.common.ring import Ring

    utils.SWIFT_CONF_FILE = os.path.join(env.saio_dir, "etc", "swift.conf")
    utils.validate_hash_conf()
    account = connection(env).get_auth()[0].rstrip("/").rsplit("/", 1)[-1]
    part, nodes = Ring(os.path.join(env.saio_dir, "etc"), ring_name="container").get_nodes(account, container)

    def update(name: str) -> None:
        for node in nodes:
            direct_put_container_object(node, part, account, container, name, headers={
                "X-Timestamp": utils.Timestamp.now().internal, "X-Size": "0",
                "X-Content-Type": "text/plain", "X-Etag": hashlib.md5(b"").hexdigest()})

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(update, names))


def test_a_folder_of_12000_objects_is_listed_completely(swift_env):
    """Swift answers at most 10,000 names a request: ls, find and glob page through all 12,000.
    The container is left to the session's Swift (deleting 12,000 objects takes a minute)."""
    container = f"fs-many-{uuid.uuid4().hex[:8]}"
    connection(swift_env).put_container(container)
    names = [f"part/{i:05d}.txt" for i in range(12_000)]
    list_objects(swift_env, container, names)
    fs = swift_fs(swift_env)
    started = time.perf_counter()
    listed = fs.ls(f"{container}/part", detail=False)
    seconds = time.perf_counter() - started
    assert listed == [f"{container}/{n}" for n in names]
    assert len(fs.find(container)) == 12_000
    assert len(fs.glob(f"{container}/part/1*.txt")) == 2_000  # 10000..11999
    assert seconds < 10, f"listing 12,000 objects took {seconds:.1f} s"


def test_settings_come_from_the_dask_config_and_the_environment_like_the_store(
        swift_env, container, monkeypatch):
    """whisk.swift.* config, ST_* variables, and a pre-authenticated storage URL and token all
    reach the same account; missing or wrong settings fail clearly and show no secret."""
    fs = swift_fs(swift_env)
    fs.mkdir(container)
    fs.pipe(f"{container}/seen", b"yes")
    for name in ("ST_AUTH", "ST_USER", "ST_KEY"):
        monkeypatch.delenv(name, raising=False)
    with dask.config.set({"whisk.swift.auth-url": swift_env.auth_url, "whisk.swift.user": swift_env.user,
                          "whisk.swift.key": swift_env.key}):
        assert SwiftFileSystem(skip_instance_cache=True).cat(f"{container}/seen") == b"yes"
    monkeypatch.setenv("ST_AUTH", swift_env.auth_url)
    monkeypatch.setenv("ST_USER", swift_env.user)
    monkeypatch.setenv("ST_KEY", swift_env.key)
    assert SwiftFileSystem(skip_instance_cache=True).cat(f"{container}/seen") == b"yes"
    url, token = connection(swift_env).get_auth()
    for name in ("ST_AUTH", "ST_USER", "ST_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("OS_STORAGE_URL", url)
    monkeypatch.setenv("OS_AUTH_TOKEN", token)
    assert SwiftFileSystem(skip_instance_cache=True).cat(f"{container}/seen") == b"yes"
    monkeypatch.delenv("OS_AUTH_TOKEN")
    with pytest.raises(SwiftConfigError, match="OS_AUTH_TOKEN"):
        SwiftFileSystem(skip_instance_cache=True).ls(container)
    with pytest.raises(SwiftConfigError, match="rejected") as refused:
        swift_fs(swift_env, key="wrong-key").ls(container)
    assert "wrong-key" not in str(refused.value)


def test_keystone_v3_settings_from_os_variables(keystone_swift, monkeypatch):
    for name, value in keystone_swift.environ().items():
        monkeypatch.setenv(name, value)
    for name in ("ST_AUTH", "ST_USER", "ST_KEY"):
        monkeypatch.delenv(name, raising=False)
    fs = SwiftFileSystem(skip_instance_cache=True)
    container = f"ks-{uuid.uuid4().hex[:8]}"
    fs.makedirs(container)
    fs.pipe(f"{container}/a/b.txt", b"through keystone")
    assert fs.cat(f"{container}/a/b.txt") == b"through keystone"
    fs.rm(container, recursive=True)
    assert not fs.exists(container)


def test_a_pickled_filesystem_carries_no_credentials(swift_env, container):
    """What goes into a graph: the account's storage URL and transfer options, never the user,
    key or token; on the client a copy authenticates again from the configured settings."""
    fs = swift_fs(swift_env, segment_size=4096)
    fs.mkdir(container)
    token = fs.account()._conn().token
    data = pickle.dumps(fs)
    for secret in (swift_env.key, swift_env.user, token):
        assert secret.encode() not in data
    copy = pickle.loads(data)
    assert copy._account_url == fs.account().storage_url and copy._swift == {"segment_size": 4096}
    with dask.config.set({"whisk.swift.auth-url": swift_env.auth_url, "whisk.swift.user": swift_env.user,
                          "whisk.swift.key": swift_env.key}):
        assert copy.ls(container) == []
    SwiftFileSystem.clear_instance_cache()  # else fsspec hands back the copy made above
    saved = {k: os.environ.pop(k) for k in ("ST_AUTH", "ST_USER", "ST_KEY") if k in os.environ}
    try:
        with pytest.raises(SwiftConfigError, match="not configured"):
            pickle.loads(data).ls(container)
    finally:
        os.environ.update(saved)
