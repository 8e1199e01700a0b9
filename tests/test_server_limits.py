"""Throttles, the memory-sized container pool, the fault mode and the CLI of the local server."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from _server_fixtures import ROOMY, RawWhisk, run_raw, server_factory  # noqa: F401 (fixtures)
from dask_whisk.server.main import add_arguments, settings_from_args
from dask_whisk.server.settings import FaultSettings, ServerSettings

SLEEP = "import time\ndef main(args):\n    time.sleep(args.get('s', 1))\n    return {'slept': args.get('s', 1)}\n"


def wait_for_fresh_minute(margin: float = 10.0) -> None:
    """The per-minute bucket is a wall-clock minute: start a rate test well inside one."""
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.05)


def test_invocations_per_minute_429(server_factory):
    """Three invokes a minute: the fourth in the same wall-clock minute is refused.

    The server counts in wall-clock minute buckets (``time.time() // 60``, on this machine's
    clock), and counts each invoke when it accepts the request, before any container starts:
    so the invokes are non-blocking, and when the four requests did not all fall within one
    minute as seen from here (only a stalled machine takes the 10 s margin), the case is run
    again on a fresh server in the next minute instead of being judged on a split window.
    """
    async def scenario(ow):
        await ow.put_action("echo", "def main(a):\n    return a\n")
        wait_for_fresh_minute()
        first = time.time()
        answers = [await ow.request("POST", "actions/echo", {}) for _ in range(4)]
        last = time.time()
        return int(first // 60) == int(last // 60), answers

    for _ in range(3):
        one_minute, answers = run_raw(server_factory(invocations_per_minute=3), scenario)
        if one_minute:
            break
    assert one_minute, "no attempt kept four requests within one wall-clock minute"
    assert [status for status, _, _ in answers] == [202, 202, 202, 429]
    _, error, headers = answers[3]
    assert error["error"] == "Too many requests in the last minute (count: 4, allowed: 3)."
    assert "Retry-After" not in headers


def test_concurrent_invocations_429_and_pool_wait(server_factory):
    handle = server_factory(invocations_per_minute=1000, concurrent_invocations=3, user_memory_mb=256)

    async def scenario(ow):
        await ow.put_action("sleep", SLEEP, limits={"memory": 128})
        ids = []
        for _ in range(3):
            status, accepted, _ = await ow.request("POST", "actions/sleep", {"s": 0.7})
            assert status == 202
            ids.append(accepted["activationId"])
        status, error, _ = await ow.request("POST", "actions/sleep", {"s": 0.7})
        assert (status, error["error"]) == (
            429, "Too many concurrent requests in flight (count: 3, allowed: 3).")
        records = []
        for activation_id in ids:
            status = 404
            while status == 404:
                await asyncio.sleep(0.1)
                status, record, _ = await ow.request("GET", f"activations/{activation_id}")
            records.append(record)
        waits = sorted(next(a["value"] for a in r["annotations"] if a["key"] == "waitTime")
                       for r in records)
        assert waits[0] < 300 and waits[2] >= 500  # two containers of 128 MB fit in 256 MB
        status, _, _ = await ow.request("POST", "actions/sleep", {"s": 0})
        assert status == 202  # slots are free again

    run_raw(handle, scenario)


def test_fault_mode_statuses_and_rejections(server_factory):
    def run_with(kinds: str) -> tuple[int, dict]:
        handle = server_factory(faults=FaultSettings(fault_rate=1.0, kinds=(kinds,), seed=1), **ROOMY)

        async def body():
            async with RawWhisk(handle.url, handle.auth) as ow:
                await ow.put_action("echo", "def main(a):\n    return a\n")
                return (await ow.invoke("echo"))[:2]

        return asyncio.run(body())

    assert run_with("429")[0] == 429
    assert run_with("503")[0] == 503
    status, record = run_with("crash")
    assert status == 502 and record["response"]["result"]["error"] == (
        "The action did not produce a valid response and exited unexpectedly.")
    status, record = run_with("application error")
    assert status == 502 and record["response"]["status"] == "application error"
    status, record = run_with("whisk internal error")
    assert status == 500 and record["response"]["status"] == "whisk internal error"


def test_fault_mode_hang_and_latency(server_factory):
    handle = server_factory(faults=FaultSettings(hang_rate=1.0, latency_ms=300), **ROOMY)

    async def scenario(ow):
        # the limit is the cold /init's too: roomy enough for one on a loaded machine
        await ow.put_action("echo", "def main(a):\n    return a\n", limits={"timeout": 3000})
        started = time.monotonic()
        status, record, _ = await ow.invoke("echo")
        assert time.monotonic() - started >= 0.3 + 3.0  # the request's latency, then the hang
        assert status == 502 and record["response"]["result"] == {
            "error": "The action exceeded its time limits of 3000 milliseconds."}

    run_raw(handle, scenario)


def test_settings_round_trip_through_the_command_line():
    import argparse

    settings = ServerSettings(port=0, auth="u:k", invocations_per_minute=7, user_memory_mb=1024,
                              faults=FaultSettings(fault_rate=0.5, kinds=("429", "crash"), seed=3))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    os.environ["DASK_WHISK_SERVER_AUTH"] = "u:k"
    try:
        assert settings_from_args(parser.parse_args(settings.to_argv())) == settings
    finally:
        del os.environ["DASK_WHISK_SERVER_AUTH"]
    assert "k" not in repr(ServerSettings(auth="secret-uuid:secret-key")).split("auth=")[1].split(",")[0]


def test_cli_announces_url_and_rejects_bad_settings():
    cli = [sys.executable, "-m", "dask_whisk.cli", "server"]
    process = subprocess.Popen(cli + ["--port", "0", "--auth", "abc:def"], stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("dask-whisk server listening on http://127.0.0.1:")
    finally:
        process.terminate()
        assert process.wait(15) == 0
    bad = subprocess.run(cli + ["--auth", "nocolon"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "uuid:key" in bad.stderr


def _runtime_children(pid: int) -> set[int]:
    children = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"runtime.py" in cmdline:
                children.add(int(entry))
    return children


def _has_init(record: dict) -> bool:
    return any(a["key"] == "initTime" for a in record["annotations"])


def test_idle_containers_are_removed_after_their_idle_time(server_factory):
    idle = 1.0
    handle = server_factory(idle_container_seconds=idle, **ROOMY)

    async def scenario(ow):
        await ow.put_action("idler", "def main(a):\n    return {}\n")
        for _ in range(3):  # a cold invoke, then a warm one measured from before it was sent
            status, record, _ = await ow.invoke("idler")
            assert status == 200
            sent = time.monotonic()
            status, record, _ = await ow.invoke("idler")
            assert status == 200
            if not _has_init(record):  # reaped in between only when this process stalled > idle
                break
        assert not _has_init(record)
        # The container was last used after `sent`: it may go no earlier than `idle` after
        # that, and must go within a deadline (the reaper looks every idle/4 seconds).
        deadline = sent + idle + 30
        while _runtime_children(handle.process.pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        gone = time.monotonic()
        assert _runtime_children(handle.process.pid) == set(), "the idle container was not removed"
        assert gone - sent >= idle, f"removed {gone - sent:.3f} s after its last use began"
        status, record, _ = await ow.invoke("idler")
        assert status == 200 and _has_init(record)  # the next invoke starts a new container

    run_raw(handle, scenario)


def test_log_limit_warm_reuse_and_no_leaked_processes(server_factory):
    handle = server_factory(idle_container_seconds=600, **ROOMY)  # no reaping during the test

    async def scenario(ow):
        await ow.put_action("chatty", "def main(a):\n    print('x' * 100)\n    return {}\n",
                            limits={"logs": 0})
        for _ in range(2):
            status, record, _ = await ow.invoke("chatty")
            assert status == 200 and record["logs"][0].endswith(
                "Logs were truncated because the total bytes size exceeds the limit of 0 bytes.")
        assert not _has_init(record)  # the second invoke reused the first one's container
        assert len(_runtime_children(handle.process.pid)) == 1

    run_raw(handle, scenario)
    children = _runtime_children(handle.process.pid)
    assert len(children) == 1  # kept warm after the client left
    handle.process.kill()  # even a killed server leaves no container behind
    handle.process.wait()
    deadline = time.monotonic() + 5
    while any(os.path.exists(f"/proc/{pid}") for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in children)
