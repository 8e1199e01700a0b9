"""From a Dask graph to work units: cull, resolve aliases, order, group. Pure functions, no I/O.

A *work unit* is the set of tasks that run together in one activation (the grouping rules are in
:mod:`dask_whisk.fuse`). Values the client already holds (Dask ``DataNode`` literals) are never
dispatched, and neither are ``Alias`` nodes: a unit reading an alias reads its target.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from dask._expr import Expr
from dask.highlevelgraph import HighLevelGraph

import dask.array.core
import dask.bag.core
from dask._task_spec import Alias, DataNode, GraphNode, NestedContainer, Task, convert_legacy_graph, cull
from dask.core import flatten
from dask.order import order

from .fuse import FuseSettings, crossing_generators, group_tasks, guessed_sizes, peak_bytes

Key = Hashable


class LocalDiskGraphError(ValueError):
    """The graph needs the client's local disk, which activations cannot reach."""


@dataclass(frozen=True)
class Unit:
    """Tasks that run in one activation, in an order that respects their dependencies.

    ``keys`` are the graph's tasks in the unit; ``tasks`` also holds the aliases among them."""

    name: str
    keys: tuple[Key, ...]
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
    #: tasks the client runs itself once the units are done (assembly of results), in order
    local: dict[Key, GraphNode] = field(default_factory=dict)
    #: generators each unit reading them makes itself (see ``fuse.crossing_generators``)
    remade: frozenset = frozenset()

    def source(self, key: Key) -> Key:
        """The key whose value ``key`` denotes (itself unless it is an alias)."""
        return self.aliases.get(key, key)

    def topological(self) -> list[str]:
        """Unit names, each after every unit it depends on (Kahn's algorithm)."""
        missing = {name: len(deps) for name, deps in self.dependencies.items()}
        ready = [name for name, count in missing.items() if not count]
        for name in ready:  # grows while iterating
            for child in self.dependents[name]:
                missing[child] -= 1
                if not missing[child]:
                    ready.append(child)
        return ready

    def critical_path(self, seconds: Mapping[str, float] | None = None) -> float:
        """The longest chain of dependent units: counted in units, or, given ``seconds`` per unit
        name, in seconds (a unit missing from ``seconds`` counts 0, e.g. one that never ran)."""
        finish: dict[str, float] = {}
        for name in self.topological():
            own = 1.0 if seconds is None else seconds.get(name, 0.0)
            finish[name] = own + max((finish[d] for d in self.dependencies[name]), default=0.0)
        return max(finish.values(), default=0.0)

    def summary(self) -> dict[str, int]:
        """Counts for tests and reports: tasks, units, the critical path measured in units, and
    the generator chunks units make again rather than read."""
        return {
            "tasks": (sum(len(u.keys) for u in self.units.values()) + len(self.local)
                      + len(self.remade - self.producer.keys())),
            "units": len(self.units),
            # times a unit makes a generator's chunk that another unit also makes or reads
            "remade": sum(k not in u.keys for u in self.units.values() for k in u.tasks if k in self.remade),
            "critical_path_units": int(self.critical_path()),
            "literals": len(self.data),
            "aliases": len(self.aliases),
        }

    def consumers(self) -> dict[Key, set[str]]:
        """For each source key read by a unit, the units that read it (to release data early)."""
        readers: dict[Key, set[str]] = {}
        for unit in self.units.values():
            for key in unit.inputs:
                readers.setdefault(self.source(key), set()).add(unit.name)
        return readers


def as_task_graph(graph: Mapping) -> dict[Key, GraphNode]:
    """Any Dask graph (legacy tuples or task spec) as ``{key: GraphNode}``, via Dask's converter
    (skipped when every node is one already: converting walks every task again)."""
    if all(isinstance(node, GraphNode) for node in graph.values()):
        return {k: node for k, node in graph.items() if not (isinstance(node, Alias) and node.target == k)}
    return convert_legacy_graph(dict(graph))


def check_runs_remotely(graph: Mapping[Key, GraphNode]) -> None:
    """Refuse graphs that shuffle through ``partd`` on the client's disk (dask.bag's disk groupby,
    dask.dataframe's ``shuffle_method="disk"``)."""
    for key, node in graph.items():
        func = getattr(node, "func", None)
        while isinstance(func, functools.partial):
            func = func.func
        on_disk = (getattr(func, "__module__", None) or "").split(".")[0] == "partd"
        if on_disk or type(func).__name__ == "maybe_buffered_partd":  # dataframe's partd handle
            raise LocalDiskGraphError(
                f"Task {key!r} shuffles through partd on this machine's local disk, which "
                "OpenWhisk activations cannot reach. Use a task-based shuffle instead: "
                "bag.groupby(..., shuffle='tasks'); for dataframes leave dask config "
                "'dataframe.shuffle.method' at 'tasks' (dask-whisk's default) or pass "
                "shuffle_method='tasks'."
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


def _graphs(collection: Any, max_depth: int = 8) -> Iterator[HighLevelGraph | Expr]:
    """The high-level graphs and expressions inside what Dask hands the scheduler."""
    todo, seen = [(collection, 0)], set()
    while todo:
        obj, depth = todo.pop()
        if id(obj) in seen or depth > max_depth:
            continue
        seen.add(id(obj))
        if isinstance(obj, HighLevelGraph):
            yield obj
        elif isinstance(obj, Expr):
            yield obj
            todo.extend((op, depth + 1) for op in obj.operands)


def known_sizes(collection: Any, keys: Iterable[Key]) -> dict[Key, int]:
    """Output bytes of those ``keys`` that are array chunks, from the chunk shapes and dtypes in
    the high-level graphs Dask hands the scheduler (the layers' ``collection_annotations``).

    A layer describes its own chunks only, so trust these for tasks that read nothing (sources
    such as ``random``, ``ones`` or ``from_array``); ``fuse`` does."""
    layers: dict[str, Mapping[str, Any]] = {}
    for graph in _graphs(collection):
        if isinstance(graph, HighLevelGraph):
            layers.update((name, layer.collection_annotations or {}) for name, layer in graph.layers.items())
    sizes = {}
    for key in keys:
        if isinstance(key, tuple) and key and key[0] in layers:
            nbytes = _chunk_bytes(layers[key[0]], key[1:])
            if nbytes is not None:
                sizes[key] = nbytes
    return sizes


def array_layouts(collection: Any) -> dict[str, tuple[tuple[tuple[float, ...], ...], Any]]:
    """Layer name -> (chunks, dtype) for the array layers whose chunk sizes are all known."""
    layouts = {}
    for graph in _graphs(collection):
        if isinstance(graph, HighLevelGraph):
            for name, layer in graph.layers.items():
                info = layer.collection_annotations or {}
                chunks, dtype = info.get("chunks"), info.get("dtype")
                if chunks and dtype is not None and all(
                        not math.isnan(c) for dim in chunks for c in dim):
                    layouts[name] = (chunks, dtype)
    return layouts


def annotated(collection: Any, name: str) -> dict[Key, Any]:
    """Key -> the value of annotation ``name`` (``dask.annotate(name=...)``) for the keys that
    carry it, from high-level graph layers and from expressions (delayed).

    Only the outermost expression is asked for its annotations (from the optimised graph Dask
    already made for the scheduler); asking each inner one would optimise it again, which for
    thousands of delayed values took longer than the job. Inner high-level graphs are read
    directly: blockwise fusion can drop annotations from the optimised graph.
    """
    found: dict[Key, Any] = {}
    for graph in _graphs(collection):
        if isinstance(graph, HighLevelGraph):
            for layer in graph.layers.values():
                if layer.annotations and name in layer.annotations:
                    value = layer.annotations[name]
                    found.update((key, value(key) if callable(value) else value) for key in layer.keys())
        elif graph is collection:
            found.update(graph.__dask_annotations__().get(name, {}))
    return found


def _chunk_bytes(annotations: Mapping[str, Any], index: tuple) -> int | None:
    """Bytes of chunk ``index`` of the array a layer's annotations describe, if they say."""
    chunks, itemsize = annotations.get("chunks"), getattr(annotations.get("dtype"), "itemsize", None)
    if not chunks or not itemsize or len(chunks) != len(index):
        return None
    try:
        return itemsize * math.prod(c[i] for c, i in zip(chunks, index, strict=True))
    except (IndexError, TypeError):
        return None


def flat_keys(keys: Key | list) -> list[Key]:
    """The keys in a scheduler's ``keys`` argument: one key, or (nested) lists of keys."""
    return list(flatten(keys)) if isinstance(keys, list) else [keys]


def _unit_tasks(group: list[Key], tasks: Mapping[Key, GraphNode], aliases: Mapping[Key, Key],
                remade: set[Key] = frozenset()) -> tuple[dict[Key, GraphNode], list[Key]]:
    """The nodes a unit runs, and the keys it reads from outside, in a stable order.

    A member reading an alias of another member gets that alias as a node of its own, placed
    before it, so the activation resolves it as the client would; a generator in ``remade`` it
    reads is made here, just before its first reader (so no unit holds all of them at once)."""
    members = set(group)
    nodes: dict[Key, GraphNode] = {}
    external: set[Key] = set()
    for key in group:
        for dep in tasks[key].dependencies:
            source = aliases.get(dep, dep)
            if source in remade and source not in members:
                nodes.setdefault(source, tasks[source])
            elif source not in members:
                external.add(dep)
                continue
            if dep != source and dep not in nodes:
                nodes[dep] = Alias(dep, source)
        nodes[key] = tasks[key]
    return nodes, sorted(external, key=repr)


#: functions that only put together values the client receives anyway (Dask's finalize of
#: arrays and bags, concatenation); with containers of values (``List``, ``Tuple``, ``Dict``)
ASSEMBLY: set[Any] = {dask.array.core.finalize, dask.array.core.concatenate3, dask.bag.core.finalize,
                      list, tuple}


def _assembles(node: GraphNode) -> bool:
    return isinstance(node, NestedContainer) or (isinstance(node, Task) and node.func in ASSEMBLY)


def client_tasks(tasks: Mapping[Key, GraphNode], task_deps: Mapping[Key, set[Key]],
                 wanted: Iterable[Key]) -> dict[Key, GraphNode]:
    """The tasks the client runs itself, dependencies first: assembly tasks (see ``ASSEMBLY``)
    whose every consumer is the client or another of them. Running them remotely would make one
    activation hold the whole result (and the client fetch it again)."""
    consumers: dict[Key, set[Key]] = {k: set() for k in tasks}
    for key, deps in task_deps.items():
        for dep in deps:
            consumers[dep].add(key)
    local: dict[Key, GraphNode] = {}
    todo = [k for k in dict.fromkeys(wanted) if k in tasks]
    while todo:
        key = todo.pop()
        if key in local or not _assembles(tasks[key]) or not consumers[key] <= set(local):
            continue
        local[key] = tasks[key]
        todo.extend(task_deps[key])
    ordered: dict[Key, GraphNode] = {}

    def visit(key: Key) -> None:
        if key in local and key not in ordered:
            for dep in task_deps[key]:
                visit(dep)
            ordered[key] = local[key]

    for key in local:
        visit(key)
    return ordered


#: graphs up to this many tasks are ordered by ``dask.order``; larger ones by
#: :func:`depth_first_order`, since dask.order's cost grows faster than the graph (measured:
#: 11 of the 20 profiled seconds of planning 100,000 tasks) while its gain there is small
ORDER_MAX_TASKS = 20_000


def depth_first_order(dsk: Mapping[Key, GraphNode], outputs: list[Key]) -> dict[Key, int]:
    """A priority for every key: a depth-first postorder from ``outputs`` (then any key left),
    so each task comes right after its inputs and one branch is finished before the next starts,
    as dask.order aims for, in time linear in the graph. Inputs are visited in ``str`` order,
    so the result does not depend on hashing."""
    priority: dict[Key, int] = {}
    for start in [*outputs, *dsk]:
        if start in priority or start not in dsk:
            continue
        stack = [(start, iter(_sorted_deps(dsk[start])))]
        entered = {start}
        while stack:
            key, deps = stack[-1]
            for dep in deps:
                if dep not in priority and dep not in entered and dep in dsk:
                    entered.add(dep)
                    stack.append((dep, iter(_sorted_deps(dsk[dep]))))
                    break
            else:
                stack.pop()
                priority[key] = len(priority)
    return priority


def _sorted_deps(node: GraphNode) -> list[Key]:
    deps = node.dependencies
    return sorted(deps, key=str) if len(deps) > 1 else list(deps)


def _group(dsk: Mapping[Key, GraphNode], tasks: Mapping[Key, GraphNode], task_deps: Mapping[Key, set],
           aliases: Mapping[Key, Key], wanted: list[Key], priority: Mapping[Key, int],
           sizes: Mapping[Key, int], settings: FuseSettings) -> tuple[list[list[Key]], set[Key]]:
    """The groups of ``tasks``, and the generators each group reading them makes itself.

    Generators read across the first grouping's units are made by their readers, and the rest
    grouped again as if they were literals, unless a unit of that grouping would then hold more
    at once (by :func:`fuse.peak_bytes`, which guesses high: a reduction's output at its input's
    size) than the action's memory (``4 * max_bytes``) and than the first grouping's largest:
    then the first grouping stands."""
    grouped = group_tasks(tasks, task_deps, priority, sizes, settings)
    remade = crossing_generators(grouped, tasks, task_deps, sizes, settings)
    if not remade:
        return grouped, set()
    kept = {aliases.get(k, k) for k in wanted} & remade  # asked for: made once on their own too
    regrouped = group_tasks({k: n for k, n in tasks.items() if k not in remade or k in kept},
                            {k: deps - remade for k, deps in task_deps.items() if k not in remade or k in kept},
                            priority, sizes, settings)
    guess = guessed_sizes(sorted(tasks, key=priority.__getitem__), task_deps, sizes)

    def largest(groups: list[list[Key]], made: set[Key]) -> int:
        bodies = [_unit_tasks(group, dsk, aliases, made) for group in groups]
        read = {aliases.get(k, k) for k in wanted} | {aliases.get(k, k) for _, ins in bodies for k in ins}
        return max(peak_bytes(nodes, [aliases.get(k, k) for k in inputs], read.intersection(group), guess)
                   for group, (nodes, inputs) in zip(groups, bodies, strict=True))

    if largest(regrouped, remade) > max(4 * settings.max_bytes, largest(grouped, set())):
        return grouped, set()
    return regrouped, remade


def build_plan(graph: Mapping, keys: Key | list, sizes: Mapping[Key, int] | None = None,
               settings: FuseSettings = FuseSettings()) -> Plan:
    """Plan the computation of ``keys`` (one key or nested lists, as Dask passes) from ``graph``.

    ``sizes`` holds output bytes known before running (see :func:`known_sizes`)."""
    wanted = flat_keys(keys)
    dsk = cull(as_task_graph(graph), wanted)
    check_runs_remotely(dsk)
    priority = (order(dsk) if len(dsk) <= ORDER_MAX_TASKS else depth_first_order(dsk, wanted)) if dsk else {}
    aliases = _resolve_aliases(dsk)
    data = {k: node.value for k, node in dsk.items() if isinstance(node, DataNode)}
    tasks = {k: node for k, node in dsk.items() if k not in aliases and k not in data}
    missing = {aliases.get(k, k) for k in wanted} - set(tasks) - set(data)
    if missing:
        raise KeyError(f"Keys not in the graph: {sorted(map(repr, missing))}")

    task_deps = {k: {s for s in (aliases.get(d, d) for d in node.dependencies) if s in tasks}
                 for k, node in tasks.items()}
    local = client_tasks(tasks, task_deps, (aliases.get(k, k) for k in wanted))
    if local:
        wanted = [*wanted, *(d for node in local.values() for d in node.dependencies)]
        tasks = {k: node for k, node in tasks.items() if k not in local}
        task_deps = {k: deps - set(local) for k, deps in task_deps.items() if k not in local}
    grouped, remade = _group(dsk, tasks, task_deps, aliases, wanted, priority, sizes or {}, settings)
    groups = {f"u{index}": group for index, group in enumerate(grouped)}
    producer = {key: name for name, group in groups.items() for key in group}
    bodies = {name: _unit_tasks(group, dsk, aliases, remade) for name, group in groups.items()}
    needed_outside = {aliases.get(k, k) for k in [*wanted, *(d for _, ins in bodies.values() for d in ins)]}
    units: dict[str, Unit] = {}
    dependencies: dict[str, set[str]] = {}
    dependents: dict[str, set[str]] = {name: set() for name in groups}
    for name, group in groups.items():
        nodes, inputs = bodies[name]
        units[name] = Unit(
            name=name,
            keys=tuple(group),
            tasks=nodes,
            inputs=tuple(inputs),
            outputs=tuple(k for k in group if k in needed_outside),
            priority=priority[group[0]],
        )
        dependencies[name] = {producer[s] for s in (aliases.get(k, k) for k in inputs) if s in producer}
        for dep in dependencies[name]:
            dependents[dep].add(name)
    return Plan(units, dependencies, dependents, producer, data, aliases, local, frozenset(remade))
