"""A directory as the object store: the zero-configuration default for one machine.

Each job is a subdirectory of the root; writes go to a temporary file renamed into place, so a
reader never sees half an object. Activations on the same machine are granted the job directory.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from . import Buffer, JobStore, ObjectMissing, WorkerStore, check_range

#: how long destroy() keeps removing files that in-flight writes leave in a deleted job
DESTROY_SECONDS = 5.0


def shared_tempdir() -> str:
    """A temporary directory the containers see as the machine's own: each container's /tmp is
    private, so what containers and clients share (the servers' containers, the local store)
    lives outside it, in ``/var/tmp`` when the system temp dir is /tmp."""
    system = tempfile.gettempdir()
    inside_tmp = system == "/tmp" or system.startswith("/tmp/")
    if inside_tmp and os.path.isdir("/var/tmp") and os.access("/var/tmp", os.W_OK | os.X_OK):
        return "/var/tmp"
    return system


def default_root() -> Path:
    """The directory holding job namespaces: dask config ``whisk.local.root``, else one in the
    temp dir the local server's containers share (theirs /tmp is their own)."""
    import dask.config

    configured = dask.config.get("whisk.local.root", None)
    return Path(configured) if configured else Path(shared_tempdir()) / "dask-whisk-store"


class LocalWorkerStore(WorkerStore):
    """Reads and writes objects of one job directory."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def _path(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"Invalid object name {name!r}")
        return self.directory / name

    def get(self, name: str) -> bytes:
        try:
            with open(self._path(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ObjectMissing(f"Object {name!r} is not in {self.directory}") from None

    def get_range(self, name: str, start: int, stop: int) -> bytes:
        try:
            with open(self._path(name), "rb") as f:
                f.seek(start)
                return check_range(f.read(stop - start), name, start, stop)
        except FileNotFoundError:
            raise ObjectMissing(f"Object {name!r} is not in {self.directory}") from None

    def put(self, name: str, parts: Sequence[Buffer]) -> int:
        path = self._path(name)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        written = 0
        try:
            with os.fdopen(fd, "wb") as f:
                for part in parts:
                    written += f.write(part)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):  # gone with a destroyed job
                os.unlink(tmp)
            raise
        return written


def private_root(root: Path) -> Path:
    """``root``, created 0700 if missing; refused when another user owns it or others may write
    into it (they could swap a job's folder and feed it their pickles)."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = root.stat()
    if info.st_uid != os.getuid():
        raise PermissionError(
            f"The local store folder {root} belongs to user id {info.st_uid}, not to you: another "
            "user could change your jobs' data. Set whisk.local.root (DASK_WHISK__LOCAL__ROOT) to "
            "a folder of your own")
    if info.st_mode & 0o022:
        raise PermissionError(
            f"The local store folder {root} can be written by other users (mode "
            f"{info.st_mode & 0o777:o}): they could change your jobs' data. Run `chmod go-w {root}` "
            "or set whisk.local.root to a private folder")
    return root


class LocalJobStore(LocalWorkerStore, JobStore):
    """The client's handle on a job directory under ``root``."""

    access_blocks = False  # a directory's path

    def __init__(self, job_id: str, root: str | os.PathLike | None = None):
        self.job_id = job_id
        self.root = private_root(Path(root) if root else default_root())
        super().__init__(self.root / job_id)
        self.directory.mkdir(mode=0o700, exist_ok=True)

    def exists(self, name: str) -> bool:
        return self._path(name).exists()

    def delete(self, names: Iterable[str]) -> None:
        for name in names:
            self._path(name).unlink(missing_ok=True)

    def destroy(self) -> None:
        """Rename the job directory away first, so writes of activations still running fail
        instead of landing in it, then remove it, again if a write raced the rename."""
        doomed = self.directory.with_name(self.directory.name + ".deleting")
        try:
            os.rename(self.directory, doomed)
        except FileNotFoundError:
            return
        with contextlib.suppress(OSError):  # a job that left nothing: one call
            return os.rmdir(doomed)
        deadline = time.monotonic() + DESTROY_SECONDS
        while True:
            shutil.rmtree(doomed, ignore_errors=True)
            if not doomed.exists() or time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def worker_access(self, read: Iterable[str], write: Iterable[str]) -> dict[str, Any]:
        return {"kind": "local", "directory": str(self.directory)}


def open_job_store(job_id: str, root: str | os.PathLike | None = None, **_: Any) -> LocalJobStore:
    """Open (creating) the job directory ``root/job_id``, where the activations can see it."""
    folder = Path(root).absolute() if root else default_root()
    if folder == Path("/tmp") or Path("/tmp") in folder.parents:
        raise ValueError(
            f"The local store folder {folder} is under /tmp, which each container of the local "
            "server has to itself, so activations would not find the job's data: set "
            "whisk.local.root (DASK_WHISK__LOCAL__ROOT) to a folder outside /tmp, or leave it "
            f"unset for {Path(shared_tempdir()) / 'dask-whisk-store'}")
    return LocalJobStore(job_id, folder)


def open_worker_store(access: dict[str, Any]) -> LocalWorkerStore:
    """Open the job directory named in the descriptor."""
    return LocalWorkerStore(access["directory"])
