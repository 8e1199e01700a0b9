"""Action entities: validation of a PUT body, create/update/merge rules, and their JSON views.

Messages and rules follow OpenWhisk's controller: limits are checked against the configured
ranges, update merges limits field by field and bumps the patch version, the server decides
whether code is a zip, and it adds the ``provide-api-key`` and ``exec`` annotations.
"""
from __future__ import annotations

import base64
import binascii
import re
import time
from dataclasses import dataclass, field

from .runtimes import Runtimes
from .settings import ServerSettings

NAME_PATTERN = re.compile(r"\A([\w]|[\w][\w@ .&-]{0,254}[\w@.&-])\Z")
MALFORMED = "The request content was malformed:\n"


class ApiError(Exception):
    """An error answered to the client as ``{"error": message, "code": <request id>}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Action:
    """One stored action; ``key`` (name, version) selects the containers that may serve it."""

    namespace: str
    name: str
    version: str
    exec: dict
    annotations: list[dict]
    parameters: list[dict]
    limits: dict
    updated: int
    interpreter: str = field(repr=False, default="")

    @property
    def key(self) -> tuple[str, str]:
        """(name, version): what a warm container may serve."""
        return (self.name, self.version)

    def annotation(self, key: str) -> object:
        """The value of annotation ``key``, or None."""
        return next((a.get("value") for a in self.annotations if a.get("key") == key), None)

    def view(self, code: bool = True) -> dict:
        """The action as the REST API shows it (without the code when ``code`` is false)."""
        exec_view = {k: v for k, v in self.exec.items() if code or k != "code"}
        return {
            "namespace": self.namespace, "name": self.name, "version": self.version,
            "exec": exec_view, "annotations": self.annotations, "parameters": self.parameters,
            "limits": self.limits, "publish": False, "updated": self.updated,
        }

    def summary(self) -> dict:
        """The action as a list shows it (OpenWhisk's summary view: no parameters)."""
        view = self.view(code=False)
        del view["parameters"]
        view["exec"] = {"binary": self.exec["binary"]}
        return view


def check_name(name: str) -> None:
    """400 unless ``name`` is a valid OpenWhisk entity name (packages are not supported)."""
    if not NAME_PATTERN.match(name):
        raise ApiError(400, "The name of the entity contains illegal characters.")


def is_binary(code: str) -> bool:
    """OpenWhisk's rule: code that is valid base64 (length a multiple of 4) is a zip."""
    text = code.strip()
    if not text or len(text) % 4:
        return False
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _key_values(body: dict, name: str) -> list[dict] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(i, dict) and isinstance(i.get("key"), str) and "value" in i for i in value
    ):
        raise ApiError(400, f"{MALFORMED}{name} must be a list of {{\"key\", \"value\"}} objects")
    return [{"key": i["key"], "value": i["value"]} for i in value]


class ActionStore:
    """The actions of the server's namespace, validated against its settings and runtimes."""

    def __init__(self, settings: ServerSettings, runtimes: Runtimes) -> None:
        self.settings = settings
        self.runtimes = runtimes
        self.actions: dict[str, Action] = {}

    def get(self, name: str) -> Action:
        """The action ``name``; OpenWhisk's 404 when there is none."""
        try:
            return self.actions[name]
        except KeyError:
            raise ApiError(404, "The requested resource does not exist.") from None

    def delete(self, name: str) -> Action:
        """Remove the action ``name`` and return it (404 when there is none)."""
        action = self.get(name)
        del self.actions[name]
        return action

    def list(self, skip: int, limit: int) -> list[Action]:
        """Actions most recently updated first, ``limit`` of them after ``skip``."""
        ordered = sorted(self.actions.values(), key=lambda a: a.updated, reverse=True)
        return ordered[skip:skip + limit]

    def put(self, name: str, body: object, overwrite: bool) -> Action:
        """Create or (with ``overwrite``) update the action ``name`` from a PUT body."""
        check_name(name)
        if not isinstance(body, dict):
            raise ApiError(400, f"{MALFORMED}the body must be a JSON object")
        existing = self.actions.get(name)
        if existing is not None and not overwrite:
            raise ApiError(409, "resource already exists")
        exec_, interpreter = self._exec(body.get("exec"), required=existing is None)
        limits = self._limits(body.get("limits"), existing.limits if existing else None)
        parameters = _key_values(body, "parameters")
        annotations = _key_values(body, "annotations")
        if existing is None:
            annotations = annotations or []
            if not any(a["key"] == "provide-api-key" for a in annotations):
                annotations.append({"key": "provide-api-key", "value": False})
            version = "0.0.1"
        else:
            exec_ = exec_ or existing.exec
            interpreter = interpreter or existing.interpreter
            annotations = existing.annotations if annotations is None else annotations
            parameters = existing.parameters if parameters is None else parameters
            major, minor, patch = (int(p) for p in existing.version.split("."))
            version = f"{major}.{minor}.{patch + 1}"
        annotations = [a for a in annotations if a["key"] != "exec"]
        annotations.append({"key": "exec", "value": exec_["kind"]})
        action = Action(
            namespace=self.settings.namespace, name=name, version=version, exec=exec_,
            annotations=annotations, parameters=parameters or [], limits=limits,
            updated=int(time.time() * 1000), interpreter=interpreter,
        )
        self.actions[name] = action
        return action

    def _exec(self, value: object, required: bool) -> tuple[dict | None, str | None]:
        if value is None:
            if required:
                raise ApiError(400, "exec undefined")
            return None, None
        if not isinstance(value, dict) or not isinstance(value.get("kind"), str):
            raise ApiError(400, f"{MALFORMED}exec must be an object with a 'kind'")
        blackbox = value["kind"] == "blackbox"
        code = value.get("code")
        if blackbox and not (isinstance(code, str) and code.strip()):
            code = None  # an image's own action (the runtime then refuses /init without code)
        elif not isinstance(code, str) or not code:
            raise ApiError(400, f"{MALFORMED}exec.code must be a non-empty string")
        if code is not None and len(code) > self.settings.max_code_bytes:
            raise ApiError(
                413, f"Code larger than allowed: {len(code)} > {self.settings.max_code_bytes} bytes."
            )
        if blackbox:
            image = value.get("image")
            if not isinstance(image, str) or not image:
                raise ApiError(400, f"{MALFORMED}'image' must be a string defined in 'exec' for "
                                    f"'blackbox' actions")
            exec_ = {"kind": "blackbox", "image": image, "binary": bool(code) and is_binary(code)}
            if code is not None:
                exec_["code"] = code
            interpreter = self.settings.images.get(image, "")  # unknown: fails at invoke, as a pull
        else:
            try:
                kind = self.runtimes.resolve(value["kind"])
            except ValueError as exc:
                raise ApiError(400, f"{MALFORMED}{exc}") from None
            exec_ = {"kind": kind, "code": code, "binary": is_binary(code)}
            interpreter = self.runtimes.interpreters[kind]
        main = value.get("main")
        if main is not None:
            if not isinstance(main, str) or not main:
                raise ApiError(400, f"{MALFORMED}exec.main must be a non-empty string")
            exec_["main"] = main
        return exec_, interpreter

    def _limits(self, value: object, current: dict | None) -> dict:
        s = self.settings
        limits = dict(current or {"timeout": s.default_timeout_ms, "memory": s.default_memory_mb,
                                  "logs": s.default_logs_mb, "concurrency": 1})
        if value is None:
            return limits
        if not isinstance(value, dict):
            raise ApiError(400, f"{MALFORMED}limits must be an object")
        ranges = {
            "timeout": (s.min_timeout_ms, s.max_timeout_ms, "duration {} milliseconds", "{} milliseconds"),
            "memory": (s.min_memory_mb, s.max_memory_mb, "memory {} MB", "{} MB"),
            "logs": (0, s.max_logs_mb, "log size {} MB", "{} MB"),
            "concurrency": (1, 1, "concurrency {}", "{}"),
        }
        for name, (low, high, what, unit) in ranges.items():
            given = value.get(name)
            if given is None:
                continue
            if isinstance(given, bool) or not isinstance(given, (int, float)) or given != int(given):
                raise ApiError(400, f"{MALFORMED}{name} limit must be a whole number")
            given = int(given)
            if given < low:
                raise ApiError(400, f"{MALFORMED}requirement failed: {what.format(given)} "
                                    f"below allowed threshold of {unit.format(low)}")
            if given > high:
                raise ApiError(400, f"{MALFORMED}requirement failed: {what.format(given)} "
                                    f"exceeds allowed threshold of {unit.format(high)}")
            limits[name] = given
        return limits
