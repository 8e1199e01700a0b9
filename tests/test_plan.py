"""Planning is pure: graphs in, units out, no server needed."""
import dask
import dask.array as da
import dask.bag as db
import pytest

from dask_whisk.plan import LocalDiskGraphError, build_plan


def test_aliases_and_literals_are_never_dispatched():
    x = da.ones((10, 10), chunks=5).sum()
    graph = x.__dask_graph__()
    plan = build_plan(graph, x.__dask_keys__())
    dispatched = {k for u in plan.units.values() for k in u.tasks}
    assert not dispatched & set(plan.aliases) and not dispatched & set(plan.data)
    for unit in plan.units.values():
        for dep in plan.dependencies[unit.name]:
            assert plan.units[dep].priority < unit.priority, "dask.order runs producers first"
    # every unit input is produced by a unit it depends on, or is a client-held literal
    for unit in plan.units.values():
        for key in unit.inputs:
            source = plan.source(key)
            assert source in plan.data or plan.producer[source] in plan.dependencies[unit.name]


def test_outputs_are_exactly_what_others_or_the_client_need():
    a = dask.delayed(lambda: 1)()
    b = dask.delayed(lambda v: v + 1)(a)
    plan = build_plan(b.__dask_graph__(), [b.key])
    by_key = {k: u for u in plan.units.values() for k in u.tasks}
    assert by_key[a.key].outputs == (a.key,)
    assert by_key[b.key].outputs == (b.key,)
    assert plan.dependencies[by_key[b.key].name] == {by_key[a.key].name}


def test_culls_to_requested_keys():
    a = dask.delayed(lambda: 1)()
    b = dask.delayed(lambda: 2)()
    graph = {**dict(a.__dask_graph__()), **dict(b.__dask_graph__())}
    plan = build_plan(graph, [a.key])
    assert [k for u in plan.units.values() for k in u.tasks] == [a.key]


def test_disk_shuffle_is_refused_with_advice():
    bag = db.from_sequence(range(10), npartitions=2).groupby(lambda v: v % 2)
    with pytest.raises(LocalDiskGraphError, match="shuffle='tasks'"):
        build_plan(bag.__dask_graph__(), bag.__dask_keys__())


def test_missing_key_is_a_clear_error():
    with pytest.raises(KeyError, match="not in the graph"):
        build_plan({"a": 1}, ["b"])
