"""The wire format between the client and the worker action, defined once for both sides.

A *frame* is how one Python value travels, inline in JSON (base64), as a store object, or as a
member of a *bundle* (one store object holding many small frames an activation wrote; each
frame still bound to its own name)::

    MAGIC | MAC (32 bytes) | nbuffers (u32) | len(pickle) (u64) | len(buffer_i) (u64)... | pickle | buffers

The pickle is cloudpickle protocol 5 with out-of-band buffers, so arrays are written and read
without copies; the MAC is keyed BLAKE2b with a per-job key that only the client and its
activations hold, so a tampered store object is rejected instead of unpickled.

An *invocation* (the activation's parameters) is JSON: the store access descriptor, the MAC key,
and one entry per unit (several independent units may share an activation): the unit's spec
frame (its tasks), one input descriptor per input key, and the store names for its outputs,
unique to the attempt. Entries too large for OpenWhisk's payload limit travel as a stored
*manifest*. The activation answers with a *result envelope* (per unit, one output descriptor per
output, plus stats; stored, and answered with its descriptor, when too large for a result) or, when user code raised, an ``{"error": ...}`` envelope the client turns
back into the original exception. This module imports nothing heavier than cloudpickle.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import importlib
import io
import pickle
import struct
import traceback
import types
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

PROTOCOL_VERSION = 2
MAGIC = b"DWK\x01"
MAC_SIZE = 32
_COUNT = struct.Struct("<I")
Buffer = bytes | bytearray | memoryview
_LENGTH = struct.Struct("<Q")

#: OpenWhisk's limit on an invocation payload and on an activation result (1 MiB)
MAX_MESSAGE_BYTES = 1024 * 1024
#: a value whose frame is at most this large may ride inline in a payload or a result
INLINE_VALUE_BYTES = 64 * 1024
#: the inline frames of one message add up to at most this, keeping base64 JSON under 1 MiB
INLINE_TOTAL_BYTES = 512 * 1024
#: an invoke body larger than this moves its unit entries into a stored manifest
PAYLOAD_BUDGET_BYTES = 960 * 1024
#: room a stored-object descriptor takes in a message (its JSON, with a generous name)
STORED_REF_BYTES = 128
#: an activation writes its stored outputs up to this size together, as *bundles* of about
#: BUNDLE_BYTES (one object, one request, for many small values), the larger ones on their own
BUNDLE_VALUE_BYTES = 1024 * 1024
BUNDLE_BYTES = 8 * 1024 * 1024
#: bundle members closer together than this are read with one ranged request
COALESCE_GAP_BYTES = 256 * 1024


class TamperedObject(ValueError):
    """A frame whose MAC does not match: altered in the store, or written by another job."""


class SerializationError(TypeError):
    """A value or task could not be pickled for sending to an activation."""


# --- frames -------------------------------------------------------------------------------------


class Frame(list):
    """A framed value's byte parts (not joined: large buffers stay zero-copy). ``content`` is the
    keyed digest of its contents, so :func:`seal` can bind it to a name without hashing again."""

    content: bytes = b""


def _seal_mac(mac_key: bytes, name: str, content: bytes) -> bytes:
    return hashlib.blake2b(name.encode() + b"\0" + content, key=mac_key, digest_size=MAC_SIZE).digest()


class SharedFunctions:
    """Functions pickled by value (lambdas, closures, ``__main__``'s) that many units share:
    each is pickled once per job and stored by content hash, and a spec refers to it by name
    instead of carrying its bytes (10,000 units of one lambda carried it 10,000 times)."""

    #: a function pickling smaller than this (by reference, or tiny) stays in the spec
    MIN_BYTES = 256

    def __init__(self) -> None:
        self._seen: dict[int, tuple[Any, str | None]] = {}  # id -> (the function, its name)
        #: name -> pickled function, for the caller to store (and take out of here) before any
        #: spec using it is read; a name appears here once however many copies pickle to it
        self.new: dict[str, bytes] = {}
        self._names: set[str] = set()

    def name_of(self, function: Any) -> str | None:
        """The store name of ``function``'s shared copy, or None to pickle it in place."""
        seen = self._seen.get(id(function))
        if seen is None:
            payload = cloudpickle.dumps(function, protocol=5)
            name = None
            if len(payload) >= self.MIN_BYTES:
                name = "f-" + hashlib.sha256(payload).hexdigest()[:40]
                if name not in self._names:
                    self._names.add(name)
                    self.new[name] = payload
            seen = self._seen[id(function)] = (function, name)  # holds it: its id stays its own
        return seen[1]


class _SharingPickler(cloudpickle.Pickler):
    def __init__(self, file: Any, shared: SharedFunctions, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._shared = shared

    def persistent_id(self, obj: Any) -> str | None:
        return self._shared.name_of(obj) if type(obj) is types.FunctionType else None


def _dumps(value: Any, buffer_callback: Callable, shared: SharedFunctions | None) -> bytes:
    if shared is None:
        return cloudpickle.dumps(value, protocol=5, buffer_callback=buffer_callback)
    out = io.BytesIO()
    _SharingPickler(out, shared, protocol=5, buffer_callback=buffer_callback).dump(value)
    return out.getvalue()


def encode(value: Any, mac_key: bytes, name: str = "", shared: SharedFunctions | None = None) -> Frame:
    """Frame ``value``, its MAC binding it to the job's key and to ``name`` (the object name it
    is stored under; "" for a value carried inline in a message). With ``shared``, functions
    pickled by value are left out and referred to by name (see :class:`SharedFunctions`)."""
    buffers: list[memoryview] = []
    payload = _dumps(value, lambda b: buffers.append(b.raw()), shared)
    header = _COUNT.pack(len(buffers)) + _LENGTH.pack(len(payload))
    header += b"".join(_LENGTH.pack(b.nbytes) for b in buffers)
    mac = hashlib.blake2b(key=mac_key, digest_size=MAC_SIZE)
    for part in (header, payload, *buffers):
        mac.update(part)
    frame = Frame([MAGIC, _seal_mac(mac_key, name, mac.digest()), header, payload, *buffers])
    frame.content = mac.digest()
    return frame


def seal(frame: Frame, mac_key: bytes, name: str) -> Frame:
    """``frame`` bound to ``name`` instead (cheap: its contents are not hashed again)."""
    sealed = Frame(frame)
    sealed[1] = _seal_mac(mac_key, name, frame.content)
    sealed.content = frame.content
    return sealed


def ref_name(ref: Mapping[str, Any]) -> str:
    """The name a frame behind ``ref`` is bound to: its own name (a bundle member's, or the
    object's), or "" inline."""
    return ref.get("name") or ref.get("stored", "")


def decode(data: bytes | bytearray | memoryview, mac_key: bytes, name: str = "",
           functions: Callable[[str], Any] | None = None) -> Any:
    """Check and unpickle a frame bound to ``name``; buffers are views into ``data`` (no copies).
    ``functions`` gives the shared function a spec refers to by name."""
    view = memoryview(data)
    if view[: len(MAGIC)] != MAGIC:
        raise TamperedObject("Not a dask-whisk object (bad magic bytes): refusing to unpickle it")
    start = len(MAGIC) + MAC_SIZE
    expected = bytes(view[len(MAGIC) : start])
    content = hashlib.blake2b(view[start:], key=mac_key, digest_size=MAC_SIZE).digest()
    if not hmac.compare_digest(_seal_mac(mac_key, name, content), expected):
        raise TamperedObject(
            f"A stored object failed its integrity check (altered, put in the place of another "
            f"{'object ' + repr(name) if name else 'value'}, or written by another job): refusing "
            "to unpickle it"
        )
    (count,) = _COUNT.unpack_from(view, start)
    offset = start + _COUNT.size
    lengths = [_LENGTH.unpack_from(view, offset + i * _LENGTH.size)[0] for i in range(count + 1)]
    offset += (count + 1) * _LENGTH.size
    pieces = []
    for length in lengths:
        pieces.append(view[offset : offset + length])
        offset += length
    if functions is None:
        return pickle.loads(pieces[0], buffers=pieces[1:])
    unpickler = pickle.Unpickler(io.BytesIO(pieces[0]), buffers=pieces[1:])
    unpickler.persistent_load = functions
    return unpickler.load()


def frame_size(parts: Sequence[bytes | memoryview]) -> int:
    """Total bytes of a framed value."""
    return sum(memoryview(p).nbytes for p in parts)


def join(parts: Sequence[bytes | memoryview]) -> bytes:
    """One bytes object of a frame (only for small frames that go inline)."""
    return b"".join(parts)


def b64(data: bytes) -> str:
    """Bytes as base64 text for JSON."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    """Inverse of :func:`b64`."""
    return base64.b64decode(text)


def object_name(key: Hashable) -> str:
    """The store object name of a Dask key's value: stable, short and safe in any backend."""
    return "k-" + hashlib.sha1(repr(key).encode()).hexdigest()


# --- units --------------------------------------------------------------------------------------


@dataclass
class UnitSpec:
    """What an activation executes: a subgraph of Dask task-spec nodes and the keys it must return.

    ``inputs`` names the keys the tasks read from outside the unit, in the order the invocation
    carries their descriptors; ``outputs`` the keys it returns, in the order of the result.
    """

    tasks: dict
    inputs: tuple
    outputs: tuple


@dataclass
class UnitCall:
    """One unit in an invocation: its spec frame, input descriptors and this attempt's output names."""

    unit: str
    attempt: int
    spec: dict[str, Any]
    inputs: list[dict[str, Any]]
    outputs: list[str]

    def to_json(self) -> dict[str, Any]:
        """The unit's entry in an invocation."""
        return {"unit": self.unit, "attempt": self.attempt, "spec": self.spec,
                "inputs": self.inputs, "outputs": self.outputs}

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> UnitCall:
        """Inverse of :meth:`to_json`."""
        return cls(entry["unit"], entry["attempt"], entry["spec"], entry["inputs"], entry["outputs"])


def output_prefix(unit: str, attempt: int) -> str:
    """The prefix of every output name of one attempt of ``unit``: what the attempt may write."""
    return f"o-{unit}-a{attempt}-"


def result_name(unit: str, attempt: int) -> str:
    """Where an attempt whose first unit is ``unit`` stores a result envelope too large for
    OpenWhisk's result limit (inside the attempt's write prefix; no output index looks so)."""
    return f"{output_prefix(unit, attempt)}result"


def output_name(unit: str, attempt: int, index: int) -> str:
    """The store name of output ``index`` of one attempt of ``unit``: no two attempts share one,
    so a late or duplicate attempt can never overwrite what a reader already took."""
    return f"{output_prefix(unit, attempt)}{index}"


@dataclass
class Invocation:
    """The JSON parameters of one activation of the worker action: one or more independent units.

    When the units' descriptors would not fit OpenWhisk's payload limit, they travel as a
    *manifest*: a stored frame holding the list of unit entries, which the activation reads first.
    """

    job: str
    mac_key: bytes
    store: dict[str, Any]
    units: list[UnitCall] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    #: the runtime the units need on ``sys.path`` first (``dask_whisk.runtime.Runtimes.grant``)
    runtime: dict[str, Any] | None = None
    #: the job's grants on the user's swift:// data (``dask_whisk.store.swift_grants``)
    grants: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"Invocation(job={self.job!r}, units={[u.unit for u in self.units]}, manifest={self.manifest})"

    def to_json(self) -> dict[str, Any]:
        """The invoke body."""
        body = {"dask_whisk": PROTOCOL_VERSION, "job": self.job, "mac_key": b64(self.mac_key),
                "store": self.store}
        if self.manifest is not None:
            body["manifest"] = self.manifest
        else:
            body["units"] = [u.to_json() for u in self.units]
        if self.runtime is not None:
            body["runtime"] = self.runtime
        if self.grants is not None:
            body["grants"] = self.grants
        return body

    @classmethod
    def from_json(cls, params: Mapping[str, Any]) -> Invocation:
        """Parse the invoke body, refusing other protocol versions with a clear message."""
        version = params.get("dask_whisk")
        if version != PROTOCOL_VERSION:
            raise ValueError(
                f"dask-whisk protocol {version!r} sent to a worker speaking {PROTOCOL_VERSION}: "
                "redeploy the worker action with `dask-whisk deploy`"
            )
        return cls(
            job=params["job"],
            mac_key=unb64(params["mac_key"]),
            store=params["store"],
            units=[UnitCall.from_json(u) for u in params.get("units", ())],
            manifest=params.get("manifest"),
            runtime=params.get("runtime"),
            grants=params.get("grants"),
        )


def inline_ref(frame: bytes) -> dict[str, Any]:
    """Descriptor of a value carried in the message itself."""
    return {"inline": b64(frame)}


def stored_ref(name: str, nbytes: int) -> dict[str, Any]:
    """Descriptor of a value held in the job's store."""
    return {"stored": name, "nbytes": nbytes}


def bundled_ref(bundle: str, offset: int, nbytes: int, name: str) -> dict[str, Any]:
    """Descriptor of value ``name`` held at bytes [offset, offset + nbytes) of object ``bundle``."""
    return {"stored": bundle, "offset": offset, "nbytes": nbytes, "name": name}


def fetch_frames(refs: Sequence[Mapping[str, Any]], store: Any, map_: Callable = map) -> list[Buffer]:
    """The frame behind each descriptor, in order: inline ones decoded, stored ones read with
    one ``store.get`` per object (however many descriptors name it), bundle members with one
    ``store.get_range`` per run of nearby members (``map_`` may run the reads concurrently)."""
    frames: list[Buffer | None] = [None] * len(refs)
    whole: dict[str, list[int]] = {}  # object -> the refs naming it
    members: dict[str, list[int]] = {}
    for i, ref in enumerate(refs):
        if "inline" in ref:
            frames[i] = unb64(ref["inline"])
        elif "offset" in ref:
            members.setdefault(ref["stored"], []).append(i)
        else:
            whole.setdefault(ref["stored"], []).append(i)
    reads: list[tuple[str, int, int, list[int]]] = []  # object, start, stop, the refs inside
    for bundle, indices in members.items():
        indices.sort(key=lambda i: refs[i]["offset"])
        for i in indices:
            start, stop = refs[i]["offset"], refs[i]["offset"] + refs[i]["nbytes"]
            if reads and reads[-1][0] == bundle and start - reads[-1][2] <= COALESCE_GAP_BYTES:
                reads[-1] = (bundle, reads[-1][1], max(stop, reads[-1][2]), [*reads[-1][3], i])
            else:
                reads.append((bundle, start, stop, [i]))
    jobs: list[tuple[str, Any]] = [("get", name) for name in whole]
    jobs += [("range", r) for r in range(len(reads))]

    def read(job: tuple[str, Any]) -> Buffer:
        kind, which = job
        if kind == "get":
            return store.get(which)
        bundle, start, stop, _ = reads[which]
        return store.get_range(bundle, start, stop)

    for (kind, which), data in zip(jobs, map_(read, jobs), strict=True):
        if kind == "get":
            for i in whole[which]:
                frames[i] = data
            continue
        _, start, _, inside = reads[which]
        view = memoryview(data)
        for i in inside:
            offset = refs[i]["offset"] - start
            frames[i] = view[offset:offset + refs[i]["nbytes"]]
    return frames


def ref_nbytes(ref: Mapping[str, Any]) -> int:
    """Bytes of the frame a descriptor stands for."""
    return ref["nbytes"] if "stored" in ref else len(ref["inline"]) * 3 // 4


# --- results and errors -------------------------------------------------------------------------


@dataclass
class UnitResult:
    """One unit's part of a result envelope: a descriptor per output, what it spent, and the
    warnings its tasks raised (category path, message, filename, lineno), for the client to
    raise again."""

    outputs: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)
    warnings: list[list] = field(default_factory=list)


@dataclass
class BatchResult:
    """The result envelope of an activation: one :class:`UnitResult` per unit, in call order."""

    units: list[UnitResult]
    stats: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The activation result (never a top-level ``error`` key on success)."""
        return {"dask_whisk": PROTOCOL_VERSION, "stats": self.stats,
                "units": [{"outputs": u.outputs, "stats": u.stats,
                           **({"warnings": u.warnings} if u.warnings else {})} for u in self.units]}

    @staticmethod
    def stored(ref: dict[str, Any]) -> dict[str, Any]:
        """The activation result standing for an envelope too large to answer with: its frame
        is in the store at ``ref`` (see :func:`result_name`), for the client to read."""
        return {"dask_whisk": PROTOCOL_VERSION, "stored_result": ref}

    @classmethod
    def from_json(cls, result: Mapping[str, Any]) -> BatchResult:
        """Parse an activation's successful result (a stored one already read back)."""
        if result.get("dask_whisk") != PROTOCOL_VERSION or "units" not in result:
            raise ValueError(f"Not a dask-whisk result envelope: {sorted(result)}")
        return cls([UnitResult(u["outputs"], u.get("stats", {}), u.get("warnings", []))
                    for u in result["units"]], result.get("stats", {}))


def warning_entry(caught: warnings.WarningMessage) -> list:
    """How a warning raised in an activation travels: [category path, message, file, line]."""
    category = caught.category
    return [f"{category.__module__}.{category.__qualname__}", str(caught.message),
            caught.filename, caught.lineno]


def warning_category(path: str) -> type[Warning]:
    """The warning class a :func:`warning_entry` names, or UserWarning if it cannot be imported."""
    module, _, name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return UserWarning
    return found if isinstance(found, type) and issubclass(found, Warning) else UserWarning


def missing_module_advice(exc: ImportError) -> str:
    """What to do when a task's function or value needs a module the action cannot import."""
    module = getattr(exc, "name", None) or "the module"
    return (f"The worker action cannot import {module!r}, which a task's function or data "
            "refers to. Functions from your own modules are pickled by reference: ship them by "
            f"value with cloudpickle.register_pickle_by_value({module.split('.')[0]}) before "
            "computing, or deploy an image that has it (`dask-whisk deploy --image`, from "
            "worker_action/Dockerfile).")


def error_envelope(exc: BaseException, key: Hashable, mac_key: bytes,
                   skip_files: tuple[str, ...] = ()) -> dict[str, Any]:
    """The ``{"error": ...}`` result for an exception raised by user code in task ``key``.

    Leading traceback frames from ``skip_files`` (the worker's own machinery) are left out, so
    the remote traceback starts at the user's code.
    """
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename in skip_files:
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    try:
        frame = join(encode(exc, mac_key))
        pickled: str | None = b64(frame) if len(frame) <= INLINE_VALUE_BYTES else None
    except Exception:
        pickled = None
    return {
        "error": {
            "dask_whisk": PROTOCOL_VERSION,
            "key": repr(key),
            "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "message": str(exc),
            "traceback": text,
            "exception": pickled,
        }
    }


class RemoteError(Exception):
    """A task failed remotely and its exception could not be rebuilt on the client."""


def exception_from_error(error: Mapping[str, Any], mac_key: bytes) -> BaseException:
    """Rebuild the remote exception, with the remote traceback attached as a note."""
    exc: BaseException | None = None
    if error.get("exception"):
        try:
            exc = decode(unb64(error["exception"]), mac_key)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteError(f"{error.get('type')}: {error.get('message')}")
    exc.add_note(f"\nRemote traceback (task {error.get('key')}, in an OpenWhisk activation):\n{error.get('traceback', '').rstrip()}")
    return exc


def is_error_envelope(result: Any) -> bool:
    """Whether an activation result is a dask-whisk user-code error envelope."""
    return (
        isinstance(result, Mapping)
        and isinstance(result.get("error"), Mapping)
        and result["error"].get("dask_whisk") == PROTOCOL_VERSION
    )
