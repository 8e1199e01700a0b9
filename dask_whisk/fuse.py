"""Which tasks share an activation: fusion rules over a culled task graph. Pure, no I/O.

An activation costs an invoke round trip and every value that leaves it crosses the store, so
tasks are grouped when that saves both without losing parallelism the namespace could use:

1. cheap tasks (``getitem``, containers) run with their only producer, else their only consumer;
2. linear chains: a task whose only consumer has no other input runs with that consumer;
3. large outputs pull their consumers in (Wukong's rule), while the group's known bytes stay
   within ``max_bytes`` and no path leaves the group and comes back (no cycle between units);
   sizes are trusted for tasks that read nothing, the chunks an array layer describes;
4. fan-in trees: a task absorbs producers that feed only it, while a group stays within
   ``max_tasks`` (the graph's tasks over the parallelism, so the widest level stays wide) and
   its inputs within ``max_bytes`` (a value's size, where no layer says it, guessed at its
   largest input's): a matrix product's partial sums would otherwise gather every block of a
   row and a column into one activation.
   The widest level is kept only as wide as the work can use: a graph of array chunks that
   library functions make and transform (numpy's, Dask's: time about proportional to bytes)
   starting from fewer than ``parallelism * unit_bytes`` bytes of chunks gets one unit per
   ``unit_bytes`` of them (:func:`useful_parallelism`): a 4-chunk sum of 2 MB chunks is one
   activation, not five in two rounds.

Where these rules still leave a large chunk made by one of Dask's array-creation functions
(random numbers, ``ones``, ``arange``: see :data:`GENERATORS`) read across units, every unit
reading one makes it again instead (:func:`crossing_generators`): 32 MB of random numbers take
tens of milliseconds to make and longer to write to a cloud store and read back in each reader,
as Dask's own ``inline_functions`` trades for its fast functions. The graph is then grouped
again without those edges, so its consumers group by their own work (a matrix product's
blocks by output block, not by shared input).

Batching many small independent groups into one activation is decided at dispatch time, when
the free concurrency and the measured durations are known (see ``scheduler``).
"""
from __future__ import annotations

import functools
import math
import operator
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import dask.array.chunk
import dask.array.random
import dask.array.wrap
import numpy as np
from dask._task_spec import Alias, DataNode, Dict, GraphNode, List, Task

Key = Hashable

#: functions whose task costs nothing next to an invoke: always run beside a neighbour
CHEAP_FUNCTIONS = frozenset({operator.getitem, tuple, list, dict, set, len, id})
#: Dask's array-creation functions, whose chunk (a function of literal arguments: a seed, a
#: shape, a fill value) is cheaper to make again in each unit reading it than to move there
GENERATORS = frozenset(filter(None, (
    getattr(dask.array.random, "_apply_random", None),
    getattr(dask.array.random, "_apply_random_func", None),
    getattr(dask.array.wrap, "_broadcast_trick_inner", None),
    getattr(dask.array.chunk, "arange", None),
    getattr(dask.array.chunk, "linspace", None),
    np.eye,
)))
#: modules whose functions do array work in time about proportional to the bytes they touch
LIBRARY_MODULES = frozenset({"numpy", "dask", "operator", "_operator", "builtins", "math", "functools",
                             "_functools", "itertools", "toolz", "tlz"})
#: visits allowed when checking that a merge leaves the unit graph acyclic (beyond it: refuse)
CYCLE_CHECK_VISITS = 10_000


@dataclass(frozen=True)
class FuseSettings:
    """Limits of the grouping rules; ``fuse=False`` gives one task per unit."""

    fuse: bool = True
    #: concurrent activations the namespace can run: the widest level keeps at least this many units
    parallelism: int = 64
    #: an output at least this large pulls its consumers into its unit
    large_bytes: int = 2 * 1024 * 1024
    #: known bytes (inputs and outputs) a unit built by rule 3 may hold
    max_bytes: int = 128 * 1024 * 1024
    #: array bytes of library work worth an activation of their own (0: use all the parallelism)
    unit_bytes: int = 0


def is_cheap(node: GraphNode) -> bool:
    """Whether running ``node`` costs nothing worth an activation of its own."""
    if isinstance(node, (List, Dict, DataNode)):
        return True
    return isinstance(node, Task) and node.func in CHEAP_FUNCTIONS


def is_generator(node: GraphNode) -> bool:
    """Whether ``node`` makes an array chunk from literals alone with one of :data:`GENERATORS`."""
    func = getattr(node, "func", None)
    while isinstance(func, functools.partial):
        func = func.func
    return isinstance(node, Task) and not node.dependencies and func in GENERATORS


def _module_of(func: Any) -> str:
    """The top-level package of a callable (a method descriptor's: its class's)."""
    owner = getattr(func, "__objclass__", None)
    module = getattr(owner or func, "__module__", None) or type(func).__module__
    return module.partition(".")[0]


def is_library_work(value: Any) -> bool:
    """Whether every function that ``value`` (a task, with its nested tasks, partials and
    composed functions) calls is numpy's, Dask's or the standard library's: a user's own
    function may take any time over few bytes (a parameter sweep), so it never counts.
    Literal data is not searched (only a literal that is itself a function is checked)."""
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, Task):  # List and Dict too
            todo.append(item.func)
            todo.extend(item.args)
            todo.extend(item.kwargs.values())
        elif isinstance(item, DataNode):
            if callable(item.value):
                todo.append(item.value)
        elif isinstance(item, functools.partial):
            todo.extend((item.func, *item.args, *item.keywords.values()))
        elif isinstance(item, (list, tuple)):
            todo.extend(item)
        elif isinstance(item, dict):  # a fused task's subgraph
            todo.extend(item.values())
        elif hasattr(item, "funcs") and _module_of(item) in LIBRARY_MODULES:  # toolz's compose
            todo.extend(item.funcs)
        elif callable(item) and not isinstance(item, type) and _module_of(item) not in LIBRARY_MODULES:
            return False
    return True


def useful_parallelism(tasks: Mapping[Key, GraphNode], dependencies: Mapping[Key, set],
                       guess: Mapping[Key, int], settings: FuseSettings) -> int:
    """The concurrency the graph's work can use: the namespace's, or for a graph of array
    chunks of known size (every task that reads nothing has one) made and transformed by
    library functions only (:func:`is_library_work`), one activation per ``unit_bytes`` of
    those chunks (the data the work reads: what it derives is guessed too high to count)."""
    sources = [guess.get(k, 0) for k, deps in dependencies.items() if not deps]
    if not settings.unit_bytes or not all(sources):
        return settings.parallelism
    needed = max(1, math.ceil(sum(sources) / settings.unit_bytes))
    if needed >= settings.parallelism or not all(map(is_library_work, tasks.values())):
        return settings.parallelism
    return needed


def crossing_generators(groups: list[list[Key]], tasks: Mapping[Key, GraphNode],
                        dependencies: Mapping[Key, set], sizes: Mapping[Key, int],
                        settings: FuseSettings = FuseSettings()) -> set[Key]:
    """The generator tasks (:func:`is_generator`) of at least ``large_bytes`` known output, if a
    task of another group than its own reads one of them (else none): then every reader had
    better make the chunks itself, and the graph be grouped without them (left in, those the
    grouping kept with their readers would pull the others' readers in again)."""
    if not settings.fuse:
        return set()
    group_of = {key: index for index, group in enumerate(groups) for key in group}
    large = {k for k, node in tasks.items()
             if sizes.get(k, 0) >= settings.large_bytes and is_generator(node)}
    crossing = any(d in large and group_of[d] != group_of[key]
                   for key, deps in dependencies.items() for d in deps)
    return large if crossing else set()


class _Groups:
    """Union-find over tasks, with each group's members kept in a list."""

    def __init__(self, keys) -> None:
        self.parent = {k: k for k in keys}
        self.members = {k: [k] for k in keys}

    def find(self, key: Key) -> Key:
        root = key
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[key] != root:
            self.parent[key], key = root, self.parent[key]
        return root

    def union(self, a: Key, b: Key) -> Key:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if len(self.members[ra]) < len(self.members[rb]):
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.members[ra].extend(self.members.pop(rb))
        return ra


def group_tasks(
    tasks: Mapping[Key, GraphNode],
    dependencies: Mapping[Key, set],
    priority: Mapping[Key, int],
    sizes: Mapping[Key, int] | None = None,
    settings: FuseSettings = FuseSettings(),
) -> list[list[Key]]:
    """Partition ``tasks`` into groups, each in execution (``dask.order``) order, groups in order
    of their first task. ``dependencies`` maps each task to the tasks it reads (aliases resolved,
    client-held values left out); ``sizes`` holds output bytes known before running."""
    by_priority = sorted(tasks, key=priority.__getitem__)
    if not settings.fuse:
        return [[k] for k in by_priority]
    sizes = sizes or {}
    dependents: dict[Key, set] = {k: set() for k in tasks}
    for key, deps in dependencies.items():
        for dep in deps:
            dependents[dep].add(key)
    groups = _Groups(tasks)

    def ext(root: Key, links: Mapping[Key, set]) -> set:
        return {groups.find(o) for m in groups.members[root] for o in links[m]} - {root}

    # 1. cheap tasks beside their only producer (they are smaller), else their only consumer
    for key in by_priority:
        if not is_cheap(tasks[key]):
            continue
        root = groups.find(key)
        if not all(is_cheap(tasks[m]) for m in groups.members[root]):
            continue  # already beside a producer or consumer that does real work
        for links in (dependencies, dependents):
            neighbours = ext(root, links)
            if len(neighbours) == 1:
                groups.union(root, neighbours.pop())
                break
    # 2. linear chains
    for key in by_priority:
        if len(dependents[key]) == 1:
            (consumer,) = dependents[key]
            if len(dependencies[consumer]) == 1:
                groups.union(key, consumer)
    # 3. large outputs pull their consumers in
    known = {k: sizes[k] for k in tasks if not dependencies[k] and sizes.get(k, 0) >= settings.large_bytes}
    group_bytes = {}

    def nbytes(root: Key) -> int:
        if root not in group_bytes:
            group_bytes[root] = sum(known.get(m, 0) for m in groups.members[root])
        return group_bytes[root]

    for key in sorted(known, key=priority.__getitem__):
        for consumer in sorted(dependents[key], key=priority.__getitem__):
            root, other = groups.find(key), groups.find(consumer)
            if root == other:
                continue
            # the consumer's other large inputs come along, so count them now
            pulled = {groups.find(d) for d in dependencies[consumer] if d in known} - {root, other}
            total = nbytes(root) + nbytes(other) + sum(nbytes(p) for p in pulled)
            merging = {root, other, *pulled}
            if total > settings.max_bytes or _closes_cycle(merging, groups, dependents):
                continue
            for part in merging:
                group_bytes.pop(part, None)
                root = groups.union(root, part)
    # 4. fan-in trees, bottom up, while a unit's inputs (all fetched before its first task runs)
    # stay within max_bytes: a value of unknown size is guessed at its largest input's size
    guess = guessed_sizes(by_priority, dependencies, sizes)
    parallelism = useful_parallelism(tasks, dependencies, guess, settings)
    max_tasks = max(1, math.ceil(len(tasks) / max(1, parallelism)))
    reads: dict[Key, set] = {}  # root -> the tasks outside it its members read (guessed > 0)
    read_bytes: dict[Key, int] = {}

    def inputs_of(root: Key) -> set:
        if root not in reads:
            reads[root] = {d for m in groups.members[root] for d in dependencies[m]
                           if guess[d] and groups.find(d) != root}
            read_bytes[root] = sum(guess[d] for d in reads[root])
        return reads[root]

    for key in by_priority:
        root = groups.find(key)
        feeders = {groups.find(d) for d in dependencies[key]} - {root}
        feeders = [d for d in feeders if ext(d, dependents) == {root}]
        size = len(groups.members[root])
        # a unit starts once all its inputs are there: a feeder taken in while others stay out
        # waits for them (a round later), and filling the unit it keeps the consumer's own
        # consumers out of it (a round more); so when not all fit, only small ones are
        whole = size + sum(len(groups.members[f]) for f in feeders) <= max_tasks
        # smallest first; ties in execution order, so a plan never depends on set order
        for feeder in sorted(feeders, key=lambda r: (len(groups.members[r]), priority[r])):
            if size + len(groups.members[feeder]) > max_tasks or (
                    not whole and len(groups.members[feeder]) > max_tasks // 2):
                break
            ours, theirs, produced = inputs_of(root), inputs_of(feeder), groups.members[feeder]
            total = (read_bytes[root] + sum(guess[d] for d in theirs if d not in ours)
                     - sum(guess[m] for m in produced if m in ours))
            if total > settings.max_bytes:
                continue
            size += len(produced)
            ours.update(theirs)
            ours.difference_update(produced)
            del reads[feeder], read_bytes[feeder], reads[root], read_bytes[root]
            root = groups.union(root, feeder)
            reads[root], read_bytes[root] = ours, total
    result = [sorted(members, key=priority.__getitem__) for members in groups.members.values()]
    return sorted(result, key=lambda g: priority[g[0]])


def guessed_sizes(keys: Iterable[Key], dependencies: Mapping[Key, set], sizes: Mapping[Key, int]
                  ) -> dict[Key, int]:
    """Output bytes of ``keys`` (each after its dependencies): known, else guessed at the
    largest of its inputs'."""
    guess: dict[Key, int] = {}
    for key in keys:
        guess[key] = sizes.get(key) or max((guess.get(d, 0) for d in dependencies[key]), default=0)
    return guess


def peak_bytes(nodes: Mapping[Key, GraphNode], inputs: Iterable[Key], outputs: Iterable[Key],
               guess: Mapping[Key, int]) -> int:
    """The most bytes a unit running ``nodes`` in their order holds at once, by ``guess``, as the
    worker runs it: its inputs all along (fetched first), every other value from its task until
    its last reader there (an output until the end)."""
    last_reader = {d: index for index, node in enumerate(nodes.values()) for d in node.dependencies}
    inputs, outputs = set(inputs), set(outputs)
    held = peak = sum(guess.get(k, 0) for k in inputs)
    for index, (key, node) in enumerate(nodes.items()):
        held += guess.get(key, 0) if not isinstance(node, Alias) else 0
        peak = max(peak, held)
        held -= sum(guess.get(d, 0) for d in node.dependencies
                    if last_reader[d] == index and d not in outputs and d not in inputs
                    and not isinstance(nodes.get(d), Alias))
    return peak


def _closes_cycle(merging: set, groups: _Groups, dependents: Mapping[Key, set]) -> bool:
    """Whether some path leaves the groups in ``merging`` and re-enters them (a cycle once merged).

    Conservative: a search longer than :data:`CYCLE_CHECK_VISITS` counts as a cycle."""
    frontier = [groups.find(o) for r in merging for m in groups.members[r] for o in dependents[m]]
    frontier = [g for g in frontier if g not in merging]
    seen: set = set()
    while frontier:
        root = frontier.pop()
        if root in seen:
            continue
        seen.add(root)
        if len(seen) > CYCLE_CHECK_VISITS:
            return True
        for m in groups.members[root]:
            for o in dependents[m]:
                g = groups.find(o)
                if g in merging:
                    return True
                if g not in seen:
                    frontier.append(g)
    return False
