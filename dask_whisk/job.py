"""One computation on a backend: its store namespace, its MAC key, where each value is, and how
one work unit becomes one activation and back.

The client never unpickles intermediate values: it moves their frames (inline base64 text or
store names) from the unit that produced them to the units that read them, and decodes only the
results the user asked for.
"""
from __future__ import annotations

import asyncio
import secrets
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Hashable, Iterable
from typing import Any

import dask.config

from . import protocol
from .backend import Backend
from .plan import Plan, Unit
from .store import new_job_id, open_job_store

Key = Hashable

#: attempts of a unit whose activation ended in "whisk internal error" (a platform failure)
INTERNAL_ERROR_ATTEMPTS = 3


class ActivationError(RuntimeError):
    """An activation failed for a reason other than an exception in user code."""

    def __init__(self, message: str, *, unit: str, activation_id: str | None, status: str | None):
        super().__init__(message)
        self.unit, self.activation_id, self.status = unit, activation_id, status


class Job:
    """State of one ``get`` call: created before the first invoke, destroyed after the last."""

    def __init__(self, backend: Backend, plan: Plan):
        self.backend = backend
        self.plan = plan
        self.id = new_job_id()
        self.mac_key = secrets.token_bytes(32)
        self.store = open_job_store(dask.config.get("whisk.store"), self.id)
        #: source key -> where its frame is (an inline or stored descriptor)
        self.refs: dict[Key, dict[str, Any]] = {}
        #: unit name -> where its spec frame is
        self.specs: dict[str, dict[str, Any]] = {}
        self.stats: dict[str, dict[str, Any]] = {}

    # --- before the first invoke (client thread) -------------------------------------------

    def prepare(self) -> None:
        """Serialise every unit and every client-held value; fail here, before any invoke."""
        for key, value in self.plan.data.items():
            self.refs[key] = self._place(protocol.object_name(key), self._encode(value, f"value of {key!r}"))
        for unit in self.plan.units.values():
            spec = protocol.UnitSpec(tasks=unit.tasks, inputs=unit.inputs, outputs=unit.outputs)
            what = f"task {next(iter(unit.tasks))!r}"
            self.specs[unit.name] = self._place(f"spec-{unit.name}", self._encode(spec, what),
                                                inline_limit=protocol.INLINE_TOTAL_BYTES // 2)

    def _encode(self, value: Any, what: str) -> list:
        try:
            return protocol.encode(value, self.mac_key)
        except Exception as exc:
            raise protocol.SerializationError(
                f"Could not serialise the {what} for OpenWhisk: {type(exc).__name__}: {exc}. "
                "Everything a task uses must be picklable with cloudpickle."
            ) from exc

    def _place(self, name: str, parts: list, inline_limit: int = protocol.INLINE_VALUE_BYTES) -> dict[str, Any]:
        size = protocol.frame_size(parts)
        if size <= inline_limit:
            return protocol.inline_ref(protocol.join(parts))
        return protocol.stored_ref(name, self.store.put(name, parts))

    # --- one unit, one activation (event loop thread) --------------------------------------

    async def _input_refs(self, unit: Unit) -> list[dict[str, Any]]:
        """Descriptors of the unit's inputs; inline values over the message budget are stored."""
        refs = []
        spec = self.specs[unit.name]
        budget = protocol.INLINE_TOTAL_BYTES - (protocol.ref_nbytes(spec) if "inline" in spec else 0)
        for key in unit.inputs:
            source = self.plan.source(key)
            ref = self.refs[source]
            if "inline" in ref:
                size = protocol.ref_nbytes(ref)
                if size > budget:
                    ref = await self._spill(source, ref)
                else:
                    budget -= size
            refs.append(ref)
        return refs

    async def _spill(self, key: Key, ref: dict[str, Any]) -> dict[str, Any]:
        """Move an inline value into the store (once) so it fits no message."""
        name = protocol.object_name(key)
        data = protocol.unb64(ref["inline"])
        nbytes = await asyncio.get_running_loop().run_in_executor(None, self.store.put, name, [data])
        self.refs[key] = protocol.stored_ref(name, nbytes)
        return self.refs[key]

    async def run_unit(self, unit: Unit) -> str:
        """Run ``unit`` as an activation; record its outputs' descriptors; return the activation id.

        Raises the user's exception (rebuilt) or :class:`ActivationError`.
        """
        inputs = await self._input_refs(unit)
        outputs = [protocol.object_name(k) for k in unit.outputs]
        spec = self.specs[unit.name]
        reads = [r["stored"] for r in (spec, *inputs) if "stored" in r]
        access = await asyncio.get_running_loop().run_in_executor(None, self.store.worker_access, reads, outputs)
        params = protocol.Invocation(
            job=self.id, unit=unit.name, mac_key=self.mac_key, store=access,
            spec=spec, inputs=inputs, outputs=outputs,
        ).to_json()
        for attempt in range(1, INTERNAL_ERROR_ATTEMPTS + 1):
            record = await self.backend.client.run(self.backend.action, params)
            response = record.get("response", {})
            status = response.get("status")
            result = response.get("result") or {}
            if status == "success":
                envelope = protocol.UnitResult.from_json(result)
                for key, ref in zip(unit.outputs, envelope.outputs, strict=True):
                    self.refs[key] = ref
                self.stats[unit.name] = envelope.stats
                return record["activationId"]
            if protocol.is_error_envelope(result):
                raise protocol.exception_from_error(result["error"], self.mac_key)
            if status != "whisk internal error" or attempt == INTERNAL_ERROR_ATTEMPTS:
                raise await self._activation_error(unit, record)
        raise AssertionError("unreachable")

    async def _activation_error(self, unit: Unit, record: dict[str, Any]) -> ActivationError:
        activation_id = record.get("activationId")
        response = record.get("response", {})
        error = (response.get("result") or {}).get("error", response.get("result"))
        logs = record.get("logs") or []
        message = (
            f"Activation {activation_id} of {self.backend.action} (unit {unit.name}, task "
            f"{next(iter(unit.tasks))!r}) failed with {response.get('status')!r}: {error}"
        )
        if "memory" in str(error) or "time limit" in str(error):
            message += " Raise the action's limits with `dask-whisk deploy --memory MB --timeout MS`."
        if logs:
            message += "\nLast log lines:\n" + "\n".join(logs[-10:])
        return ActivationError(message, unit=unit.name, activation_id=activation_id, status=response.get("status"))

    # --- values and cleanup -----------------------------------------------------------------

    async def release(self, keys: Iterable[Key]) -> None:
        """Forget values no unit will read again, deleting the stored ones (off the dispatch path)."""
        refs = [self.refs.pop(key) for key in keys if key in self.refs]
        names = [ref["stored"] for ref in refs if "stored" in ref]
        if names:
            await asyncio.get_running_loop().run_in_executor(None, self.store.delete, names)

    def values(self, keys: Iterable[Key]) -> dict[Key, Any]:
        """Decode the values of ``keys``; stored ones are fetched concurrently."""
        def frame(source: Key) -> Any:
            ref = self.refs[source]
            return protocol.unb64(ref["inline"]) if "inline" in ref else self.store.get(ref["stored"])

        sources = {key: self.plan.source(key) for key in keys}
        remote = sorted({s for s in sources.values() if s not in self.plan.data}, key=repr)
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="dask-whisk-gather") as pool:
            frames = dict(zip(remote, pool.map(frame, remote), strict=True))
        decoded = {source: protocol.decode(data, self.mac_key) for source, data in frames.items()}
        return {key: self.plan.data[s] if s in self.plan.data else decoded[s] for key, s in sources.items()}

    def close(self) -> None:
        """Delete everything the job stored; called on success and on failure."""
        try:
            self.store.destroy()
        finally:
            self.store.close()
