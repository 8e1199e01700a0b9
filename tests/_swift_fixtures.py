"""A real Swift for the test session, and a fault-injecting HTTP proxy (tests/_swift_faults.py)
to put in front of it.

``swift_env`` uses ST_AUTH/ST_USER/ST_KEY when set (``make test`` starts swift-saio), otherwise
starts swift-saio in a temporary directory and stops it when the session ends.
"""
from __future__ import annotations

import contextlib
import os
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dask_whisk.store import new_job_id, open_job_store, saio

from _swift_faults import SwiftFaultProxy

__all__ = ["SwiftEnv", "FaultyProxy", "KeystoneEnv", "swift_env", "faulty_proxy",
           "short_token_swift", "job_token_swift", "keystone_swift", "swift_job",
           "SHORT_TOKEN_LIFE", "JOB_TOKEN_LIFE"]

#: seconds a token of ``short_token_swift`` stays valid
SHORT_TOKEN_LIFE = 3
#: seconds a token of ``job_token_swift`` stays valid: room for a loaded machine's cold start,
#: queueing and run between handing a token to an activation and its last write
JOB_TOKEN_LIFE = 8


@contextlib.contextmanager
def swift_job(**options) -> Iterator:
    """A Swift job store opened with ``options`` for one test; destroyed and closed after."""
    store = open_job_store("swift", new_job_id(), **options)
    try:
        yield store
    finally:
        store.destroy()
        store.close()


@dataclass(frozen=True)
class SwiftEnv:
    """Where the session's Swift is and the v1 credentials of its test account."""

    auth_url: str
    user: str
    key: str
    #: the folder of the swift-saio the tests started (its rings and configs), None for another Swift
    saio_dir: str | None = None

    def options(self, **extra) -> dict:
        """Keyword arguments for ``open_job_store('swift', ...)`` pointing at this Swift."""
        return {"auth_url": self.auth_url, "user": self.user, "key": self.key, **extra}


@pytest.fixture(scope="session")
def swift_env() -> Iterator[SwiftEnv]:
    """A running Swift: the one in ST_AUTH/ST_USER/ST_KEY, or a swift-saio started for the session."""
    if os.environ.get("ST_AUTH") and os.environ.get("ST_USER") and os.environ.get("ST_KEY"):
        # `make test` starts a swift-saio and says where; any other Swift is only a URL to us
        started = os.environ.get("DASK_WHISK_TEST_SAIO_DIR")
        info = saio.status(started) if started else None
        ours = info is not None and info.auth_url == os.environ["ST_AUTH"]
        yield SwiftEnv(os.environ["ST_AUTH"], os.environ["ST_USER"], os.environ["ST_KEY"],
                       started if ours else None)
        return
    with _saio() as env:
        yield env


@contextlib.contextmanager
def _saio(**options) -> Iterator[SwiftEnv]:
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # tmpfs: no fsync, faster
    directory = tempfile.mkdtemp(prefix="dask-whisk-test-saio-", dir=shm)
    try:
        info = saio.start(directory, port=saio.free_port(), **options)
        yield SwiftEnv(info.auth_url, info.user, info.key, directory)
    finally:
        saio.stop(directory)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def short_token_swift() -> Iterator[SwiftEnv]:
    """A swift-saio of its own whose tokens expire after SHORT_TOKEN_LIFE seconds."""
    with _saio(token_life=SHORT_TOKEN_LIFE) as env:
        yield env


@pytest.fixture(scope="module")
def job_token_swift() -> Iterator[SwiftEnv]:
    """A swift-saio of its own whose tokens expire after JOB_TOKEN_LIFE seconds."""
    with _saio(token_life=JOB_TOKEN_LIFE) as env:
        yield env


@dataclass(frozen=True)
class KeystoneEnv:
    """A real Keystone v3 on loopback, a Swift that trusts it, and a project member's login."""

    auth_url: str       # .../v3, as OS_AUTH_URL
    username: str
    password: str
    project_name: str
    user_domain_name: str = "Default"
    project_domain_name: str = "Default"

    def environ(self) -> dict[str, str]:
        """The OS_* variables an OpenStack user would export."""
        return {"OS_AUTH_URL": self.auth_url, "OS_USERNAME": self.username,
                "OS_PASSWORD": self.password, "OS_PROJECT_NAME": self.project_name,
                "OS_USER_DOMAIN_NAME": self.user_domain_name,
                "OS_PROJECT_DOMAIN_NAME": self.project_domain_name}


_KEYSTONE_SERVER = """
import sys
from wsgiref.simple_server import WSGIRequestHandler, make_server
port = int(sys.argv[1]); sys.argv = sys.argv[:1]  # keystone parses the command line itself
from keystone.server.wsgi import initialize_public_application
class Quiet(WSGIRequestHandler):
    def log_message(self, *args): pass
make_server("127.0.0.1", port, initialize_public_application(), handler_class=Quiet).serve_forever()
"""


def _keystone_request(url: str, method: str = "GET", body: dict | None = None,
                      token: str | None = None) -> tuple[dict, dict]:
    headers = {"Content-Type": "application/json", **({"X-Auth-Token": token} if token else {})}
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method),
                                timeout=30) as resp:
        payload = resp.read()
        return dict(resp.headers), json.loads(payload) if payload else {}


def _password_token(url: str, user: str, password: str, project: str) -> str:
    scope = {"project": {"name": project, "domain": {"id": "default"}}}
    identity = {"methods": ["password"], "password": {
        "user": {"name": user, "domain": {"id": "default"}, "password": password}}}
    headers, _ = _keystone_request(f"{url}/v3/auth/tokens", "POST",
                                   {"auth": {"identity": identity, "scope": scope}})
    return headers["X-Subject-Token"]


@pytest.fixture(scope="session")
def keystone_swift() -> Iterator[KeystoneEnv]:
    """A Keystone (sqlite, fernet tokens) served on loopback, and a swift-saio whose proxy
    validates its tokens (authtoken + keystoneauth), with the object-store in the catalog."""
    directory = Path(tempfile.mkdtemp(prefix="dask-whisk-test-keystone-",
                                      dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None))
    port, proxy_port = saio.free_port(), saio.free_port()
    while proxy_port == port:  # the OS may hand the same free port out twice
        proxy_port = saio.free_port()
    url = f"http://127.0.0.1:{port}"
    admin_password = "adm-" + os.urandom(8).hex()
    conf = directory / "keystone.conf"
    conf.write_text(
        f"[DEFAULT]\nlog_file = {directory / 'keystone.log'}\n"
        f"[database]\nconnection = sqlite:///{directory / 'keystone.db'}\n"
        "[token]\nprovider = fernet\n"
        f"[fernet_tokens]\nkey_repository = {directory / 'fernet-keys'}\n"
        f"[fernet_receipts]\nkey_repository = {directory / 'fernet-keys'}\n"
        f"[credential]\nkey_repository = {directory / 'credential-keys'}\n"
        "[cache]\nenabled = false\n")
    manage = [str(Path(sys.executable).with_name("keystone-manage")), "--config-file", str(conf)]
    owner = ["--keystone-user", str(os.getuid()), "--keystone-group", str(os.getgid())]
    for args in (["db_sync"], ["fernet_setup", *owner], ["credential_setup", *owner],
                 ["bootstrap", "--bootstrap-password", admin_password,
                  "--bootstrap-public-url", f"{url}/v3", "--bootstrap-internal-url", f"{url}/v3",
                  "--bootstrap-region-id", "RegionOne"]):
        subprocess.run(manage + args, check=True, capture_output=True, timeout=120)
    with open(directory / "server.log", "wb") as log:
        server = subprocess.Popen([sys.executable, "-c", _KEYSTONE_SERVER, str(port)],
                                  env={**os.environ, "OS_KEYSTONE_CONFIG_FILES": str(conf)},
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _keystone_request(f"{url}/v3")
                break
            except (OSError, urllib.error.URLError):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("Keystone did not start: "
                                       + (directory / "server.log").read_text()[-2000:])
                time.sleep(0.2)
        admin = _password_token(url, "admin", admin_password, "admin")
        _, svc = _keystone_request(f"{url}/v3/services", "POST", {
            "service": {"type": "object-store", "name": "swift"}}, admin)
        _keystone_request(f"{url}/v3/endpoints", "POST", {"endpoint": {
            "service_id": svc["service"]["id"], "interface": "public", "region_id": "RegionOne",
            "url": f"http://127.0.0.1:{proxy_port}/v1/AUTH_$(project_id)s"}}, admin)
        _, project = _keystone_request(f"{url}/v3/projects", "POST", {
            "project": {"name": "whisk", "domain_id": "default"}}, admin)
        password = "usr-" + os.urandom(8).hex()
        _, user = _keystone_request(f"{url}/v3/users", "POST", {
            "user": {"name": "whisker", "password": password, "domain_id": "default"}}, admin)
        _, roles = _keystone_request(f"{url}/v3/roles", token=admin)
        member = next(r["id"] for r in roles["roles"] if r["name"] == "member")
        _keystone_request(f"{url}/v3/projects/{project['project']['id']}/users/"
                          f"{user['user']['id']}/roles/{member}", "PUT", token=admin)
        saio.start(directory / "swift", port=proxy_port, keystone=saio.KeystoneAuth(
            url=url, username="admin", password=admin_password, project_name="admin"))
        try:
            yield KeystoneEnv(f"{url}/v3", "whisker", password, "whisk")
        finally:
            saio.stop(directory / "swift")
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


#: the proxy that fails the next N requests (``fail_next``) in the transient-failure tests
FaultyProxy = SwiftFaultProxy


@pytest.fixture
def faulty_proxy(swift_env) -> Iterator[FaultyProxy]:
    """A fault-injecting proxy in front of the session's Swift, on a free port."""
    with FaultyProxy(swift_env.auth_url) as proxy:
        yield proxy
