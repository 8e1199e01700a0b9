"""Object storage for one job's data: one small interface, one module per backend.

The client opens a :class:`JobStore` per job (``open_job_store``); an activation gets a JSON
*access descriptor* from :meth:`JobStore.worker_access` and opens its side of the store with
``open_worker_store``. Names are relative to the job; a backend maps them to its own layout.
Values are opaque byte strings here: framing, integrity and pickling live in ``protocol``.
"""
from __future__ import annotations

import abc
import calendar
import importlib
import secrets
import time
from collections.abc import Iterable, Sequence
from typing import Any

#: store kind -> module implementing ``open_job_store`` and ``open_worker_store``
BACKENDS = {"local": "dask_whisk.store.local", "swift": "dask_whisk.store.swift"}

#: every job's namespace starts with this, so ``dask-whisk clean`` can recognise leftovers
JOB_PREFIX = "dask-whisk-job-"

Buffer = bytes | bytearray | memoryview


class StoreError(RuntimeError):
    """A storage operation failed after any retries the backend makes."""


class ObjectMissing(StoreError, KeyError):
    """The named object does not exist in the job's namespace."""


def check_range(data: Buffer, name: str, start: int, stop: int) -> Buffer:
    """``data``, if it holds all of bytes [start, stop) of object ``name``."""
    if memoryview(data).nbytes != stop - start:
        raise StoreError(f"Object {name!r} is shorter than the {stop - start} bytes asked for at "
                         f"offset {start}: it was truncated or replaced")
    return data


class WorkerStore(abc.ABC):
    """What an activation may do: read its inputs and write its outputs."""

    @abc.abstractmethod
    def get(self, name: str) -> Buffer:
        """Return the whole object ``name``; raise :class:`ObjectMissing` if absent."""

    def get_range(self, name: str, start: int, stop: int) -> Buffer:
        """Bytes [start, stop) of object ``name`` (backends read only those); raise
        :class:`StoreError` if the object is shorter."""
        data = memoryview(self.get(name))[start:stop]
        return check_range(data, name, start, stop)

    @abc.abstractmethod
    def put(self, name: str, parts: Sequence[Buffer]) -> int:
        """Write the concatenation of ``parts`` as object ``name``; return the bytes written.

        Parts are written in order without joining them first (large array buffers stay zero-copy).
        """


class JobStore(WorkerStore):
    """The client's handle on one job's namespace: it also lists, deletes and grants access."""

    job_id: str
    #: whether :meth:`worker_access` may wait on the network (a token refresh): then callers on
    #: an event loop run it in a thread; a store that only signs or names runs it in place
    access_blocks: bool = True

    @abc.abstractmethod
    def exists(self, name: str) -> bool:
        """Whether object ``name`` exists."""

    @abc.abstractmethod
    def delete(self, names: Iterable[str]) -> None:
        """Delete the named objects; names already gone are ignored."""

    @abc.abstractmethod
    def destroy(self) -> None:
        """Delete everything the job stored (called when the job ends, on success and failure)."""

    @abc.abstractmethod
    def worker_access(self, read: Iterable[str], write: Iterable[str]) -> dict[str, Any]:
        """A JSON-able descriptor granting an activation reads of the objects whose names start
        with a prefix in ``read`` and writes of those starting with one in ``write`` (a name is
        its own prefix), and nothing else.

        It must carry no long-lived credential: a directory path, signed URLs, or a job token.
        """

    def close(self) -> None:
        """Release client resources (connections); the stored objects are untouched."""


def new_job_id() -> str:
    """A job namespace name that sorts by creation time and says what made it."""
    return f"{JOB_PREFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(4)}"


def job_age_seconds(job_id: str, now: float | None = None) -> float | None:
    """Seconds since the job named ``job_id`` started, or None if the name is not a job's.

    The stamp in the name is UTC (:func:`new_job_id`), so it is read with ``calendar.timegm``:
    ``mktime`` would read it as local time, an hour off under daylight saving time.
    """
    if not job_id.startswith(JOB_PREFIX):
        return None
    stamp = job_id[len(JOB_PREFIX):].split("-", 1)[0]
    try:
        started = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        return None
    return (time.time() if now is None else now) - started


def _backend(kind: str):
    try:
        return importlib.import_module(BACKENDS[kind])
    except KeyError:
        raise ValueError(
            f"Unknown store {kind!r}: set the dask config key 'whisk.store' to one of {sorted(BACKENDS)}"
        ) from None


def open_job_store(kind: str, job_id: str, **options: Any) -> JobStore:
    """Open the client side of a job's namespace in the store of the given kind."""
    return _backend(kind).open_job_store(job_id, **options)


def open_worker_store(access: dict[str, Any]) -> WorkerStore:
    """Open the activation side of a store from the descriptor the client sent."""
    return _backend(access["kind"]).open_worker_store(access)
