"""Build the worker action's artifact and create or update the action on OpenWhisk.

The artifact is a zip with ``__main__.py`` (the worker's entry point) and the ``dask_whisk``
modules the worker imports at its root. For a real deployment it also carries a ``virtualenv/``
of Linux x86-64 wheels for the runtime's Python: the stock Python images have no dask, numpy or
cloudpickle. The small zip (no virtualenv) is what the local server runs with the host's packages,
and what a blackbox image built from ``worker_action/Dockerfile`` runs.
"""
from __future__ import annotations

import argparse
import ast
import asyncio
import base64
import hashlib
import importlib.metadata
import importlib.resources
import io
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import dask_whisk

from .config import add_whisk_arguments, whisk_config_from_args

logger = logging.getLogger(__name__)

#: OpenWhisk refuses action code over 48 MB, base64 length counted (413)
MAX_CODE_BYTES = 48 * 1024 * 1024

DEFAULT_ACTION = "dask-whisk-worker"
#: 512 MB, the default ceiling: dask + numpy take ~100 MB once imported, and a unit holds its
#: inputs and outputs in memory; on most deployments CPU share grows with memory too
DEFAULT_MEMORY_MB = 512
#: 300 s, the default ceiling: billing counts only the time used, the scheduler keeps its own
#: per-unit deadline, and a cold start's /init (unzip, imports) counts against this limit
DEFAULT_TIMEOUT_MS = 300_000

#: action annotations that record what the worker was built for
VERSION_ANNOTATION = "dask-whisk-version"
PYTHON_ANNOTATION = "dask-whisk-python"
CODE_ANNOTATION = "dask-whisk-code"

#: the blackbox base image the Dockerfile pins (openwhisk-runtime-python release 1.20.0)
RUNTIME_IMAGE_TAG = "1.20.0"

#: top-level import name -> distribution the worker's virtualenv installs for it
WORKER_IMPORTS = {
    "dask": "dask",
    "cloudpickle": "cloudpickle",
    "numpy": "numpy",
    "toolz": "toolz",
    "tlz": "toolz",
    "yaml": "pyyaml",
}

#: Linux x86-64 platforms the runtime images can load (Debian bookworm, glibc 2.36; older
#: buster-based images have glibc 2.28): every manylinux tag up to glibc 2.28
WHEEL_PLATFORMS = (
    [f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)]
    + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
)

#: parts of installed packages the worker never loads (tests, typing stubs, C headers, caches)
_TRIM_DIRS = {"tests", "__pycache__"}
_TRIM_PATHS = ("numpy/_core/include/", "numpy/_core/lib/", "numpy/f2py/", "numpy/_pyinstaller/",
               "numpy/doc/", "numpy/distutils/", "numpy/random/_examples/")
_TRIM_SUFFIXES = (".pyi", ".pyc", ".pxd", ".h", ".c", ".pyx")

#: a fixed timestamp makes the same inputs give the same zip bytes
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class DeployError(RuntimeError):
    """The worker action cannot be built or deployed; the message says what to do."""


def host_python() -> str:
    """``3.X``, the minor version of this interpreter (cloudpickle needs the same on both sides)."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _check_python(python: str) -> str:
    if not re.fullmatch(r"3\.\d{1,2}", python):
        raise DeployError(f"--python must look like '3.11' (a Python 3 minor version), got {python!r}.")
    return python


def runtime_kind(python: str) -> str:
    """The OpenWhisk runtime kind for a Python minor version, e.g. ``python:3.11``."""
    return f"python:{_check_python(python)}"


def deploy_command(name: str, python: str) -> str:
    """The command a user runs to (re)deploy the worker action for this client."""
    extra = "" if name == DEFAULT_ACTION else f" --name {name}"
    return f"dask-whisk deploy{extra} --python {python}"


# -- the worker's own files -------------------------------------------------------------------

def _package_root() -> Path:
    return Path(importlib.resources.files("dask_whisk"))  # type: ignore[arg-type]


def _module_file(module: str) -> Path | None:
    """The source file of ``dask_whisk[.x.y]``, or None when it does not exist."""
    parts = module.split(".")[1:]
    base = _package_root().joinpath(*parts)
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _runtime_statements(body: list[ast.stmt]) -> Iterable[ast.stmt]:
    """Statements run at import: module level, inside if/try/with and class bodies; not functions."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _runtime_statements(node.orelse)
            continue
        yield node
        for field_name in ("body", "orelse", "finalbody", "handlers"):
            children = getattr(node, field_name, None)
            if isinstance(children, list):
                stmts = [c for c in children if isinstance(c, ast.stmt)]
                for handler in children:
                    if isinstance(handler, ast.ExceptHandler):
                        stmts.extend(handler.body)
                yield from _runtime_statements(stmts)


def _imports_at_load(source: str, module: str, is_package: bool) -> set[str]:
    """Absolute names of the modules ``module`` imports when it is loaded."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in _runtime_statements(ast.parse(source).body):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            # "from pkg import sub" imports the submodule when one exists by that name
            names.update(f"{base}.{alias.name}" for alias in node.names
                         if base.split(".")[0] == "dask_whisk"
                         and _module_file(f"{base}.{alias.name}") is not None)
    return names


def worker_roots() -> list[str]:
    """The ``dask_whisk`` modules the worker loads: the package, its protocol, every store backend."""
    from dask_whisk.store import BACKENDS

    roots = ["dask_whisk", "dask_whisk.protocol", "dask_whisk.store"]
    for kind, module in sorted(BACKENDS.items()):
        if _module_file(module) is None:
            logger.warning("store backend %r (%s) is not installed: the worker action built now "
                           "cannot use it", kind, module)
        else:
            roots.append(module)
    return roots


def worker_files() -> dict[str, bytes]:
    """Zip name -> content of ``__main__.py`` and of every ``dask_whisk`` module the worker loads.

    The set is the import closure of :func:`worker_roots` and of ``worker_action/__main__.py``;
    a third-party module imported at load time that the worker's virtualenv lacks is an error,
    so the action never fails at cold start on a missing import.
    """
    main_source = (importlib.resources.files("worker_action") / "__main__.py").read_bytes()
    files: dict[str, bytes] = {"__main__.py": main_source}
    pending: list[tuple[str, str, bytes, bool]] = [("__main__", "worker_action/__main__.py",
                                                     main_source, False)]
    seen: set[str] = set()
    for module in worker_roots():
        pending.append(_load_module(module, "the worker action"))
    while pending:
        module, arcname, source, is_package = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        if module != "__main__":
            files[arcname] = source
        for imported in sorted(_imports_at_load(source.decode("utf-8"), module, is_package)):
            top = imported.split(".")[0]
            if top == "dask_whisk":
                parts = imported.split(".")
                for depth in range(1, len(parts) + 1):  # a submodule's parents load first
                    name = ".".join(parts[:depth])
                    if name not in seen and _module_file(name) is not None:
                        pending.append(_load_module(name, arcname))
            elif top not in WORKER_IMPORTS and top not in sys.stdlib_module_names and top:
                raise DeployError(
                    f"{arcname} imports {imported!r} when it loads, but the worker action does not "
                    f"ship it (it ships only {sorted(set(WORKER_IMPORTS.values()))} and the "
                    "standard library). Import it inside the function that needs it, or add it to "
                    "dask_whisk.deploy.WORKER_IMPORTS if the worker really needs it."
                )
    return dict(sorted(files.items()))


def _load_module(module: str, imported_by: str) -> tuple[str, str, bytes, bool]:
    path = _module_file(module)
    if path is None:
        raise DeployError(f"{imported_by} needs the module {module}, which is not installed: "
                          "reinstall dask-whisk (pip install -e .).")
    arcname = str(PurePosixPath(*path.relative_to(_package_root().parent).parts))
    return module, arcname, path.read_bytes(), path.name == "__init__.py"


def code_digest(files: dict[str, bytes]) -> str:
    """A short content hash of the worker's own files (recorded on the action)."""
    digest = hashlib.sha256()
    for name, content in sorted(files.items()):
        digest.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
    return digest.hexdigest()[:16]


# -- the virtualenv ------------------------------------------------------------------------

def worker_requirements(python: str) -> list[str]:
    """Requirement lines for the worker's virtualenv.

    For the client's own Python they pin the versions installed here, so both sides of the wire
    run the same dask, cloudpickle and numpy; for another Python they name the latest releases.
    """
    pin = _check_python(python) == host_python()
    lines = []
    for dist in sorted(set(WORKER_IMPORTS.values())):
        if pin:
            try:
                lines.append(f"{dist}=={importlib.metadata.version(dist)}")
                continue
            except importlib.metadata.PackageNotFoundError:
                pass
        lines.append(dist)
    return lines


def default_cache_dir() -> Path:
    """Where downloaded wheels are kept between builds (``$XDG_CACHE_HOME/dask-whisk``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dask-whisk"


def download_wheels(requirements: list[str], python: str, cache_dir: Path) -> list[Path]:
    """Linux x86-64 wheels for ``requirements`` and their dependencies, for CPython ``python``.

    Wheels and a manifest per requirement set are cached under ``cache_dir/wheels``: a second
    build with the same requirements asks no index at all.
    """
    abi = "cp" + python.replace(".", "")
    wheel_dir = cache_dir / "wheels" / f"{abi}-manylinux_x86_64"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256("\n".join([abi, *WHEEL_PLATFORMS, *requirements]).encode()).hexdigest()[:16]
    manifest = wheel_dir / f"manifest-{key}.json"
    if manifest.is_file():
        names = json.loads(manifest.read_text())
        paths = [wheel_dir / name for name in names]
        if all(p.is_file() for p in paths):
            return paths
    command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
               "--only-binary=:all:", "--implementation", "cp", "--python-version", python,
               "--abi", abi, "--abi", "abi3", "--abi", "none",
               *[arg for platform in WHEEL_PLATFORMS for arg in ("--platform", platform)],
               "--dest", str(wheel_dir), *requirements]
    done = subprocess.run(command, capture_output=True, text=True, cwd=wheel_dir)
    if done.returncode != 0:
        raise DeployError(
            f"pip could not download Linux x86-64 wheels for Python {python} of "
            f"{' '.join(requirements)}:\n{done.stderr.strip()[-2000:]}\n"
            "Check the network access to the package index, or choose another --python."
        )
    # pip names every wheel of the resolution, fetched now or found in the cache directory
    names = sorted({PurePosixPath(match).name for match in
                    re.findall(r"^\s*(?:Saved|File was already downloaded) (\S+\.whl)\s*$",
                               done.stdout, flags=re.MULTILINE)})
    paths = [wheel_dir / name for name in names]
    missing = [p.name for p in paths if not p.is_file()]
    if not names or missing:
        raise DeployError(f"pip's output named no wheels, or wheels it did not save in {wheel_dir} "
                          f"({missing}); its output ended with:\n{done.stdout.strip()[-1000:]}")
    manifest.write_text(json.dumps(names))
    return paths


def activate_this(python: str) -> bytes:
    """``bin/activate_this.py`` from the ``virtualenv`` package, for a ``python`` environment.

    The runtime's launcher executes it to put ``virtualenv/lib/python3.X/site-packages`` on
    ``sys.path``; it must come from virtualenv (``python -m venv`` writes none).
    """
    import virtualenv

    interpreter = sys.executable if python == host_python() else f"python{python}"
    with tempfile.TemporaryDirectory(prefix="dask-whisk-venv-") as tmp:
        target = Path(tmp) / "virtualenv"
        try:
            virtualenv.cli_run([str(target), "--quiet", "--no-seed", "--no-periodic-update",
                                "--activators", "python", "--python", interpreter],
                               setup_logging=False)
        except (RuntimeError, SystemExit) as exc:
            raise DeployError(
                f"virtualenv could not create an environment for Python {python} ({exc}): "
                f"install python{python} on this machine, or build with --python {host_python()}."
            ) from exc
        script = target / "bin" / "activate_this.py"
        if not script.is_file():
            raise DeployError(f"virtualenv wrote no {script.name}; upgrade it (pip install -U virtualenv).")
        return script.read_bytes()


def _trimmed(relative: str) -> bool:
    """Whether a site-packages file is something the worker never loads."""
    parts = relative.split("/")
    return (any(part in _TRIM_DIRS for part in parts[:-1])
            or relative.endswith(_TRIM_SUFFIXES)
            or any(relative.startswith(prefix) for prefix in _TRIM_PATHS))


def _wheel_members(wheel: Path) -> Iterable[tuple[str, bytes, int]]:
    """(site-packages path, content, unix mode) of a wheel's importable files, trimmed."""
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            name = info.filename
            first, _, rest = name.partition("/")
            if first.endswith(".data"):
                kind, _, inner = rest.partition("/")
                if kind not in ("purelib", "platlib"):
                    continue  # scripts, headers, data files: not needed to import
                name = inner
            if _trimmed(name):
                continue
            yield name, archive.read(info), (info.external_attr >> 16) or 0o644


# -- the zip -------------------------------------------------------------------------------

def _add(archive: zipfile.ZipFile, name: str, content: bytes, mode: int = 0o644) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (mode & 0xFFFF) << 16
    archive.writestr(info, content)


def encoded_size(code: bytes) -> int:
    """The size OpenWhisk counts against its code limit: the base64 length."""
    return (len(code) + 2) // 3 * 4


def build_action_zip(path: str | None = None, *, with_dependencies: bool = True,
                     python: str | None = None, cache_dir: str | os.PathLike[str] | None = None) -> bytes:
    """The worker action's zip (written to ``path`` too when given).

    ``with_dependencies=False`` gives the small zip (``__main__.py`` + ``dask_whisk`` modules)
    for the local server or a blackbox image; ``True`` adds ``virtualenv/`` with the worker's
    dependencies as manylinux x86-64 wheels for CPython ``python`` (default: this interpreter's).
    """
    python = _check_python(python or host_python())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in worker_files().items():
            _add(archive, name, content)
        if with_dependencies:
            cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
            wheels = download_wheels(worker_requirements(python), python, cache)
            _add(archive, "virtualenv/bin/activate_this.py", activate_this(python))
            site = f"virtualenv/lib/python{python}/site-packages"
            for wheel in wheels:
                for name, content, mode in _wheel_members(wheel):
                    _add(archive, f"{site}/{name}", content, mode)
    code = buffer.getvalue()
    if encoded_size(code) > MAX_CODE_BYTES:
        raise DeployError(
            f"The worker action's zip is {len(code):,} bytes ({encoded_size(code):,} in base64), over "
            f"OpenWhisk's {MAX_CODE_BYTES:,}-byte code limit: build a blackbox image from "
            "worker_action/Dockerfile and deploy with --image instead."
        )
    if path is not None:
        Path(path).write_bytes(code)
    return code


# -- the action ----------------------------------------------------------------------------

class WorkerActionMismatch(DeployError):
    """The deployed worker action was built for another dask-whisk version or Python."""


def _annotation(action: dict[str, Any], key: str) -> Any:
    for item in action.get("annotations") or []:
        if item.get("key") == key:
            return item.get("value")
    return None


def _fit_limit(label: str, unit: str, requested: int | None, default: int,
               low: int | None, high: int | None, flag: str, log: Callable[[str], None]) -> int:
    """``requested`` if within the namespace's range (else an error), or the default clamped to it."""
    if requested is not None:
        if (low is not None and requested < low) or (high is not None and requested > high):
            raise DeployError(
                f"The action {label} {requested} {unit} is outside this deployment's range "
                f"{low}..{high} {unit}: choose {flag} within it, or have the operator raise the "
                f"range (helm/ansible action limits; code defaults 128..512 MB, 100..300000 ms)."
            )
        return requested
    value = default
    if high is not None and value > high:
        value = high
    if low is not None and value < low:
        value = low
    if value != default:
        log(f"the namespace allows {label} {low}..{high} {unit}: using {value} {unit} "
            f"instead of the default {default}")
    return value


async def _namespace_limits(client: Any) -> dict[str, Any]:
    from .openwhisk import WhiskNotFound

    try:
        return dict(await client.limits())
    except WhiskNotFound:
        return {}  # deployments older than the limits route: OpenWhisk validates at PUT


def offered_kinds(info: dict[str, Any]) -> list[str] | None:
    """The action kinds in a deployment description (``GET /``), or None if it lists none."""
    runtimes = info.get("runtimes")
    if not isinstance(runtimes, dict):
        return None
    kinds = [rt["kind"] for family in runtimes.values() if isinstance(family, list)
             for rt in family if isinstance(rt, dict) and isinstance(rt.get("kind"), str)]
    return sorted(kinds) or None


async def deployment_info(client: Any) -> dict[str, Any] | None:
    """The deployment's description (``GET /``); None when it gives none (no connection: raises).

    A gateway may expose only ``/api/v1``: then OpenWhisk's own checks at PUT decide.
    """
    from .openwhisk import WhiskConnectionError, WhiskError, WhiskTimeout

    try:
        return await client.info()
    except (WhiskConnectionError, WhiskTimeout):
        raise
    except WhiskError as exc:
        logger.debug("the deployment does not describe itself at GET / (%s)", exc)
        return None


def blackbox_advice(python: str) -> str:
    """What to do when the deployment has no ``python:<python>`` kind: a blackbox image."""
    return (f"cloudpickle needs the worker to run the client's Python {python}: build a blackbox "
            f"image with `docker build -f worker_action/Dockerfile --build-arg PYTHON={python} "
            f"--build-arg REQUIREMENTS=\"$(dask-whisk deploy --print-requirements --python {python})\" "
            f"-t ORG/dask-whisk-worker:TAG worker_action`, push it, then run `dask-whisk deploy "
            f"--image ORG/dask-whisk-worker:TAG --python {python}` (or use a client with a Python "
            f"the deployment offers)")


async def deploy_worker_action(client: Any, name: str = DEFAULT_ACTION, *, local: bool = False,
                               python: str | None = None, image: str | None = None,
                               memory_mb: int | None = None, timeout_ms: int | None = None,
                               provide_api_key: bool = False,
                               cache_dir: str | os.PathLike[str] | None = None,
                               log: Callable[[str], None] = logger.info) -> dict[str, Any]:
    """Create or update the worker action and return OpenWhisk's record of it.

    ``local``: the small zip, run by the local server with the host's packages. ``image``: a
    blackbox image (from worker_action/Dockerfile) carrying the dependencies, with the small zip
    as code. Otherwise the full zip for the ``python:<python>`` runtime.
    """
    from .openwhisk import WhiskBadRequest, WhiskPayloadTooLarge

    python = _check_python(python or host_python())
    limits = await _namespace_limits(client)
    memory = _fit_limit("memory", "MB", memory_mb, DEFAULT_MEMORY_MB, limits.get("minActionMemory"),
                        limits.get("maxActionMemory"), "--memory", log)
    timeout = _fit_limit("timeout", "ms", timeout_ms, DEFAULT_TIMEOUT_MS,
                         limits.get("minActionTimeout"), limits.get("maxActionTimeout"),
                         "--timeout", log)
    kind = "blackbox" if image else runtime_kind(python)
    if image is None:  # say so before spending a minute building a zip nobody can run
        info = await deployment_info(client)
        kinds = offered_kinds(info) if info is not None else None
        if kinds is not None and kind not in kinds:
            python_kinds = [k for k in kinds if k.startswith("python:")] or ["none"]
            raise DeployError(
                f"{client.config.apihost} does not offer the runtime kind {kind!r} (its Python "
                f"kinds: {', '.join(python_kinds)}). {blackbox_advice(python)}."
            )
    with_dependencies = not local and image is None
    code = await asyncio.to_thread(build_action_zip, with_dependencies=with_dependencies,
                                   python=python, cache_dir=cache_dir)
    annotations = [
        {"key": VERSION_ANNOTATION, "value": dask_whisk.__version__},
        {"key": PYTHON_ANNOTATION, "value": python},
        {"key": CODE_ANNOTATION, "value": code_digest(worker_files())},
        {"key": "provide-api-key", "value": bool(provide_api_key)},
    ]
    try:
        action = await client.put_action(
            name, code=base64.b64encode(code).decode("ascii"), kind=kind, main="main", binary=True,
            image=image, limits={"memory": memory, "timeout": timeout}, annotations=annotations,
            overwrite=True)
    except WhiskBadRequest as exc:
        if kind in str(exc) and image is None:
            raise DeployError(
                f"{client.config.apihost} does not offer the runtime kind {kind!r} ({exc.message}). "
                f"{blackbox_advice(python)}."
            ) from None
        raise
    except WhiskPayloadTooLarge as exc:
        raise DeployError(
            f"{client.config.apihost} refused the {encoded_size(code):,}-byte (base64) worker code "
            f"({exc.message}): deploy a blackbox image from worker_action/Dockerfile with --image."
        ) from None
    what = "image " + image if image else ("small zip" if not with_dependencies else "zip with virtualenv")
    log(f"deployed the worker action {name} to {client.config.apihost} ({kind}, {what}, "
        f"{len(code) / 1e6:.1f} MB, memory {memory} MB, timeout {timeout} ms)")
    return action


def check_worker_action(action: dict[str, Any], name: str, python: str | None = None) -> None:
    """Raise WorkerActionMismatch unless ``action`` was built for this dask-whisk and Python."""
    python = python or host_python()
    found_version = _annotation(action, VERSION_ANNOTATION)
    found_python = _annotation(action, PYTHON_ANNOTATION)
    kind = (action.get("exec") or {}).get("kind")
    if kind not in (None, "blackbox") and isinstance(kind, str) and kind.startswith("python:"):
        found_python = found_python or kind.partition(":")[2]
    problems = []
    if found_version is None:
        problems.append("it carries no dask-whisk-version annotation (was it deployed by dask-whisk?)")
    elif found_version != dask_whisk.__version__:
        problems.append(f"it was built for dask-whisk {found_version}, this client is "
                        f"{dask_whisk.__version__}")
    if found_python != python:
        problems.append(f"it runs Python {found_python}, this client runs Python {python} "
                        "(cloudpickle needs the same minor version on both sides)")
    if kind not in (None, "blackbox") and kind != runtime_kind(python):
        problems.append(f"its runtime kind is {kind!r}, expected {runtime_kind(python)!r}")
    if problems:
        raise WorkerActionMismatch(
            f"The worker action {name!r} does not match this client: {'; '.join(problems)}. "
            f"Redeploy it with `{deploy_command(name, python)}` (add --image IMG if it is a "
            f"blackbox action), or set 'whisk.action' to another action name."
        )


async def ensure_worker_action(client: Any, name: str = DEFAULT_ACTION, *, local: bool,
                               memory_mb: int | None = None, timeout_ms: int | None = None,
                               log: Callable[[str], None] = logger.info) -> dict[str, Any]:
    """Make sure the worker action exists and matches this client; return its record.

    A missing action is deployed (``local``: the small zip; else the full zip). On the local
    server an outdated action is simply redeployed; on a real deployment a version or Python
    mismatch is refused with the command that fixes it, since the action may serve other users.
    """
    from .openwhisk import WhiskNotFound

    try:
        action = await client.get_action(name, code=False)
    except WhiskNotFound:
        return await deploy_worker_action(client, name, local=local, memory_mb=memory_mb,
                                          timeout_ms=timeout_ms, log=log)
    current = code_digest(worker_files())
    if local:
        try:
            check_worker_action(action, name)
            stale = _annotation(action, CODE_ANNOTATION) != current
        except WorkerActionMismatch:
            stale = True
        if stale:
            return await deploy_worker_action(client, name, local=True, memory_mb=memory_mb,
                                              timeout_ms=timeout_ms, log=log)
        return action
    check_worker_action(action, name)
    if _annotation(action, CODE_ANNOTATION) != current:
        logger.warning("the worker action %s was built from other dask-whisk %s sources than this "
                       "client's; if jobs fail, redeploy it with `%s`", name,
                       dask_whisk.__version__, deploy_command(name, host_python()))
    return action


# -- command line --------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``dask-whisk deploy``."""
    parser.add_argument("--name", default=None,
                        help=f"action name (default: dask config 'whisk.action', {DEFAULT_ACTION})")
    parser.add_argument("--memory", type=int, metavar="MB",
                        help=f"action memory limit (default {DEFAULT_MEMORY_MB}, within the namespace's range)")
    parser.add_argument("--timeout", type=int, metavar="MS",
                        help=f"action time limit (default {DEFAULT_TIMEOUT_MS}, within the namespace's range)")
    parser.add_argument("--provide-api-key", action="store_true",
                        help="give activations __OW_API_KEY (not needed by the worker; off by default)")
    parser.add_argument("--image", metavar="ORG/IMG:TAG",
                        help="deploy as a blackbox action on this image (built from worker_action/Dockerfile)")
    parser.add_argument("--python", metavar="3.X", default=None,
                        help=f"Python of the runtime (default: this interpreter's, {host_python()})")
    parser.add_argument("--without-dependencies", action="store_true",
                        help="deploy the small zip without virtualenv (for the local server)")
    parser.add_argument("--zip-only", metavar="PATH",
                        help="write the action's zip to PATH and print its size; deploy nothing")
    parser.add_argument("--print-requirements", action="store_true",
                        help="print the worker's pinned requirements (for docker build --build-arg)")
    parser.add_argument("--cache-dir", metavar="DIR", default=None,
                        help=f"where downloaded wheels are kept (default {default_cache_dir()})")
    add_whisk_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Build the worker action and, unless ``--zip-only``, create or update it."""
    from .config import WhiskConfigError, setting
    from .openwhisk import OpenWhiskClient, WhiskError

    python = args.python or host_python()
    try:
        _check_python(python)
        if args.print_requirements:
            print(" ".join(worker_requirements(python)))
            return 0
        if args.zip_only:
            with_dependencies = not (args.image or args.without_dependencies)
            code = build_action_zip(args.zip_only, with_dependencies=with_dependencies,
                                    python=python, cache_dir=args.cache_dir)
            print(f"wrote {args.zip_only}: {len(code):,} bytes, {encoded_size(code):,} in base64 "
                  f"({100 * encoded_size(code) / MAX_CODE_BYTES:.0f}% of OpenWhisk's "
                  f"{MAX_CODE_BYTES // 2**20} MB code limit)")
            return 0
        config = whisk_config_from_args(args)
        name = args.name or setting("action")

        async def deploy() -> dict[str, Any]:
            async with OpenWhiskClient(config) as client:
                return await deploy_worker_action(
                    client, name, local=args.without_dependencies, python=python, image=args.image,
                    memory_mb=args.memory, timeout_ms=args.timeout,
                    provide_api_key=args.provide_api_key, cache_dir=args.cache_dir, log=print)

        action = asyncio.run(deploy())
        print(f"{action.get('namespace', config.namespace)}/{action.get('name', name)} "
              f"version {action.get('version', '?')}")
        return 0
    except (DeployError, WhiskConfigError, WhiskError) as exc:
        print(f"dask-whisk deploy: error: {exc}", file=sys.stderr)
        return 1


__all__ = [
    "DEFAULT_ACTION", "DEFAULT_MEMORY_MB", "DEFAULT_TIMEOUT_MS", "MAX_CODE_BYTES", "DeployError",
    "WorkerActionMismatch", "blackbox_advice", "build_action_zip", "check_worker_action",
    "code_digest", "deploy_worker_action", "deployment_info", "offered_kinds", "download_wheels", "encoded_size", "ensure_worker_action",
    "host_python", "runtime_kind", "worker_files", "worker_requirements",
]
