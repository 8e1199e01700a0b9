"""The worker action's artifact: files, virtualenv, zip.

The artifact is a zip with ``__main__.py`` (the worker's entry point) and the ``dask_whisk``
modules the worker imports at its root. For a real deployment it also carries a ``virtualenv/``
of Linux x86-64 wheels for the runtime's Python: the stock Python images have no dask, numpy or
cloudpickle. The small zip (no virtualenv) is what the local server runs with the host's packages,
and what a blackbox image built from ``worker_action/Dockerfile`` runs.
"""
from __future__ import annotations

import ast
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
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

logger = logging.getLogger(__name__)

#: OpenWhisk refuses action code over 48 MB, base64 length counted (413)
MAX_CODE_BYTES = 48 * 1024 * 1024

#: top-level import name -> distribution the worker's virtualenv installs for it
WORKER_IMPORTS = {
    "dask": "dask",
    "cloudpickle": "cloudpickle",
    "numpy": "numpy",
    "toolz": "toolz",
    "tlz": "toolz",
    "yaml": "pyyaml",
    "fsspec": "fsspec",  # the swift:// filesystem, unpickled in activations
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


def check_python(python: str) -> str:
    """``python`` if it names a Python 3 minor version (``3.X``); else a DeployError saying so."""
    if not re.fullmatch(r"3\.\d{1,2}", python):
        raise DeployError(f"--python must look like '3.11' (a Python 3 minor version), got {python!r}.")
    return python


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
    """The ``dask_whisk`` modules the worker loads: the package, its protocol, every store backend,
    and the ``swift://`` filesystem (unpickled from the graphs that use it)."""
    from dask_whisk.store import BACKENDS

    roots = ["dask_whisk", "dask_whisk.protocol", "dask_whisk.store", "dask_whisk.store.swiftfs"]
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
                    "dask_whisk.artifact.WORKER_IMPORTS if the worker really needs it."
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
    pin = check_python(python) == host_python()
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
    python = check_python(python or host_python())
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


__all__ = [
    "MAX_CODE_BYTES", "WHEEL_PLATFORMS", "WORKER_IMPORTS", "DeployError", "activate_this",
    "build_action_zip", "check_python", "code_digest", "default_cache_dir", "download_wheels",
    "encoded_size", "host_python", "worker_files", "worker_requirements", "worker_roots",
]
