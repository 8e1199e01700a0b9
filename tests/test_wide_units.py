"""No graph shape breaks OpenWhisk's 1 MiB limits: a task with 20,000 inputs, and activations
batching 10,000 units, fit (their descriptors move into stored manifests and envelopes)."""
from __future__ import annotations

import sys

import cloudpickle
import dask

import dask_whisk
from dask_whisk import whisk_get

cloudpickle.register_pickle_by_value(sys.modules[__name__])

WIDTH = 20_000


def part(i: int) -> bytes:
    """1 kB whose first four bytes say which part it is."""
    return i.to_bytes(4, "little") * 250


def total(*parts: bytes) -> int:
    return sum(int.from_bytes(p[:4], "little") for p in parts)


def wide_graph(width: int) -> dict:
    """A raw graph: ``width`` parts and one task reading them all."""
    dsk = {("part", i): (part, i) for i in range(width)}
    dsk["total"] = (total, *[("part", i) for i in range(width)])
    return dsk


#: unfused (the sum's unit would compute half the parts itself), the parts go in two activations
#: of about 10,000 units: their outputs pass the inline budget, so most are stored, and even the
#: descriptors of 10,000 outputs are more than a result may hold
WIDE_BATCHES = {"whisk.fuse": False, "whisk.parallelism": 2, "whisk.batch-max-units": 10_000,
                "whisk.unit-target-seconds": 1e9}


def test_a_task_with_20000_inputs_on_the_local_store(local_store_root):
    with dask.config.set(WIDE_BATCHES):
        assert whisk_get(wide_graph(WIDTH), "total") == sum(range(WIDTH))
    report = dask_whisk.last_report()
    assert report.activations <= 8, report.summary()
    assert report.units == WIDTH + 1
    assert report.bytes_stored > 18_000 * 1_000, report.summary()  # most of the inputs are stored
    assert not list(local_store_root.iterdir()), "the job left objects behind"


def test_a_task_with_20000_inputs_on_swift(swift_env):
    """The same on Swift: the inputs' grants are two prefix signatures, and the stored values
    travel as a few bundles rather than 19,000 objects (each its own request)."""
    settings = {"whisk.store": "swift", "whisk.swift.auth-url": swift_env.auth_url,
                "whisk.swift.user": swift_env.user, "whisk.swift.key": swift_env.key}
    with dask.config.set({**WIDE_BATCHES, **settings}):
        assert whisk_get(wide_graph(WIDTH), "total") == sum(range(WIDTH))
    report = dask_whisk.last_report()
    assert report.activations <= 8 and report.units == WIDTH + 1, report.summary()
    assert report.bytes_stored > 18_000 * 1_000, report.summary()
