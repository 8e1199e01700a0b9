"""Where dask-whisk's settings come from, resolved once into small frozen objects.

OpenWhisk credentials are looked up, field by field, in this order: explicit arguments, the dask
config (``whisk.apihost``, ``whisk.auth``, ``whisk.namespace``; so ``DASK_WHISK__APIHOST`` works
through dask's environment mapping), the activation environment (``__OW_API_HOST``,
``__OW_API_KEY``, ``__OW_NAMESPACE``), the ``wsk`` CLI variables (``WHISK_APIHOST``,
``WHISK_AUTH``, ``WHISK_NAMESPACE``), and finally the ``wsk`` properties file
(``$WSK_CONFIG_FILE`` or ``~/.wskprops``). Nothing configured at all means "use the embedded local
server"; half a configuration is an error that says where we looked.

The package's dask config defaults live under ``whisk:`` (see :data:`SETTINGS`), registered with
``dask.config.update_defaults`` when this module is imported; :func:`reference` is the README's
table of them.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import dask.config

#: every ``whisk.*`` dask config key under its dotted name (kebab-case, as dask does): default
#: and meaning. The defaults below and the README's configuration reference are made from it.
SETTINGS: dict[str, tuple[Any, str]] = {
    "apihost": (None, "OpenWhisk API host, e.g. `https://openwhisk.example.org` or `127.0.0.1:3233`; "
                      "unset (with `auth`): the embedded local server"),
    "auth": (None, "OpenWhisk API key `uuid:key`"),
    "namespace": (None, "OpenWhisk namespace; unset: `_`, the caller's own"),
    "insecure": (False, "skip TLS certificate verification (self-signed deployments)"),
    "store": ("local", "where job data goes: `local` (a directory) or `swift`"),
    "local.root": (None, "the local store's directory, seen by the local server's containers too "
                           "(so not under /tmp, which each container has to itself); unset: "
                           "`dask-whisk-store` in /var/tmp (created private to you, refused if "
                           "another user owns it)"),
    "action": ("dask-whisk-worker", "name of the worker action"),
    "runtime": (None, "a runtime in the store (`dask-whisk runtime build`) whose packages every "
                      "activation of a job puts on its path first; unset: none "
                      "(`whisk_get(..., runtime=NAME)` for one job)"),
    "action-memory": (None, "MB of the worker action `whisk_get` deploys when it is missing; unset: "
                            "512, within the namespace's range"),
    "action-timeout": (None, "ms of the worker action `whisk_get` deploys; unset: 300000, within range"),
    "max-in-flight": (None, "cap on concurrent activations; unset: the namespace's limit (at most "
                            "twice `parallelism`)"),
    "parallelism": (None, "activations that really run at once, for fusion, batching and straggler "
                          "detection; unset: the namespace's limit (embedded server: the containers "
                          "its memory holds)"),
    "backups": (True, "launch a backup copy of a straggling activation; the first result wins"),
    "retries": (2, "extra attempts of a unit after a platform failure (never after your own "
                   "exceptions: `dask.annotate(retries=N)` for those)"),
    "fuse": (True, "group tasks into units (false: one task per activation, for comparison)"),
    "fuse-large-bytes": (2097152, "an output this large (bytes) pulls its consumers into its unit"),
    "fuse-unit-bytes": (8388608, "bytes of array chunks worth an activation, for graphs of numpy "
                                 "and Dask functions only: one starting from fewer spreads over "
                                 "fewer activations (0: always the whole parallelism)"),
    "unit-target-seconds": (0.5, "batch small ready units into activations of about this long"),
    "batch-max-units": (256, "at most this many units share one activation"),
    "cost.gb-second": (0.0000166667, "USD per GB-second a job report prices activations at (AWS "
                                     "Lambda x86, first tier, us-east-1, aws.amazon.com/lambda/pricing)"),
    "cost.million-requests": (0.20, "USD per million invocations (same source)"),
    "cost.vm-gb-hour": (0.012, "USD per GB-hour of an always-on VM, for the report's comparison (AWS "
                               "m5.large on demand, us-east-1: $0.096 an hour for 8 GB)"),
    "client.connection-limit": (None, "open HTTP connections; unset: from the open-files limit"),
    "client.retry-attempts": (12, "attempts per request while OpenWhisk answers 429 or 503"),
    "client.retry-max-seconds": (120, "total seconds a request may spend in 429/503 backoff"),
    "client.run-timeout": (900, "seconds `run()` waits for an activation record before giving up"),
}


def _nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` as ``{"a": {"b": 1}}``."""
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


#: dask config defaults for the ``whisk`` section
DEFAULTS: dict[str, Any] = {"whisk": _nested({k: default for k, (default, _) in SETTINGS.items()})}

dask.config.update_defaults(DEFAULTS)
# Without a distributed client dask.dataframe shuffles through partd on the client's disk, which
# activations cannot reach: shuffle with tasks unless the user chose otherwise.
dask.config.update_defaults({"dataframe": {"shuffle": {"method": "tasks"}}})



def _cell(value: Any) -> str:
    return "unset" if value is None else f"`{json.dumps(value)}`"


def _env(dotted: str) -> str:
    return "DASK_WHISK__" + "__".join(part.upper().replace("-", "_") for part in dotted.split("."))


def reference() -> str:
    """The README's configuration reference: every ``whisk.*`` key, its environment variable,
    default and meaning, made from :data:`SETTINGS` and the Swift store's settings."""
    from .store.swift_settings import _DEFAULTS as SWIFT_DEFAULTS, _SOURCES as SWIFT_SOURCES, MEANINGS

    lines = ["| dask config key | environment | default | meaning |", "|---|---|---|---|"]
    for dotted, (default, meaning) in SETTINGS.items():
        lines.append(f"| `whisk.{dotted}` | `{_env(dotted)}` | {_cell(default)} | {meaning} |")
    for key, sources in SWIFT_SOURCES.items():
        env = ", ".join(f"`{name}`" for name in (_env(f"swift.{key}"), *sources))
        lines.append(f"| `whisk.swift.{key}` | {env} | {_cell(SWIFT_DEFAULTS.get(key))} | {MEANINGS[key]} |")
    return "\n".join(lines)


_UNSET_HINT = (
    "Set both the API host and the API key in one of: arguments apihost=/auth=; dask config "
    "'whisk.apihost' and 'whisk.auth' (or DASK_WHISK__APIHOST and DASK_WHISK__AUTH); "
    "WHISK_APIHOST and WHISK_AUTH; or APIHOST= and AUTH= lines in ~/.wskprops "
    "(or the file named by WSK_CONFIG_FILE). Set neither to use the embedded local server."
)


_LABELS = {"apihost": "API host", "auth": "API key"}


class WhiskConfigError(ValueError):
    """The OpenWhisk configuration is incomplete or malformed; the message says what to set."""


def _mask_auth(auth: str) -> str:
    """``uuid:key`` with the key hidden, for display."""
    subject = auth.split(":", 1)[0]
    return f"{subject}:<hidden>"


def _check_auth(auth: str, origin: str) -> None:
    """Raise WhiskConfigError unless ``auth`` is ``<uuid>:<64-character key>``; never echo it."""
    subject, colon, key = auth.partition(":")
    problems = []
    if not colon:
        problems.append("it has no ':' between the UUID and the key")
    else:
        try:
            valid_uuid = len(subject) == 36 and str(uuid.UUID(subject)) == subject.lower()
        except ValueError:
            valid_uuid = False
        if not valid_uuid:
            problems.append(f"the part before ':' is not a UUID ({len(subject)} characters)")
        if len(key) != 64 or not key.isalnum() or not key.isascii():
            problems.append(f"the part after ':' is not a 64-character alphanumeric key "
                            f"({len(key)} characters)")
    if problems:
        raise WhiskConfigError(
            f"The OpenWhisk API key from {origin} is malformed: {'; '.join(problems)}. "
            "It must look like '<uuid>:<64-character key>', as printed by "
            "`wsk property get --auth` or `wskadmin user create`."
        )


def normalize_apihost(apihost: str, origin: str = "the apihost argument") -> str:
    """Return ``scheme://host[:port][/prefix]`` (https when no scheme), or raise WhiskConfigError."""
    text = apihost.strip()
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WhiskConfigError(
            f"The OpenWhisk API host from {origin} ({apihost!r}) is not a URL: use "
            "'https://host[:port]' or 'http://127.0.0.1:3233' (no scheme means https)."
        )
    if parts.username is not None or parts.password is not None:
        raise WhiskConfigError(
            f"The OpenWhisk API host from {origin} carries credentials: put them in the API key "
            "('whisk.auth' / WHISK_AUTH / AUTH=), not in the host URL."
        )
    if parts.query or parts.fragment:
        raise WhiskConfigError(
            f"The OpenWhisk API host from {origin} ({apihost!r}) has a query or fragment: "
            "give only 'scheme://host[:port]'."
        )
    path = parts.path.rstrip("/")
    if path.endswith("/api/v1"):
        path = path[: -len("/api/v1")]
    return f"{parts.scheme}://{parts.netloc}{path}"


@dataclass(frozen=True)
class WhiskConfig:
    """How to reach one OpenWhisk namespace; the API key never appears in its repr."""

    apihost: str
    auth: str = field(repr=False)
    namespace: str = "_"
    insecure: bool = False
    origin: str = field(default="arguments", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "apihost", normalize_apihost(self.apihost))
        _check_auth(self.auth, "the auth argument")
        namespace = (self.namespace or "_").strip()
        object.__setattr__(self, "namespace", namespace or "_")
        object.__setattr__(self, "insecure", bool(self.insecure))

    def __repr__(self) -> str:
        return (f"WhiskConfig(apihost={self.apihost!r}, auth={_mask_auth(self.auth)!r}, "
                f"namespace={self.namespace!r}, insecure={self.insecure!r}, origin={self.origin!r})")

    __str__ = __repr__

    @property
    def api_url(self) -> str:
        """Base of the REST API, ``<apihost>/api/v1``."""
        return f"{self.apihost}/api/v1"

    @property
    def namespace_url(self) -> str:
        """``<api_url>/namespaces/<namespace>``, the prefix of every entity path."""
        return f"{self.api_url}/namespaces/{quote(self.namespace, safe='')}"


def read_wskprops(path: str | os.PathLike[str]) -> dict[str, str]:
    """Parse a ``wsk`` properties file (``KEY=VALUE`` lines) into a dict; comments are skipped."""
    props: dict[str, str] = {}
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        props[key.strip().upper()] = value
    return props


def _wskprops_source() -> tuple[str, Callable[[str], str | None]]:
    """The properties file as a lookup, named for error messages."""
    named = os.environ.get("WSK_CONFIG_FILE")
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise WhiskConfigError(
                f"WSK_CONFIG_FILE names {str(path)!r}, which is not a file: point it at a wsk "
                "properties file (APIHOST=..., AUTH=...) or unset it."
            )
        origin = f"WSK_CONFIG_FILE ({path})"
    else:
        path = Path.home() / ".wskprops"
        origin = "~/.wskprops"
    props = read_wskprops(path) if path.is_file() else {}
    names = {"apihost": "APIHOST", "auth": "AUTH", "namespace": "NAMESPACE"}
    return origin, lambda name: props.get(names[name])


def _env_source(names: Mapping[str, str]) -> Callable[[str], str | None]:
    return lambda name: os.environ.get(names[name])


def _dask_source(name: str) -> str | None:
    value = dask.config.get(f"whisk.{name}", None)
    return None if value is None else str(value)


def find_whisk_config(apihost: str | None = None, auth: str | None = None,
                      namespace: str | None = None, *,
                      insecure: bool | None = None) -> WhiskConfig | None:
    """Resolve the OpenWhisk configuration; None when nothing at all is configured.

    Each field comes from the first place that sets it (see the module docstring). Raises
    WhiskConfigError when only one of host and key is found, or either is malformed.
    """
    explicit = {"apihost": apihost, "auth": auth, "namespace": namespace}
    sources: list[tuple[str, Callable[[str], str | None]]] = [
        ("arguments", explicit.get),
        ("dask config 'whisk.*' (DASK_WHISK__*)", _dask_source),
        ("__OW_API_HOST/__OW_API_KEY/__OW_NAMESPACE",
         _env_source({"apihost": "__OW_API_HOST", "auth": "__OW_API_KEY",
                      "namespace": "__OW_NAMESPACE"})),
        ("WHISK_APIHOST/WHISK_AUTH/WHISK_NAMESPACE",
         _env_source({"apihost": "WHISK_APIHOST", "auth": "WHISK_AUTH",
                      "namespace": "WHISK_NAMESPACE"})),
        _wskprops_source(),
    ]
    found: dict[str, tuple[str, str]] = {}
    for field_name in ("apihost", "auth", "namespace"):
        for origin, lookup in sources:
            value = lookup(field_name)
            if value is not None and str(value).strip():
                found[field_name] = (str(value).strip(), origin)
                break
    if "apihost" not in found and "auth" not in found:
        return None
    places = "; ".join(origin for origin, _ in sources)
    for present, missing in (("apihost", "auth"), ("auth", "apihost")):
        if present in found and missing not in found:
            raise WhiskConfigError(
                f"Found the OpenWhisk {_LABELS[present]} in {found[present][1]} but no "
                f"{_LABELS[missing]} anywhere (looked in: {places}). {_UNSET_HINT}"
            )
    host, host_origin = found["apihost"]
    key, key_origin = found["auth"]
    normalized_host = normalize_apihost(host, host_origin)
    _check_auth(key, key_origin)
    if insecure is None:
        insecure = bool(dask.config.get("whisk.insecure", False))
    ns, ns_origin = found.get("namespace", ("_", "default"))
    origin = f"apihost: {host_origin}; auth: {key_origin}; namespace: {ns_origin}"
    return WhiskConfig(apihost=normalized_host, auth=key, namespace=ns, insecure=insecure,
                       origin=origin)


def load_whisk_config(apihost: str | None = None, auth: str | None = None,
                      namespace: str | None = None, *,
                      insecure: bool | None = None) -> WhiskConfig:
    """Like :func:`find_whisk_config`, but an absent configuration is a WhiskConfigError too."""
    config = find_whisk_config(apihost, auth, namespace, insecure=insecure)
    if config is None:
        raise WhiskConfigError(f"No OpenWhisk configuration found. {_UNSET_HINT}")
    return config


def setting(name: str, override: Any = None) -> Any:
    """``override`` if given, else the dask config value ``whisk.<name>`` (e.g. ``store``)."""
    return override if override is not None else dask.config.get(f"whisk.{name}")


def _open_files_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 16


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class ClientSettings:
    """Tunables of the OpenWhisk REST client, resolved once from the ``whisk.client`` config."""

    connection_limit: int = 1024
    retry_attempts: int = 12
    retry_max_seconds: float = 120.0
    run_timeout: float = 900.0
    max_in_flight: int | None = None

    def __post_init__(self) -> None:
        for name in ("connection_limit", "retry_attempts"):
            if int(getattr(self, name)) < 1:
                raise WhiskConfigError(f"whisk client setting {name} must be >= 1, "
                                       f"got {getattr(self, name)!r}")
        if self.max_in_flight is not None and int(self.max_in_flight) < 1:
            raise WhiskConfigError(
                f"'whisk.max-in-flight' must be a positive integer or null, got {self.max_in_flight!r}"
            )

    @classmethod
    def from_dask_config(cls, **overrides: Any) -> "ClientSettings":
        """Read ``whisk.client.*`` and ``whisk.max-in-flight``; keyword overrides win when not None."""
        limit = dask.config.get("whisk.client.connection-limit", None)
        if limit is None:
            # Each in-flight blocking call holds a socket: stay well inside the open-files limit.
            limit = max(16, min(10_000, _open_files_limit() // 2))
        values = {
            "connection_limit": int(limit),
            "retry_attempts": int(dask.config.get("whisk.client.retry-attempts")),
            "retry_max_seconds": float(dask.config.get("whisk.client.retry-max-seconds")),
            "run_timeout": float(dask.config.get("whisk.client.run-timeout")),
            "max_in_flight": _optional_int(dask.config.get("whisk.max-in-flight", None)),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def add_whisk_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--apihost/--auth/--namespace/--insecure`` options every OpenWhisk command takes."""
    parser.add_argument("--apihost", help="OpenWhisk API host (default: from the configuration)")
    parser.add_argument("--auth", help="API key uuid:key (default: from the configuration)")
    parser.add_argument("--namespace", help="namespace (default: the key's own, _)")
    parser.add_argument("--insecure", action="store_true", default=None,
                        help="skip TLS certificate verification")


def whisk_config_from_args(args: argparse.Namespace) -> WhiskConfig:
    """The configuration a command's options (over the usual sources) name; raises WhiskConfigError."""
    return load_whisk_config(args.apihost, args.auth, args.namespace, insecure=args.insecure)


__all__ = [
    "DEFAULTS", "WhiskConfig", "WhiskConfigError", "ClientSettings", "add_whisk_arguments",
    "find_whisk_config", "load_whisk_config", "normalize_apihost", "read_wskprops", "setting",
    "whisk_config_from_args",
]
