"""A single-node OpenStack Swift on loopback ("Swift all in one") for tests, demos and notebooks.

``start`` writes rings and configs into a directory it owns, starts the four servers of the
installed ``swift`` package (proxy with tempauth, cache, bulk, tempurl, SLO and DLO), waits for
their health checks and sets the account's TempURL key. ``stop`` ends them by PID. The state
(ports, PIDs, client settings) lives in ``DIR/state.json``, so a persistent directory can be
stopped and started again with its objects kept.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import getpass
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

USER = "test:tester"
KEY = "testing"
ACCOUNT = "AUTH_test"
#: server -> (python module whose ``main`` runs it, preferred port)
SERVERS = {
    "object": ("swift.obj.server", 6010),
    "container": ("swift.container.server", 6011),
    "account": ("swift.account.server", 6012),
    "proxy": ("swift.proxy.server", 8080),
}
STATE_FILE = "state.json"
#: seconds a token is valid (tempauth's own default)
DEFAULT_TOKEN_LIFE = 86400
#: servers started by this process, kept so ``stop`` can collect their exit status
_CHILDREN: dict[int, subprocess.Popen] = {}
PROXY_PIPELINE = (
    "catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl "
    "tempauth copy slo dlo proxy-logging proxy-server"
)


@dataclasses.dataclass(frozen=True)
class SaioInfo:
    """Where a running single-node Swift is and how a client authenticates to it."""

    directory: str
    ports: dict[str, int]
    pids: dict[str, int]
    auth_url: str
    user: str = USER
    key: str = KEY

    @property
    def storage_url(self) -> str:
        """The account URL (what v1 auth returns as X-Storage-Url)."""
        return f"http://127.0.0.1:{self.ports['proxy']}/v1/{ACCOUNT}"

    def exports(self) -> str:
        """Shell lines setting the standard Swift client variables (ST_AUTH, ST_USER, ST_KEY)."""
        return (
            f"export ST_AUTH={self.auth_url}\n"
            f"export ST_USER={self.user}\n"
            f"export ST_KEY={self.key}\n"
        )


@dataclasses.dataclass(frozen=True)
class KeystoneAuth:
    """A Keystone v3 that the proxy trusts instead of tempauth, and its service user.

    The proxy validates tokens with keystonemiddleware's ``authtoken`` (which must be installed)
    and grants access with Swift's ``keystoneauth`` to users holding one of ``operator_roles``.
    """

    url: str            #: the identity service root, e.g. http://127.0.0.1:5000
    username: str
    password: str = dataclasses.field(repr=False)
    project_name: str
    operator_roles: str = "admin, member"


class SaioError(RuntimeError):
    """The single-node Swift could not be started, checked or stopped."""


def default_dir() -> Path:
    """Where the servers keep their state when no directory is given: tmpfs if it can hold xattrs.

    Swift stores object metadata in extended attributes; /dev/shm supports them on current kernels
    and avoids fsync costs, so it is preferred over the system temporary directory.
    """
    name = f"dask-whisk-saio-{os.getuid()}"
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and _supports_xattrs(shm):
        return shm / name
    return Path(tempfile.gettempdir()) / name


def _supports_xattrs(directory: Path) -> bool:
    probe = directory / f".xattr-probe-{os.getpid()}"
    try:
        probe.touch()
        os.setxattr(probe, "user.swift.probe", b"x" * 256)
        return True
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)


# --- an in-process cache for the proxy (workers = 0: one process, so a dict is a shared cache) ---

class _MemoryCache:
    """The subset of swift.common.memcached.MemcacheRing the proxy uses, in process memory."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[float, Any]] = {}

    def _live(self, key: str) -> Any:
        expires, value = self._data.get(key, (0.0, None))
        if expires and expires < time.time():
            self._data.pop(key, None)
            return None
        return value

    def get(self, key: str, raise_on_error: bool = False, **_: Any) -> Any:
        value = self._live(key)
        return None if value is None else json.loads(value)

    def set(self, key: str, value: Any, serialize: bool = True, time: float = 0, **_: Any) -> None:
        self._data[key] = (_expiry(time), json.dumps(value))

    def incr(self, key: str, delta: int = 1, time: float = 0, **_: Any) -> int:
        current = int(self.get(key) or 0) + delta
        self.set(key, max(current, 0), time=time)
        return max(current, 0)

    def decr(self, key: str, delta: int = 1, time: float = 0, **_: Any) -> int:
        return self.incr(key, -delta, time)

    def delete(self, key: str, server_key: str | None = None, **_: Any) -> None:
        self._data.pop(key, None)

    def set_multi(self, mapping: dict[str, Any], server_key: str, serialize: bool = True,
                  time: float = 0, **_: Any) -> None:
        for key, value in mapping.items():
            self.set(key, value, time=time)

    def get_multi(self, keys: list[str], server_key: str, **_: Any) -> list[Any]:
        return [self.get(key) for key in keys]


def _expiry(ttl: float) -> float:
    # memcache semantics: 0 is "never", values above 30 days are absolute timestamps
    if not ttl:
        return 0.0
    return float(ttl) if ttl > 30 * 86400 else time.time() + ttl


def cache_filter_factory(global_conf: dict, **local_conf: Any):
    """paste.deploy filter giving the proxy a cache without memcached (``swift.cache``)."""
    cache = _MemoryCache()

    def make(app):
        def with_cache(env, start_response):
            env["swift.cache"] = cache
            return app(env, start_response)
        return with_cache

    return make


# --- configuration ---

def _keystone_filters(keystone: KeystoneAuth) -> str:
    return (
        "[filter:authtoken]\npaste.filter_factory = keystonemiddleware.auth_token:filter_factory\n"
        f"www_authenticate_uri = {keystone.url}/v3\nauth_url = {keystone.url}\n"
        "auth_type = password\nproject_domain_id = default\nuser_domain_id = default\n"
        f"project_name = {keystone.project_name}\nusername = {keystone.username}\n"
        f"password = {keystone.password}\ndelay_auth_decision = true\n\n"
        "[filter:keystoneauth]\nuse = egg:swift#keystoneauth\n"
        f"operator_roles = {keystone.operator_roles}\n\n"
    )


def _write_configs(etc: Path, srv: Path, ports: dict[str, int], hash_suffix: str,
                   fernet_key: str, token_life: int, keystone: KeystoneAuth | None,
                   tempurl: bool = True) -> None:
    user = getpass.getuser()
    (etc / "swift.conf").write_text(
        "[swift-hash]\n"
        f"swift_hash_path_suffix = {hash_suffix}\n"
        f"swift_hash_path_prefix = {hash_suffix}\n\n"
        "[storage-policy:0]\nname = Policy-0\ndefault = yes\n"
    )
    common = (
        "[DEFAULT]\nbind_ip = 127.0.0.1\nworkers = 0\n"
        f"user = {user}\nswift_dir = {etc}\ndevices = {srv}\nmount_check = false\n"
        "disable_fallocate = true\nlog_level = WARNING\n"
    )
    for name in ("object", "container", "account"):
        (etc / f"{name}-server.conf").write_text(
            f"{common}bind_port = {ports[name]}\n\n"
            f"[pipeline:main]\npipeline = healthcheck {name}-server\n\n"
            f"[app:{name}-server]\nuse = egg:swift#{name}\n\n"
            "[filter:healthcheck]\nuse = egg:swift#healthcheck\n"
        )
    pipeline = PROXY_PIPELINE
    if keystone:
        pipeline = pipeline.replace(" tempauth ", " authtoken keystoneauth ")
    if not tempurl:
        pipeline = pipeline.replace(" tempurl ", " ")
    (etc / "proxy-server.conf").write_text(
        f"{common}bind_port = {ports['proxy']}\n\n"
        f"[pipeline:main]\npipeline = {pipeline}\n\n"
        "[app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\n"
        "allow_account_management = true\nerror_suppression_interval = 0\n\n"
        "[filter:tempauth]\nuse = egg:swift#tempauth\n"
        f"user_test_tester = {KEY} .admin\ntoken_life = {token_life}\n"
        f"fernet_key_k1 = {fernet_key}\nactive_fernet_key_id = k1\n\n"
        "[filter:tempurl]\nuse = egg:swift#tempurl\nallowed_digests = sha256 sha512\n\n"
        f"[filter:cache]\npaste.filter_factory = {__name__}:cache_filter_factory\n\n"
        + (_keystone_filters(keystone) if keystone else "")
        + "".join(
            f"[filter:{name}]\nuse = egg:swift#{egg}\n\n"
            for name, egg in (
                ("catch_errors", "catch_errors"), ("gatekeeper", "gatekeeper"),
                ("healthcheck", "healthcheck"), ("proxy-logging", "proxy_logging"),
                ("listing_formats", "listing_formats"), ("bulk", "bulk"),
                ("copy", "copy"), ("slo", "slo"), ("dlo", "dlo"),
            )
        )
    )


def _build_rings(etc: Path, ports: dict[str, int]) -> None:
    from swift.common.ring import RingBuilder

    for name in ("object", "container", "account"):
        builder = RingBuilder(8, 1, 1)
        builder.add_dev({"id": 0, "region": 1, "zone": 1, "ip": "127.0.0.1",
                         "port": ports[name], "device": "d1", "weight": 1})
        builder.rebalance()
        builder.get_ring().save(str(etc / f"{name}.ring.gz"))


# --- processes and ports ---

def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback TCP port free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _choose_ports(proxy_port: int | None, previous: dict[str, int]) -> dict[str, int]:
    """The requested proxy port (must be free), else the previous or usual ports if free.

    Every server gets a port of its own: Swift listens with SO_REUSEPORT, so two servers given
    the same port would both bind it and the kernel would share requests between them.
    """
    chosen: dict[str, int] = {}
    if proxy_port:
        if not _port_free(proxy_port):
            raise SaioError(f"Port {proxy_port} is in use: pass another --port, or none "
                            "to pick a free one")
        chosen["proxy"] = proxy_port
    for name, (_, usual) in SERVERS.items():
        if name in chosen:
            continue
        for candidate in (previous.get(name), usual):
            if candidate and candidate not in chosen.values() and _port_free(candidate):
                chosen[name] = candidate
                break
        else:
            candidate = free_port()
            while candidate in chosen.values():  # the OS may hand back a port it gave before
                candidate = free_port()
            chosen[name] = candidate
    return {name: chosen[name] for name in SERVERS}


def _alive(pid: int, marker: str) -> bool:
    """Whether ``pid`` is still one of our servers (its command line names our config)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state in ("Z", "X"):
        return False
    # the kernel shows an empty command line while a process is between fork and exec
    return marker.encode() in cmdline or not cmdline


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=2) as r:
            return r.status == 200 and r.read() == b"OK"
    except (OSError, urllib.error.URLError):
        return False


def _read_state(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _info(directory: Path, state: dict[str, Any]) -> SaioInfo:
    return SaioInfo(
        directory=str(directory), ports=dict(state["ports"]), pids=dict(state["pids"]),
        auth_url=f"http://127.0.0.1:{state['ports']['proxy']}/auth/v1.0",
    )


def status(directory: str | os.PathLike | None = None) -> SaioInfo | None:
    """The running instance in ``directory`` if all four servers are alive and healthy."""
    directory = Path(directory) if directory else default_dir()
    state = _read_state(directory)
    if not state.get("pids"):
        return None
    etc = str(directory / "etc")
    for name, pid in state["pids"].items():
        if not _alive(pid, etc) or not _healthy(state["ports"][name]):
            return None
    return _info(directory, state)


def start(directory: str | os.PathLike | None = None, port: int | None = None,
          timeout: float = 60.0, token_life: int = DEFAULT_TOKEN_LIFE,
          keystone: KeystoneAuth | None = None, tempurl: bool = True) -> SaioInfo:
    """Start Swift in ``directory`` (created if needed) or return the instance already running.

    ``token_life`` is how many seconds a tempauth token stays valid (short ones test renewal).
    With ``keystone`` the proxy authenticates against that Keystone instead of tempauth (the
    returned v1 credentials then do not apply, and no account TempURL key is set). Without
    ``tempurl`` the proxy has no tempurl middleware and the account no key, as some clouds run.
    """
    if token_life < 1:
        raise SaioError(f"token life must be at least 1 second, got {token_life}")
    directory = Path(directory).absolute() if directory else default_dir()
    running = status(directory)
    if running:
        if port and running.ports["proxy"] != port:
            raise SaioError(f"Swift in {directory} already runs on port {running.ports['proxy']}; "
                            f"stop it first to move it to port {port}")
        return running
    stop(directory)  # a half-dead previous instance: end what is left of it
    etc, srv, logs = directory / "etc", directory / "srv", directory / "log"
    for d in (etc, srv / "d1", logs):
        d.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    if not _supports_xattrs(srv):
        raise SaioError(f"{srv} does not support user extended attributes, which Swift needs: "
                        "pass --dir on tmpfs (/dev/shm) or ext4/xfs")
    previous = _read_state(directory)
    ports = _choose_ports(port, previous.get("ports", {}))
    # the hash suffix places objects on disk: it must stay the same for a directory's lifetime
    hash_suffix = previous.get("hash_suffix") or secrets.token_hex(8)
    _write_configs(etc, srv, ports, hash_suffix,
                   base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(), token_life,
                   keystone, tempurl)
    _build_rings(etc, ports)
    pids: dict[str, int] = {}
    state = {"ports": ports, "pids": pids, "hash_suffix": hash_suffix}
    try:
        for name, (module, _) in SERVERS.items():
            with open(logs / f"{name}.log", "ab") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())",
                     str(etc / f"{name}-server.conf"), "-v"],
                    stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd="/",
                    start_new_session=True, env=_server_env(),
                )
            pids[name] = proc.pid
            _CHILDREN[proc.pid] = proc
            (directory / STATE_FILE).write_text(json.dumps(state))
        _wait_healthy(directory, state, timeout)
        info = _info(directory, state)
        if keystone is None and tempurl:
            _ensure_tempurl_key(info)
    except BaseException:
        stop(directory)
        raise
    log.info("Swift running in %s, proxy on port %d", directory, ports["proxy"])
    return info


def _server_env() -> dict[str, str]:
    """The environment of a server: ours, plus this package importable (the proxy's cache)."""
    package_root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{package_root}{os.pathsep}{path}" if path else package_root}


def _wait_healthy(directory: Path, state: dict[str, Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = dict(state["ports"])
    etc = str(directory / "etc")
    while pending:
        for name in list(pending):
            if not _alive(state["pids"][name], etc):
                tail = (directory / "log" / f"{name}.log").read_text(errors="replace")[-2000:]
                raise SaioError(f"The Swift {name} server exited during start; its log ends:\n{tail}")
            if _healthy(pending[name]):
                del pending[name]
        if pending and time.monotonic() > deadline:
            raise SaioError(f"Swift servers {sorted(pending)} not healthy after {timeout:.0f} s; "
                            f"see the logs in {directory / 'log'}")
        if pending:
            time.sleep(0.1)


def _ensure_tempurl_key(info: SaioInfo) -> None:
    """Give the test account a TempURL key (kept across restarts) so signed URLs work."""
    req = urllib.request.Request(info.auth_url, headers={"X-Auth-User": info.user,
                                                         "X-Auth-Key": info.key})
    with urllib.request.urlopen(req, timeout=10) as r:
        token, storage_url = r.headers["X-Auth-Token"], r.headers["X-Storage-Url"]
    head = urllib.request.Request(storage_url, method="HEAD", headers={"X-Auth-Token": token})
    with urllib.request.urlopen(head, timeout=10) as r:
        if r.headers.get("X-Account-Meta-Temp-URL-Key"):
            return
    post = urllib.request.Request(storage_url, method="POST", headers={
        "X-Auth-Token": token, "X-Account-Meta-Temp-URL-Key": secrets.token_urlsafe(24)})
    with urllib.request.urlopen(post, timeout=10):
        pass


def stop(directory: str | os.PathLike | None = None, timeout: float = 10.0) -> bool:
    """Stop the servers recorded in ``directory`` (SIGTERM, then SIGKILL); True if any ran."""
    directory = Path(directory).absolute() if directory else default_dir()
    state = _read_state(directory)
    etc = str(directory / "etc")
    pids = [pid for pid in state.get("pids", {}).values() if _alive(pid, etc)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_alive(pid, etc) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid, etc):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for pid in pids:
        _reap(pid)
    if state.get("pids"):
        state["pids"] = {}
        (directory / STATE_FILE).write_text(json.dumps(state))
    return bool(pids)


def _reap(pid: int) -> None:
    """Collect the exit status of a server this process started, so no zombie lingers."""
    proc = _CHILDREN.pop(pid, None)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1)


# --- command line ---

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``dask-whisk swift-saio``."""
    parser.add_argument("action", choices=["start", "stop", "status"],
                        help="start (printing export lines for the client), stop, or status "
                             "(exit 0 only if running)")
    parser.add_argument("--dir", type=Path, default=None,
                        help=f"state directory (default {default_dir()}); keep one for notebooks")
    parser.add_argument("--port", type=int, default=None,
                        help="proxy port (default: the previous one, else 8080, else a free one)")
    parser.add_argument("--token-life", type=int, default=DEFAULT_TOKEN_LIFE, metavar="SECONDS",
                        help="how long an auth token stays valid (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    """start: print ``export`` lines for the client; stop; status: exit 0 only if running."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="swift-saio: %(message)s")
    try:
        if args.action == "start":
            info = start(args.dir, port=args.port, token_life=args.token_life)
            sys.stdout.write(info.exports())
            return 0
        if args.action == "stop":
            stopped = stop(args.dir)
            log.info("stopped" if stopped else "not running")
            return 0
        info = status(args.dir)
        if info is None:
            log.info("not running")
            return 1
        log.info("running in %s: %s", info.directory,
                 ", ".join(f"{name} {port} (pid {info.pids[name]})"
                           for name, port in info.ports.items()))
        return 0
    except SaioError as exc:
        log.error("%s", exc)
        return 1
