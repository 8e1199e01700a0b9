"""Runtimes from the object store: packages beyond the worker zip, fetched by activations.

A runtime is the site-packages of some packages (and what they require) as manylinux x86-64
wheels for one Python, packed in a zip and kept in the configured store under its content hash,
so an action of OpenWhisk's 48 MB code limit can still use pandas, pyarrow or a user's own
libraries: an activation that needs it fetches it once per container (PyWren's answer). The
worker's own packages (dask, numpy, cloudpickle...) are resolved together with the runtime's,
pinned to the client's versions, and left out of it: the worker action already has them.

``dask-whisk runtime build|list|delete`` manage runtimes; ``whisk.runtime`` (or
``whisk_get(..., runtime=NAME)``) makes a job use one.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import io
import json
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

from .artifact import (DeployError, _add, _wheel_members, check_python,
                       default_cache_dir, download_wheels, host_python, worker_requirements)
from .store import JobStore, ObjectMissing, open_job_store

#: the store namespace holding runtimes (not a job's: ``dask-whisk clean`` leaves it alone)
NAMESPACE = "dask-whisk-runtimes"
INDEX = "index.json"
PLATFORM = "manylinux_x86_64"
NAME_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


class RuntimeUnavailable(DeployError):
    """A runtime cannot be built, found or used; the message says what to do."""


def _dist_name(wheel: Path) -> str:
    """The normalised distribution name of a wheel file (``numpy-2.1.0-cp311-...whl`` -> numpy)."""
    return re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()


def _read_requirements(path: str) -> list[str]:
    """The requirement lines of a requirements file (comments and blank lines dropped)."""
    lines = Path(path).read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def pinned(requirements: list[str], python: str) -> list[str]:
    """``requirements`` with each bare name this client has installed pinned to its version, when
    the runtime is for this client's Python: values pickled here then load the same code there."""
    if python != host_python():
        return list(requirements)
    out = []
    for requirement in requirements:
        try:
            bare = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", requirement) is not None
            out.append(f"{requirement}=={importlib.metadata.version(requirement)}" if bare else requirement)
        except importlib.metadata.PackageNotFoundError:
            out.append(requirement)
    return out


def pack(requirements: list[str], python: str, cache_dir: Path | None = None) -> tuple[bytes, list[str], int]:
    """The runtime zip for ``requirements`` on CPython ``python``, its packages (``name==version``)
    and its unpacked size. Deterministic: the same wheels give the same bytes (and hash)."""
    cache = cache_dir or default_cache_dir()
    # what the worker zip's virtualenv already has (its packages and theirs) stays out
    own = {_dist_name(w) for w in download_wheels(worker_requirements(python), python, cache)}
    wheels = download_wheels(worker_requirements(python) + pinned(requirements, python), python, cache)
    buffer, packages, unpacked = io.BytesIO(), [], 0
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for wheel in sorted(wheels):
            if _dist_name(wheel) in own:
                continue
            packages.append("==".join(wheel.name.split("-")[:2]))
            for name, content, mode in _wheel_members(wheel):
                _add(archive, name, content, mode)
                unpacked += len(content)
    if not packages:
        raise RuntimeUnavailable(f"{' '.join(requirements)} adds nothing the worker action does not "
                            "already have: there is no runtime to build")
    return buffer.getvalue(), packages, unpacked


class Runtimes:
    """The runtimes in the configured store: an index (name -> manifest) and one zip per hash."""

    def __init__(self, store: JobStore | None = None) -> None:
        import dask.config

        self.store = store or open_job_store(dask.config.get("whisk.store"), NAMESPACE)

    def index(self) -> dict[str, dict[str, Any]]:
        """Every runtime's manifest, by name."""
        try:
            return json.loads(bytes(self.store.get(INDEX)))
        except ObjectMissing:
            return {}

    def add(self, name: str, code: bytes, python: str, packages: list[str], unpacked: int) -> dict[str, Any]:
        """Store ``code`` under its hash and name it ``name`` (replacing what had that name)."""
        digest = hashlib.sha256(code).hexdigest()
        obj = f"{digest}.zip"
        if not self.store.exists(obj):
            self.store.put(obj, [code])
        manifest = {"name": name, "digest": digest, "object": obj, "python": python,
                    "platform": PLATFORM, "packages": packages, "packed_bytes": len(code),
                    "unpacked_bytes": unpacked,
                    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        index = self.index()
        replaced = index.get(name)
        index[name] = manifest
        self._write(index)
        if replaced and replaced["digest"] != digest:
            self._drop_unused(index, replaced["object"])
        return manifest

    def delete(self, name: str) -> dict[str, Any]:
        """Forget runtime ``name`` and delete its zip unless another name uses it."""
        index = self.index()
        if name not in index:
            raise RuntimeUnavailable(f"There is no runtime {name!r} in the store (`dask-whisk runtime "
                                f"list` shows them)")
        manifest = index.pop(name)
        self._write(index)
        self._drop_unused(index, manifest["object"])
        return manifest

    def resolve(self, name: str, python: str | None = None) -> dict[str, Any]:
        """The manifest of runtime ``name``, refused unless it exists and was built for this
        client's Python (cloudpickle's values must load there) and the workers' platform."""
        python = python or host_python()
        manifest = self.index().get(name)
        if manifest is None:
            raise RuntimeUnavailable(f"There is no runtime {name!r} in the store: build it with "
                                f"`dask-whisk runtime build PACKAGE ... --name {name}`")
        if manifest["python"] != python or manifest["platform"] != PLATFORM:
            packages = " ".join(p.split("==")[0] for p in manifest["packages"])
            raise RuntimeUnavailable(
                f"The runtime {name!r} was built for Python {manifest['python']} on "
                f"{manifest['platform']}; this client runs Python {python} and the workers "
                f"{PLATFORM}: rebuild it with `dask-whisk runtime build {packages} --name {name} "
                f"--python {python}`")
        return manifest

    def grant(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """What an activation needs to fetch the runtime: its hash, size and a read-only grant
        of its zip alone (no credential of the user's)."""
        return {"name": manifest["name"], "digest": manifest["digest"], "object": manifest["object"],
                "nbytes": manifest["packed_bytes"],
                "store": self.store.worker_access([manifest["object"]], [])}

    def _write(self, index: dict[str, dict[str, Any]]) -> None:
        self.store.put(INDEX, [json.dumps(index, indent=1, sort_keys=True).encode()])

    def _drop_unused(self, index: dict[str, dict[str, Any]], obj: str) -> None:
        if all(m["object"] != obj for m in index.values()):
            self.store.delete([obj])

    def close(self) -> None:
        """Release the store's connections."""
        self.store.close()

    def __enter__(self) -> "Runtimes":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def job_runtime(name: str | None) -> dict[str, Any] | None:
    """The grant a job's activations get for runtime ``name`` (else ``whisk.runtime``), checked
    before any invocation; None when the job uses none."""
    import dask.config

    name = name or dask.config.get("whisk.runtime", None)
    if not name:
        return None
    with Runtimes() as runtimes:
        return runtimes.grant(runtimes.resolve(name))


# -- command line --------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``dask-whisk runtime``."""
    commands = parser.add_subparsers(dest="action", required=True, metavar="ACTION",
                                     help="build, list or delete")
    build = commands.add_parser("build", help="build a runtime and upload it to the store",
                                description="Build a runtime of PACKAGEs (and what they require) "
                                            "for the workers' Python and platform, and upload it.")
    build.add_argument("packages", nargs="*", metavar="PACKAGE", help="a requirement, e.g. pandas==2.2.3")
    build.add_argument("-r", "--requirements", metavar="FILE", help="requirements file to add")
    build.add_argument("--name", help="the runtime's name (default: its first package's name)")
    build.add_argument("--python", metavar="3.X", default=None,
                       help=f"Python of the workers (default: this interpreter's, {host_python()})")
    build.add_argument("--cache-dir", metavar="DIR", default=None,
                       help=f"where downloaded wheels are kept (default {default_cache_dir()})")
    commands.add_parser("list", help="list the runtimes in the store",
                        description="List the runtimes in the configured store.")
    delete = commands.add_parser("delete", help="delete a runtime from the store",
                                 description="Delete a runtime from the configured store.")
    delete.add_argument("name", help="the runtime's name")
    for sub in commands.choices.values():
        sub.add_argument("--store", choices=["local", "swift"], default=None,
                         help="the store (default: dask config whisk.store)")


def _print_manifest(m: dict[str, Any]) -> None:
    print(f"{m['name']}: Python {m['python']} {m['platform']}, {m['packed_bytes'] / 1e6:,.1f} MB packed, "
          f"{m['unpacked_bytes'] / 1e6:,.1f} MB unpacked, sha256 {m['digest'][:16]}, {m['created']}\n"
          f"  {' '.join(m['packages'])}")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dask-whisk runtime``."""
    import dask.config

    with dask.config.set({"whisk.store": args.store or dask.config.get("whisk.store")}):
        try:
            if args.action == "build":
                requirements = list(args.packages) + (_read_requirements(args.requirements)
                                                      if args.requirements else [])
                if not requirements:
                    print("dask-whisk runtime build: name at least one PACKAGE or -r FILE", file=sys.stderr)
                    return 2
                name = args.name or re.split(r"[\s;<>=!~\[(]", requirements[0], maxsplit=1)[0]
                if not NAME_PATTERN.match(name):
                    print(f"dask-whisk runtime build: {name!r} is not a runtime name (letters, digits, "
                          "'.', '_', '-'; at most 64)", file=sys.stderr)
                    return 2
                python = check_python(args.python or host_python())
                code, packages, unpacked = pack(requirements, python,
                                                Path(args.cache_dir) if args.cache_dir else None)
                with Runtimes() as runtimes:
                    _print_manifest(runtimes.add(name, code, python, packages, unpacked))
            elif args.action == "list":
                with Runtimes() as runtimes:
                    index = runtimes.index()
                for manifest in sorted(index.values(), key=lambda m: m["name"]):
                    _print_manifest(manifest)
                if not index:
                    print("no runtimes in the store (`dask-whisk runtime build PACKAGE ...` makes one)")
            else:
                with Runtimes() as runtimes:
                    gone = runtimes.delete(args.name)
                print(f"deleted {gone['name']} (sha256 {gone['digest'][:16]})")
        except (DeployError, OSError, ValueError) as exc:
            print(f"dask-whisk runtime: {exc}", file=sys.stderr)
            return 1
    return 0


__all__ = ["NAMESPACE", "RuntimeUnavailable", "Runtimes", "job_runtime", "pack"]
