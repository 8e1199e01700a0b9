"""The ``state`` dict Dask's callbacks read, kept as Dask's own schedulers keep it (``waiting``
holds unfinished inputs, a key runs after it was ready, posttask sees its dependents ready), for
work units and for the tasks the client runs itself."""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from .plan import Plan

Key = Hashable


def callback_state(plan: Plan) -> dict[str, Any]:
    """The ``state`` dict Dask's callbacks read (ProgressBar counts ready/waiting/running/finished)."""
    nodes = {key: unit.tasks[key] for unit in plan.units.values() for key in unit.keys}
    nodes.update(plan.local)
    dependencies = {key: {plan.source(d) for d in node.dependencies} - set(plan.data)
                    for key, node in nodes.items()}
    dependents: dict[Key, set] = {key: set() for key in dependencies}
    for key, deps in dependencies.items():
        for dep in deps:
            dependents.setdefault(dep, set()).add(key)
    return {
        "dependencies": dependencies,
        "dependents": dependents,
        "waiting": {k: set(v) for k, v in dependencies.items() if v},
        "waiting_data": {k: set(v) for k, v in dependents.items() if v},
        # an insertion-ordered set (Dask's own schedulers keep a list; callbacks only size and scan it)
        "ready": dict.fromkeys(k for k, v in dependencies.items() if not v),
        "running": set(),
        "finished": set(),
        "released": set(),
        "cache": {},
    }


def mark(state: dict[str, Any], keys: Sequence[Key], where: str) -> None:
    """Move ``keys`` into ``where`` ('ready', 'running' or 'finished') of the callback state
    (an empty state, kept when no callback is registered, stays empty)."""
    if not state:
        return
    for key in keys:
        if where == "ready":
            state["waiting"].pop(key, None)
            state["ready"][key] = None
        elif where == "running":  # a fused unit's inner keys run without having been ready
            state["waiting"].pop(key, None)
            state["ready"].pop(key, None)
            state["running"].add(key)
        else:
            state["running"].discard(key)
            state["finished"].add(key)
            for child in state["dependents"].get(key, ()):  # as Dask: waiting holds what is unfinished
                if child in state["waiting"]:
                    state["waiting"][child].discard(key)
