"""Results put together on the client: the plan's local tasks (Dask's ``finalize`` of arrays
and bags, containers of results) run here once the units are done, so no activation has to hold
a whole result and nothing crosses the store twice.

An array's blocks are copied into the result as they arrive, a few fetched ahead, so the client
holds the result and a few blocks, not the blocks and then their concatenation.
"""
from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping
from typing import Any

import dask.array.core
import numpy as np
from dask._task_spec import GraphNode, List, Task, TaskRef

from .callback_state import mark
from .job import Job

Key = Hashable
#: results smaller than this are not checked against the client's free memory (a file read saved)
CHECKED_RESULT_BYTES = 64 * 1024 * 1024
#: (chunks, dtype) of an array layer, by layer name (see ``plan.array_layouts``)
Layouts = Mapping[str, tuple[tuple[tuple[float, ...], ...], Any]]


def assemble(job: Job, wanted: list[Key], remote: list[Key], graph: Mapping, state: dict[str, Any],
             pretask, posttask, layouts: Layouts) -> dict[Key, Any]:
    """The values of ``wanted``: the units' results in ``remote`` fetched, the plan's local tasks
    run on them here (with Dask's callbacks)."""
    plan = job.plan
    streamed = {key: _blocks(node, layouts) for key, node in plan.local.items()}
    later = ({d for key, blocks in streamed.items() if blocks for d in plan.local[key].dependencies}
             - {d for key, blocks in streamed.items() if not blocks for d in plan.local[key].dependencies})
    _check_room(job, remote)
    values = job.values([k for k in remote if k not in later])
    for key, node in plan.local.items():
        mark(state, [key], "running")
        for f in pretask:
            f(key, graph, state)
        if streamed[key] is not None:
            values[key] = _stream_array(job, node, *streamed[key])
        else:
            values[key] = node({d: values[d] for d in node.dependencies})
        mark(state, [key], "finished")
        for f in posttask:
            f(key, None, graph, state, "client")
    return {key: values[key] if key in values else values[plan.source(key)] for key in wanted}


def _check_room(job: Job, keys: list[Key]) -> None:
    """Refuse, before fetching anything, a result the client's free memory cannot hold."""
    needed = job.result_bytes(keys)
    free = _available_bytes() if needed > CHECKED_RESULT_BYTES else None
    if free is not None and needed > free:
        raise MemoryError(
            f"The result is {needed / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB this "
            "machine has free: write it to storage from the workers instead (for instance "
            "`x.to_zarr(...)`, `df.to_parquet(...)`, `bag.to_textfiles(...)`), or reduce it before "
            "computing")


def _available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _blocks(node: GraphNode, layouts: Layouts) -> tuple[np.ndarray, dict[Key, tuple[slice, ...]]] | None:
    """For Dask's finalize of one array whose blocks have known shapes: the empty result and
    where each block goes in it; None otherwise (the general path)."""
    if not (isinstance(node, Task) and node.func is dask.array.core.finalize and len(node.args) == 1
            and isinstance(node.args[0], List)):
        return None
    grid = _nested_keys(node.args[0])
    flat = list(_flatten(grid))
    if grid is None or len(flat) < 2 or not all(isinstance(k, tuple) for k in flat):
        return None
    names = {k[0] for k in flat}
    if len(names) != 1 or next(iter(names)) not in layouts:
        return None
    chunks, dtype = layouts[next(iter(names))]
    if any(len(k) != 1 + len(chunks) for k in flat) or _depth(grid) != len(chunks):
        return None
    offsets = [[0, *itertools.accumulate(int(c) for c in dim)] for dim in chunks]
    shape = tuple(o[-1] for o in offsets)
    if len(flat) != int(np.prod([len(dim) for dim in chunks])):
        return None
    where = {k: tuple(slice(offsets[d][i], offsets[d][i + 1]) for d, i in enumerate(k[1:])) for k in flat}
    return np.empty(shape, dtype=dtype), where


def _stream_array(job: Job, node: GraphNode, result: np.ndarray,
                  where: dict[Key, tuple[slice, ...]]) -> Any:
    """Copy each block into ``result`` as it arrives; if a block is not the numpy array its
    layout promised (another array type), run Dask's own finalize on all of them instead."""
    for key, block in job.iter_values(list(where)):
        target = result[where[key]]
        if type(block) is not np.ndarray or block.shape != target.shape or block.dtype != result.dtype:
            del result, target, block
            return node(job.values(list(node.dependencies)))
        target[...] = block
    return result


def _nested_keys(container: List) -> list | None:
    """The keys in a nested ``List`` of task references; None if anything else is in it."""
    out = []
    for item in container.args:
        if isinstance(item, TaskRef):
            out.append(item.key)
        elif isinstance(item, List):
            inner = _nested_keys(item)
            if inner is None:
                return None
            out.append(inner)
        else:
            return None
    return out


def _flatten(grid: list | None):
    for item in grid or ():
        if isinstance(item, list):
            yield from _flatten(item)
        else:
            yield item


def _depth(grid: list) -> int:
    return 1 + (_depth(grid[0]) if grid and isinstance(grid[0], list) else 0)
