"""The embedded default is private to its user: its own key per start, never on a command line;
containers answer only their server; a second OS user gets nowhere; an explicitly started server
says when it accepts the public guest key."""
import asyncio
import base64
import json
import os
import secrets
import selectors
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import aiohttp
import dask
import pytest

from dask_whisk import backend, whisk_get
from dask_whisk.server.settings import GUEST_AUTH
from dask_whisk.store.local import shared_tempdir


async def status_with(url: str, auth: str) -> int:
    header = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/api/v1/namespaces/_/actions", headers=header) as response:
            return response.status


def test_the_embedded_server_has_its_own_key_and_refuses_the_guest_key(local_store_root):
    assert dask.delayed(sum)([1, 2]).compute(scheduler=whisk_get) == 3
    server = backend._embedded_server
    assert server.auth != GUEST_AUTH
    assert asyncio.run(status_with(server.url, GUEST_AUTH)) == 401
    assert asyncio.run(status_with(server.url, server.auth)) == 200
    cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes().decode()
    assert server.auth.split(":")[1] not in cmdline, "the key is visible to every local user"


def test_an_explicit_server_says_it_accepts_the_public_guest_key():
    process = subprocess.Popen([sys.executable, "-m", "dask_whisk.cli", "server", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().startswith("dask-whisk server listening on http://127.0.0.1:")
        with selectors.DefaultSelector() as selector:  # select() cannot watch fds above 1023
            selector.register(process.stderr, selectors.EVENT_READ)
            warning = process.stderr.readline() if selector.select(timeout=10) else ""
    finally:
        process.terminate()
        process.wait(10)
    assert "published guest key" in warning and "127.0.0.1" in warning


def container_ports(server_pid: int) -> list[int]:
    """Loopback ports the server's container processes listen on (from /proc)."""
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    inodes = set()
    for child in children:
        for fd in Path(f"/proc/{child}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
            ports.append(int(fields[1].split(":")[1], 16))
    return ports


def test_a_container_answers_only_its_own_server(local_store_root):
    """A container's loopback port is open to every local user: without its server's secret,
    /init and /run are refused (and the job still works)."""
    assert dask.delayed(sum)([1, 2]).compute(scheduler=whisk_get) == 3  # a warm container
    ports = container_ports(backend._embedded_server.process.pid)
    assert ports, "no container found: the test proves nothing"

    async def post(port: int, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}{path}", json={"value": {}}) as answer:
                return answer.status, await answer.text()

    for port in ports:
        for path in ("/init", "/run"):
            status, text = asyncio.run(post(port, path))
            assert status == 403 and "Only the server" in text, (path, status, text)
    assert dask.delayed(sum)([3, 4]).compute(scheduler=whisk_get) == 7


#: what a second local user tries against the first user's embedded server, containers and
#: store; run with the system Python (standard library only: the first user's files are private)
INTRUDER = r"""
import base64, json, os, sys, urllib.error, urllib.request
target = json.loads(sys.argv[1])
found = {}

def http(method, url, auth=None, body=b"{}"):
    request = urllib.request.Request(url, data=body if method != "GET" else None, method=method,
                                     headers={"Content-Type": "application/json"})
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code

api = target["url"] + "/api/v1/namespaces/_/"
for auth in (target["guest"], None):
    name = "guest" if auth else "anonymous"
    found[name + " list actions"] = http("GET", api + "actions", auth)
    found[name + " replace the worker"] = http("PUT", api + "actions/dask-whisk-worker?overwrite=true", auth,
                                               json.dumps({"exec": {"kind": "python:default", "code": "x"}}).encode())
    found[name + " invoke"] = http("POST", api + "actions/dask-whisk-worker?blocking=true", auth)
    found[name + " read activations"] = http("GET", api + "activations", auth)
for port in target["containers"]:
    for path in ("/init", "/run"):
        found[f"container {path}"] = http("POST", f"http://127.0.0.1:{port}{path}", None,
                                          json.dumps({"value": {}}).encode())
for pid in [target["server_pid"], *target["container_pids"]]:
    try:
        open(f"/proc/{pid}/environ", "rb").read()
        found[f"environ of {pid}"] = "read"
    except PermissionError:
        found[f"environ of {pid}"] = "refused"
    found.setdefault("cmdlines", []).append(open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace"))
for what, attempt in (("list the store", lambda: os.listdir(target["store"])),
                      ("write the store", lambda: open(os.path.join(target["store"], "x"), "wb"))):
    try:
        attempt()
        found[what] = "done"
    except PermissionError:
        found[what] = "refused"
os.makedirs(target["squat"], mode=0o755)  # a store folder made first, where the victim will look
print(json.dumps(found))
"""


def as_other_user(user: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", "/usr/bin/python3", *args],
                          capture_output=True, text=True, timeout=120, cwd="/")


@pytest.fixture(scope="module")
def other_user():
    """A second local account, created for these tests and removed after (needs root, as CI has)."""
    if os.geteuid() != 0:
        pytest.fail("the second-user tests create an account with useradd: run them as root (CI does)")
    name = f"dwk{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)


def test_another_local_user_cannot_use_the_embedded_server_its_containers_or_the_store(
        other_user, local_store_root):  # noqa: ARG001 (the jobs' own store)
    """With a job's server and a warm container running, a second OS user can neither invoke,
    replace the worker nor read activations (the guest key and no key are refused, the real key
    is on no command line and in no readable environment), nor reach a container, nor read or
    write the store; a store folder that user made first is refused, not used."""
    assert dask.delayed(sum)([1, 2]).compute(scheduler=whisk_get) == 3  # a warm container
    server = backend._embedded_server
    pid = server.process.pid
    children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    ports = container_ports(pid)
    assert ports and children, "no container found: the test proves nothing"
    # a sticky world-writable folder like /tmp, where containers see it too (theirs is private)
    shared_tmp = Path(tempfile.mkdtemp(prefix="dask-whisk-shared-tmp-", dir=shared_tempdir()))
    shared_tmp.chmod(0o1777)
    mine, squat = shared_tmp / "mine", shared_tmp / "dask-whisk-store"
    target = {"url": server.url, "guest": GUEST_AUTH, "containers": ports, "server_pid": pid,
              "container_pids": children, "store": str(mine), "squat": str(squat)}
    try:
        with dask.config.set({"whisk.local.root": str(mine)}):  # a store root made by a job
            assert dask.delayed(sum)([5, 6]).compute(scheduler=whisk_get) == 11
        done = as_other_user(other_user, "-c", INTRUDER, json.dumps(target))
        squatted = squat.is_dir() and squat.stat().st_uid != os.getuid()
        with dask.config.set({"whisk.local.root": str(squat)}):
            with pytest.raises(PermissionError, match="belongs to user id"):
                dask.delayed(sum)([1, 2]).compute(scheduler=whisk_get)
    finally:
        shutil.rmtree(shared_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    secret = server.auth.split(":")[1]
    assert all(secret not in line for line in found.pop("cmdlines"))
    for attempt, outcome in found.items():
        if attempt.startswith(("guest", "anonymous")):
            assert outcome == 401, (attempt, outcome)
        elif attempt.startswith("container"):
            assert outcome == 403, (attempt, outcome)
        else:
            assert outcome == "refused", (attempt, outcome)
    assert squatted, "the other user could not make the folder: the refusal proves nothing"
    assert dask.delayed(sum)([3, 4]).compute(scheduler=whisk_get) == 7  # the job still works


def test_no_repr_or_str_shows_a_secret(tmp_path):
    """Every object that holds a MAC key, an OpenWhisk key, a Swift key, token or signature:
    its repr and str (alone, in a list, and of its fields' containers) contain none of them."""
    from dask_whisk import protocol
    from dask_whisk.config import WhiskConfig
    from dask_whisk.openwhisk import OpenWhiskClient
    from dask_whisk.server.settings import ServerSettings
    from dask_whisk.store.swift_settings import SwiftSettings
    from dask_whisk.store.swift_worker import SwiftWorkerStore

    mac_key, auth_key = secrets.token_bytes(32), secrets.token_hex(32)
    swift_key, token, signature = (secrets.token_hex(16) for _ in range(3))
    access = {"kind": "swift", "url": "http://127.0.0.1:1/v1/AUTH_t/c/", "segment_size": 1 << 20,
              "mode": "tempurl", "expires": 1, "get": {"": signature}, "put": {"o-u1-a1-": signature}}
    call = protocol.UnitCall("u1", 1, protocol.stored_ref("spec-u1", 10), [], ["o-u1-a1-0"])
    config = WhiskConfig(apihost="http://127.0.0.1:1", auth=f"{uuid.uuid4()}:{auth_key}")
    holders = [
        protocol.Invocation("job", mac_key, access, [call]),
        protocol.Invocation("job", mac_key, {**access, "mode": "token", "token": token},
                            manifest=protocol.stored_ref("m-u1-a1", 10)),
        config, OpenWhiskClient(config), ServerSettings(auth=config.auth),
        SwiftSettings(auth_url="http://127.0.0.1:1/auth/v1.0", user="u", key=swift_key),
        SwiftSettings(storage_url="http://127.0.0.1:1/v1/AUTH_t", token=token),
        SwiftWorkerStore(access),
    ]
    secrets_as_text = [auth_key, swift_key, token, signature, protocol.b64(mac_key), mac_key.hex(),
                       repr(mac_key)[2:-1]]
    for holder in holders:
        for text in (repr(holder), str(holder), repr([holder]), f"{holder!s:>10}"):
            leaked = [s for s in secrets_as_text if s in text]
            assert not leaked, f"{type(holder).__name__} shows a secret: {text}"
