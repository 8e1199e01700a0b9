"""From a Dask graph to work units: cull, resolve aliases, order, group. Pure functions, no I/O.

A *work unit* is the set of tasks one activation runs. Values the client already holds (Dask
``DataNode`` literals) are never dispatched, and neither are ``Alias`` nodes: a unit reading an
alias reads its target. Today every task is its own unit; the unit stays an explicit concept so
that fusing and batching change only :func:`group_units`.
"""
from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

from dask._task_spec import Alias, DataNode, GraphNode, convert_legacy_graph, cull
from dask.core import flatten
from dask.order import order

Key = Hashable


class LocalDiskGraphError(ValueError):
    """The graph needs the client's local disk, which activations cannot reach."""


@dataclass(frozen=True)
class Unit:
    """Tasks that run in one activation, in an order that respects their dependencies."""

    name: str
    tasks: dict[Key, GraphNode]
    inputs: tuple[Key, ...]
    outputs: tuple[Key, ...]
    priority: int


@dataclass
class Plan:
    """Units, their dependencies, and where every key's value comes from."""

    units: dict[str, Unit]
    dependencies: dict[str, set[str]]
    dependents: dict[str, set[str]]
    #: key -> the unit producing it (only for dispatched tasks)
    producer: dict[Key, str]
    #: key -> value the client already has (DataNode literals)
    data: dict[Key, object]
    #: alias key -> the key it finally resolves to
    aliases: dict[Key, Key] = field(default_factory=dict)

    def source(self, key: Key) -> Key:
        """The key whose value ``key`` denotes (itself unless it is an alias)."""
        return self.aliases.get(key, key)

    def consumers(self) -> dict[Key, set[str]]:
        """For each source key read by a unit, the units that read it (to release data early)."""
        readers: dict[Key, set[str]] = {}
        for unit in self.units.values():
            for key in unit.inputs:
                readers.setdefault(self.source(key), set()).add(unit.name)
        return readers


def as_task_graph(graph: Mapping) -> dict[Key, GraphNode]:
    """Any Dask graph (legacy tuples or task spec) as ``{key: GraphNode}``, via Dask's converter."""
    return convert_legacy_graph(dict(graph))


def check_runs_remotely(graph: Mapping[Key, GraphNode]) -> None:
    """Refuse graphs that shuffle through ``partd`` on the client's disk (dask.bag's disk groupby)."""
    for key, node in graph.items():
        func = getattr(node, "func", None)
        while isinstance(func, functools.partial):
            func = func.func
        if (getattr(func, "__module__", None) or "").split(".")[0] == "partd":
            raise LocalDiskGraphError(
                f"Task {key!r} shuffles through partd on this machine's local disk, which "
                "OpenWhisk activations cannot reach. Use a task-based shuffle instead, e.g. "
                "bag.groupby(..., shuffle='tasks')."
            )


def _resolve_aliases(graph: Mapping[Key, GraphNode]) -> dict[Key, Key]:
    aliases: dict[Key, Key] = {}
    for key, node in graph.items():
        if isinstance(node, Alias):
            target, seen = node.target, {key}
            while isinstance(graph.get(target), Alias) and target not in seen:
                seen.add(target)
                target = graph[target].target
            aliases[key] = target
    return aliases


def group_units(tasks: Mapping[Key, GraphNode], priority: Mapping[Key, int]) -> list[list[Key]]:
    """Which tasks run together, each group in execution order. Today: one task per unit."""
    return [[key] for key in sorted(tasks, key=priority.__getitem__)]


def flat_keys(keys: Key | list) -> list[Key]:
    """The keys in a scheduler's ``keys`` argument: one key, or (nested) lists of keys."""
    return list(flatten(keys)) if isinstance(keys, list) else [keys]


def _external_inputs(group: list[Key], tasks: Mapping[Key, GraphNode]) -> list[Key]:
    """Keys the tasks of ``group`` read from outside it, in a stable order."""
    members = set(group)
    return sorted({d for k in group for d in tasks[k].dependencies if d not in members}, key=repr)


def build_plan(graph: Mapping, keys: Key | list) -> Plan:
    """Plan the computation of ``keys`` (one key or nested lists, as Dask passes) from ``graph``."""
    wanted = flat_keys(keys)
    dsk = cull(as_task_graph(graph), wanted)
    check_runs_remotely(dsk)
    priority = order(dsk) if dsk else {}
    aliases = _resolve_aliases(dsk)
    data = {k: node.value for k, node in dsk.items() if isinstance(node, DataNode)}
    tasks = {k: node for k, node in dsk.items() if k not in aliases and k not in data}
    missing = {aliases.get(k, k) for k in wanted} - set(tasks) - set(data)
    if missing:
        raise KeyError(f"Keys not in the graph: {sorted(map(repr, missing))}")

    groups = {f"u{index}": group for index, group in enumerate(group_units(tasks, priority))}
    producer = {key: name for name, group in groups.items() for key in group}
    inputs = {name: _external_inputs(group, tasks) for name, group in groups.items()}
    needed_outside = {aliases.get(k, k) for k in [*wanted, *(d for ins in inputs.values() for d in ins)]}
    units: dict[str, Unit] = {}
    dependencies: dict[str, set[str]] = {}
    dependents: dict[str, set[str]] = {name: set() for name in groups}
    for name, group in groups.items():
        units[name] = Unit(
            name=name,
            tasks={k: tasks[k] for k in group},
            inputs=tuple(inputs[name]),
            outputs=tuple(k for k in group if k in needed_outside),
            priority=priority[group[0]],
        )
        dependencies[name] = {producer[s] for s in (aliases.get(k, k) for k in inputs[name])
                              if s in producer} - {name}
        for dep in dependencies[name]:
            dependents[dep].add(name)
    return Plan(units, dependencies, dependents, producer, data, aliases)
