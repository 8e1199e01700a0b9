"""swift-saio: start, status, stop of a real single-node Swift in a private directory."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import swiftclient

from dask_whisk.store import saio


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dask_whisk.cli", "swift-saio", *args],
                          capture_output=True, text=True, timeout=120)


def parse_exports(stdout: str) -> dict[str, str]:
    lines = stdout.splitlines()
    assert lines and all(line.startswith("export ") for line in lines), stdout
    return dict(line[len("export "):].split("=", 1) for line in lines)


def test_cli_start_status_stop_and_restart_keeps_objects(tmp_path: Path):
    directory = str(tmp_path / "saio")
    started = cli("start", "--dir", directory)
    try:
        assert started.returncode == 0, started.stderr
        env = parse_exports(started.stdout)
        assert set(env) == {"ST_AUTH", "ST_USER", "ST_KEY"}
        again = cli("start", "--dir", directory)
        assert again.returncode == 0 and again.stdout == started.stdout  # idempotent
        assert cli("status", "--dir", directory).returncode == 0

        conn = swiftclient.Connection(env["ST_AUTH"], env["ST_USER"], env["ST_KEY"])
        assert conn.head_account()["x-account-meta-temp-url-key"]
        conn.put_container("c")
        conn.put_object("c", "o", b"persisted")
        info = saio.status(directory)
        pids = list(info.pids.values())

        assert cli("stop", "--dir", directory).returncode == 0
        assert cli("status", "--dir", directory).returncode == 1
        assert not any(Path(f"/proc/{pid}").exists() and saio._alive(pid, directory)
                       for pid in pids)
        assert all(saio._port_free(port) for port in info.ports.values())

        restarted = cli("start", "--dir", directory)
        assert restarted.returncode == 0, restarted.stderr
        env = parse_exports(restarted.stdout)
        conn = swiftclient.Connection(env["ST_AUTH"], env["ST_USER"], env["ST_KEY"])
        assert conn.get_object("c", "o")[1] == b"persisted"
    finally:
        cli("stop", "--dir", directory)
    assert saio.status(directory) is None


def test_busy_port_is_refused(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("start", "--dir", str(tmp_path / "saio"), "--port", str(port))
    assert result.returncode == 1 and result.stdout == ""
    assert f"Port {port} is in use" in result.stderr
    assert saio.status(tmp_path / "saio") is None


def test_backend_ports_avoid_busy_ones(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        ports = saio._choose_ports(None, {"object": taken})
    assert taken not in ports.values() and len(set(ports.values())) == 4


def test_stop_when_nothing_runs(tmp_path: Path):
    assert saio.stop(tmp_path) is False
    result = cli("status", "--dir", str(tmp_path))
    assert result.returncode == 1 and "not running" in result.stderr


def test_memory_cache_follows_memcache_semantics():
    cache = saio._MemoryCache()
    cache.set("a", {"x": 1}, time=100)
    value = cache.get("a")
    value["x"] = 2  # callers may mutate what they get: the cache keeps its own copy
    assert cache.get("a") == {"x": 1}
    cache.set("gone", 1, time=-1 + 1e-9)
    assert cache.get("gone") is None
    assert cache.incr("n", 3) == 3 and cache.decr("n", 5) == 0
    cache.delete("a")
    assert cache.get_multi(["a", "n"], "key") == [None, 0]


def test_default_dir_prefers_tmpfs():
    directory = saio.default_dir()
    assert directory.name == f"dask-whisk-saio-{os.getuid()}"
    if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK):
        assert directory.parent == Path("/dev/shm")


def test_token_life_must_be_positive(tmp_path: Path):
    with pytest.raises(saio.SaioError, match="at least 1 second"):
        saio.start(tmp_path / "saio", token_life=0)
    result = cli("start", "--dir", str(tmp_path / "saio"), "--token-life", "0")
    assert result.returncode == 1 and "at least 1 second" in result.stderr


def test_each_server_gets_a_port_of_its_own(monkeypatch):
    """Swift binds with SO_REUSEPORT: a port drawn twice would be shared by two servers (a
    container listing answered by the account server came back as a 400 in CI)."""
    requested = saio.free_port()
    drawn = iter([requested, requested, 40001, 40001, 40002, 40003])
    monkeypatch.setattr(saio, "free_port", lambda: next(drawn))
    monkeypatch.setattr(saio, "_port_free", lambda port: port == requested)  # usual ones busy
    ports = saio._choose_ports(requested, {})
    assert ports["proxy"] == requested and len(set(ports.values())) == 4
