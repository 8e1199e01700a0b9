"""Swift settings: resolved from arguments, dask config ``whisk.swift.*`` or the environment.

Read on the client only (the job store in :mod:`dask_whisk.store.swift`, ``dask-whisk clean``);
activations never see them. A missing, inconsistent or rejected setting raises
:class:`SwiftConfigError`, which says what to set and never echoes a secret.
"""
from __future__ import annotations

import dataclasses
import os
import random
import urllib.parse
from typing import Any

from . import StoreError

#: Swift refuses single objects above 5 GiB
MAX_OBJECT_SIZE = 5 * 1024**3
#: where the key that signs activations' TempURLs comes from
TEMPURL_MODES = ("auto", "account", "container")
#: what activations are handed: signed TempURLs, or (only when asked for) the job's token
WORKER_AUTH_MODES = ("tempurl", "token")

#: dask config key under ``whisk.swift`` -> (environment variables, in order, that may set it)
_SOURCES: dict[str, tuple[str, ...]] = {
    "auth-url": ("ST_AUTH", "OS_AUTH_URL"),
    "user": ("ST_USER", "OS_USERNAME"),
    "key": ("ST_KEY", "OS_PASSWORD"),
    "auth-version": ("ST_AUTH_VERSION", "OS_IDENTITY_API_VERSION"),
    "project-name": ("OS_PROJECT_NAME", "OS_TENANT_NAME"),
    "user-domain-name": ("OS_USER_DOMAIN_NAME",),
    "project-domain-name": ("OS_PROJECT_DOMAIN_NAME",),
    "region-name": ("OS_REGION_NAME",),
    "storage-url": ("OS_STORAGE_URL",),
    "token": ("OS_AUTH_TOKEN",),
    "container": (),
    "segment-size": (),
    "retries": (),
    "backoff": (),
    "timeout": (),
    "max-job-duration": (),
    "token-refresh": (),
    "tempurl": (),
    "worker-auth": (),
}
#: every Swift option's name, as :func:`resolve_settings` takes it
OPTION_NAMES = frozenset(_SOURCES)
_DEFAULTS: dict[str, Any] = {
    "segment-size": 1024**3,
    "retries": 5,
    "backoff": 0.5,
    "timeout": 60.0,
    "max-job-duration": 6 * 3600,
    "token-refresh": 900,
    "tempurl": "auto",
    "worker-auth": "tempurl",
}

#: what each key means, for the README's configuration reference
MEANINGS: dict[str, str] = {
    "auth-url": "auth endpoint: Swift v1 (`/auth/v1.0`) or Keystone v3",
    "user": "user name (v1 `account:user`)",
    "key": "password or v1 key",
    "auth-version": "`1` (default) or `3` (Keystone; needs python-keystoneclient)",
    "project-name": "Keystone project",
    "user-domain-name": "Keystone user domain",
    "project-domain-name": "Keystone project domain",
    "region-name": "Keystone region of the object-store endpoint",
    "storage-url": "pre-authenticated storage URL (with `token`)",
    "token": "pre-authenticated token (with `storage-url`)",
    "container": "one shared container for every job (each job a prefix in it); unset: a "
                 "container per job",
    "segment-size": "bytes above which an object is written as a segmented (SLO) object",
    "retries": "attempts per Swift request on transient errors",
    "backoff": "first retry delay, seconds (doubling, jittered)",
    "timeout": "seconds per Swift request",
    "max-job-duration": "seconds the activations' TempURLs stay valid: a job's longest run",
    "token-refresh": "seconds after which a job's token is renewed before an activation gets it",
    "tempurl": "which TempURL key signs the activations' grants: `auto`, `account` or `container`",
    "worker-auth": "`tempurl` (signed grants, least privilege) or `token` (hand activations the "
                   "job's token: opt-in only)",
}


class SwiftConfigError(StoreError, ValueError):
    """The Swift settings are missing, inconsistent or rejected by the server."""


@dataclasses.dataclass(frozen=True)
class SwiftSettings:
    """Resolved Swift settings: where to authenticate, how, and how to lay out and move data."""

    auth_url: str | None = None
    user: str | None = None
    key: str | None = dataclasses.field(default=None, repr=False)
    auth_version: str = "1"
    os_options: dict[str, str] = dataclasses.field(default_factory=dict)
    storage_url: str | None = None
    token: str | None = dataclasses.field(default=None, repr=False)
    container: str | None = None
    segment_size: int = _DEFAULTS["segment-size"]
    retries: int = _DEFAULTS["retries"]
    backoff: float = _DEFAULTS["backoff"]
    timeout: float = _DEFAULTS["timeout"]
    max_job_duration: float = _DEFAULTS["max-job-duration"]
    #: seconds after which a job token is replaced before handing it to an activation
    token_refresh: float = _DEFAULTS["token-refresh"]
    tempurl: str = _DEFAULTS["tempurl"]
    #: 'token' hands activations the job's token (the whole account): never chosen silently
    worker_auth: str = _DEFAULTS["worker-auth"]

    def connection(self):
        """A new python-swiftclient Connection with these settings (one per thread)."""
        import swiftclient
        import swiftclient.client

        # swiftclient's request log shows the first 16 characters of tokens and keys by default
        swiftclient.client.logger_settings["reveal_sensitive_prefix"] = 0
        common = dict(retries=self.retries, starting_backoff=self.backoff,
                      max_backoff=max(self.backoff * 16, 1.0), timeout=self.timeout)
        connection = _connection_class()
        if self.auth_url:
            return connection(
                authurl=self.auth_url, user=self.user, key=self.key,
                auth_version=self.auth_version, os_options=dict(self.os_options),
                preauthurl=self.storage_url, **common,
            )
        return connection(preauthurl=self.storage_url, preauthtoken=self.token, **common)


_CONNECTION: type | None = None


def _connection_class() -> type:
    """swiftclient's Connection, retrying what it misses and with jittered delays (made once).

    swiftclient retries connection errors, 5xx, 408 and 429 a bounded number of times
    (``retries``) and re-authenticates on 401, but:

    - a connection that drops in the middle of a response body (urllib3's ``ProtocolError``)
      escapes its retries: here it is retried like a connection reset;
    - it sleeps exactly ``starting_backoff``, then twice that, up to ``max_backoff``, so clients
      that failed together would retry together: here both are read with a random factor in
      [0.5, 1.5), spreading each call's delays out.
    """
    global _CONNECTION
    if _CONNECTION is None:
        import http.client

        import requests.exceptions
        import swiftclient
        import urllib3.exceptions

        class Connection(swiftclient.Connection):
            """A swiftclient Connection that also retries cut bodies, with jittered delays."""

            def _retry(self, reset_func, func, *args, **kwargs):
                def call(*a, **kw):
                    try:
                        return func(*a, **kw)
                    except urllib3.exceptions.SSLError:
                        raise
                    except (urllib3.exceptions.HTTPError, http.client.HTTPException) as exc:
                        raise requests.exceptions.ConnectionError(
                            f"response cut short: {type(exc).__name__}") from exc

                return super()._retry(reset_func, call, *args, **kwargs)

            starting_backoff = _Jittered()
            max_backoff = _Jittered()

        _CONNECTION = Connection
    return _CONNECTION


class _Jittered:
    """An attribute set to a number and read back as that number times 0.5-1.5 at random."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, obj: Any, owner: type | None = None) -> float:
        return getattr(obj, self.slot) * random.uniform(0.5, 1.5)

    def __set__(self, obj: Any, value: float) -> None:
        setattr(obj, self.slot, value)


def resolve_settings(**options: Any) -> SwiftSettings:
    """Settings from keyword arguments, else dask config ``whisk.swift.*``, else the environment.

    Keyword arguments use underscores (``auth_url``) or the config spelling (``auth-url``).
    Raises :class:`SwiftConfigError` naming what to set; secrets are never echoed.
    """
    given = {name.replace("_", "-"): value for name, value in options.items() if value is not None}
    unknown = sorted(set(given) - set(_SOURCES))
    if unknown:
        raise SwiftConfigError(f"Unknown Swift option(s) {unknown}; valid: {sorted(_SOURCES)}")
    try:
        import dask.config

        configured = dask.config.get("whisk.swift", default=None) or {}
        # DASK_WHISK__SWIFT__AUTH_URL arrives as "auth_url": dask treats - and _ alike, so do we
        configured = {str(k).replace("_", "-"): v for k, v in configured.items()}
    except ImportError:
        configured = {}
    environ = {name: next((os.environ[e] for e in env_names if os.environ.get(e)), None)
               for name, env_names in _SOURCES.items()}
    layers = [given, configured, environ]
    raw: dict[str, Any] = {}
    for name in _SOURCES:
        value = next((layer[name] for layer in layers if layer.get(name) not in (None, "")), None)
        raw[name] = _DEFAULTS.get(name) if value is None else value
    # the first layer naming an endpoint decides how to authenticate: a token given as an
    # argument is not mixed with an auth URL from the environment, nor the other way round
    deciding = next((layer for layer in layers
                     if any(layer.get(k) for k in ("auth-url", "storage-url", "token"))), {})
    if deciding.get("auth-url"):
        if not (deciding.get("storage-url") or deciding.get("token")):
            raw["storage-url"] = raw["token"] = None
    elif deciding:
        raw["auth-url"] = None
    return _validate(raw)


def _validate(raw: dict[str, Any]) -> SwiftSettings:
    how = ("set ST_AUTH, ST_USER and ST_KEY (v1 auth); or OS_AUTH_URL, OS_USERNAME, OS_PASSWORD, "
           "OS_PROJECT_NAME, OS_USER_DOMAIN_NAME and OS_PROJECT_DOMAIN_NAME (Keystone v3); or "
           "OS_STORAGE_URL and OS_AUTH_TOKEN (pre-authenticated); or the same as dask config keys "
           "whisk.swift.auth-url, user, key, project-name, ..., storage-url, token")
    auth_url, storage_url, token = raw["auth-url"], raw["storage-url"], raw["token"]
    if not auth_url and not (storage_url and token):
        if storage_url or token:
            missing = "OS_AUTH_TOKEN (whisk.swift.token)" if storage_url else \
                "OS_STORAGE_URL (whisk.swift.storage-url)"
            raise SwiftConfigError(f"Swift is pre-authenticated only half-way: set {missing} too")
        raise SwiftConfigError(f"Swift is not configured: {how}")
    for name in ("auth-url", "storage-url"):
        url = raw[name]
        if url and urllib.parse.urlsplit(str(url)).scheme not in ("http", "https"):
            raise SwiftConfigError(f"whisk.swift.{name} must be an http(s) URL, got {scrub_url(url)!r}")
    version = str(raw["auth-version"] or "")
    os_options: dict[str, str] = {}
    if auth_url:
        if not version:
            path = urllib.parse.urlsplit(auth_url).path.rstrip("/")
            version = "3" if path.endswith("/v3") or raw["project-name"] else "1"
        version = {"1.0": "1", "v1": "1", "3.0": "3", "v3": "3"}.get(version, version)
        if version not in ("1", "3"):
            raise SwiftConfigError(f"Unsupported Swift auth version {version!r}: use 1 or 3")
        user_var, key_var = ("ST_USER", "ST_KEY") if version == "1" else ("OS_USERNAME", "OS_PASSWORD")
        for name, var in (("user", user_var), ("key", key_var)):
            if not raw[name]:
                raise SwiftConfigError(f"Swift auth URL is set but no {name}: set {var} "
                                       f"(or dask config whisk.swift.{name})")
        if version == "3":
            if not raw["project-name"]:
                raise SwiftConfigError("Keystone v3 auth needs a project: set OS_PROJECT_NAME "
                                       "(or whisk.swift.project-name)")
            os_options = {
                "project_name": raw["project-name"],
                "user_domain_name": raw["user-domain-name"] or "Default",
                "project_domain_name": raw["project-domain-name"] or "Default",
            }
            if raw["region-name"]:
                os_options["region_name"] = raw["region-name"]
    try:
        segment_size = int(raw["segment-size"])
        retries = int(raw["retries"])
        backoff, timeout = float(raw["backoff"]), float(raw["timeout"])
        max_job = float(raw["max-job-duration"])
        token_refresh = float(raw["token-refresh"])
    except (TypeError, ValueError) as exc:
        raise SwiftConfigError(f"Invalid number in whisk.swift settings: {exc}") from None
    if not 0 < segment_size <= MAX_OBJECT_SIZE:
        raise SwiftConfigError(f"whisk.swift.segment-size must be between 1 byte and 5 GiB, "
                               f"got {segment_size}")
    if retries < 0 or backoff < 0 or timeout <= 0 or max_job <= 0 or token_refresh <= 0:
        raise SwiftConfigError("whisk.swift.retries and backoff must be >= 0, timeout, "
                               "max-job-duration and token-refresh > 0")
    if raw["tempurl"] == "off":
        raise SwiftConfigError("whisk.swift.tempurl: off is now whisk.swift.worker-auth: token "
                               "(activations then get the job's token: the whole account)")
    if raw["tempurl"] not in TEMPURL_MODES:
        raise SwiftConfigError(f"whisk.swift.tempurl must be one of {TEMPURL_MODES}, "
                               f"got {raw['tempurl']!r}")
    if raw["worker-auth"] not in WORKER_AUTH_MODES:
        raise SwiftConfigError(f"whisk.swift.worker-auth must be one of {WORKER_AUTH_MODES}, "
                               f"got {raw['worker-auth']!r}")
    container = raw["container"]
    if container is not None and (not container or "/" in container):
        raise SwiftConfigError(f"whisk.swift.container must be a container name without '/', "
                               f"got {container!r}")
    return SwiftSettings(
        auth_url=auth_url, user=raw["user"], key=raw["key"], auth_version=version or "1",
        os_options=os_options, storage_url=storage_url, token=token, container=container,
        segment_size=segment_size, retries=retries, backoff=backoff, timeout=timeout,
        max_job_duration=max_job, token_refresh=token_refresh, tempurl=raw["tempurl"],
        worker_auth=raw["worker-auth"],
    )


def scrub_url(url: str) -> str:
    """A URL without query string or user info: signatures and tokens never reach a message."""
    parts = urllib.parse.urlsplit(str(url))
    host = parts.hostname or ""
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
