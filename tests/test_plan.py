"""Planning is pure: graphs in, units out, no server needed."""
import operator
import random

import dask
import dask.array as da
import dask.bag as db
import pytest
from dask.core import flatten
from dask._task_spec import Task, TaskRef

from dask_whisk.fuse import FuseSettings, is_generator, peak_bytes
from dask_whisk.plan import LocalDiskGraphError, as_task_graph, build_plan, known_sizes


def run_locally(plan):
    """Execute a plan's units in dependency order the way activations do: each unit sees only
    its declared inputs and returns only its declared outputs."""
    values = dict(plan.data)
    for name in plan.topological():
        unit = plan.units[name]
        cache = {k: values[plan.source(k)] for k in unit.inputs}
        for key, node in unit.tasks.items():
            cache[key] = node(cache)
        values.update((k, cache[k]) for k in unit.outputs)
    return values


def collection_plan(x, settings=FuseSettings()):
    """The plan whisk_get makes for collection ``x``: the graph Dask hands the scheduler, with sizes."""
    seen = {}

    class Captured(Exception):
        pass

    def capture(dsk, keys, **kwargs):
        seen.update(dsk=dsk, graph=as_task_graph(dsk.__dask_graph__()), keys=keys)
        raise Captured

    with pytest.raises(Captured):
        dask.compute(x, scheduler=capture)
    sources = [k for k, node in seen["graph"].items() if not node.dependencies]
    sizes = known_sizes(seen["dsk"], sources)
    return build_plan(seen["graph"], seen["keys"], sizes, settings), sizes, seen


def check_well_formed(plan):
    """Every task in exactly one unit; the unit graph acyclic; inputs produced before use."""
    keys = [k for u in plan.units.values() for k in u.keys]
    assert len(keys) == len(set(keys))
    assert sorted(plan.topological()) == sorted(plan.units), "the unit graph has a cycle"
    for unit in plan.units.values():
        for key in unit.inputs:
            source = plan.source(key)
            assert source in plan.data or plan.producer[source] in plan.dependencies[unit.name]
            assert source in plan.data or source in plan.units[plan.producer[source]].outputs


def test_aliases_and_literals_are_never_dispatched():
    x = da.ones((10, 10), chunks=5).sum()
    plan = build_plan(x.__dask_graph__(), x.__dask_keys__())
    dispatched = {k for u in plan.units.values() for k in u.keys}
    assert not dispatched & set(plan.aliases) and not dispatched & set(plan.data)
    check_well_formed(plan)


def test_a_chain_is_one_unit_returning_only_what_the_client_needs():
    a = dask.delayed(lambda: 1)()
    b = dask.delayed(lambda v: v + 1)(a)
    plan = build_plan(b.__dask_graph__(), [b.key])
    assert [u.keys for u in plan.units.values()] == [(a.key, b.key)]
    assert plan.units["u0"].outputs == (b.key,)
    unfused = build_plan(b.__dask_graph__(), [b.key], settings=FuseSettings(fuse=False))
    by_key = {k: u for u in unfused.units.values() for k in u.keys}
    assert by_key[a.key].outputs == (a.key,) and by_key[b.key].outputs == (b.key,)
    assert unfused.dependencies[by_key[b.key].name] == {by_key[a.key].name}


def test_ten_thousand_task_chain_is_one_unit_and_computes():
    graph = {("c", 0): Task(("c", 0), operator.add, 0, 1)}
    graph.update({("c", i): Task(("c", i), operator.add, TaskRef(("c", i - 1)), 1) for i in range(1, 10_000)})
    plan = build_plan(graph, [("c", 9_999)])
    assert plan.summary()["units"] == 1 and plan.summary()["tasks"] == 10_000
    assert run_locally(plan)[("c", 9_999)] == 10_000


def test_width_is_kept_for_the_namespace_concurrency():
    graph = {("leaf", i): (operator.neg, i) for i in range(10_000)}
    graph.update({("s", j): (sum, [("leaf", i) for i in range(j * 100, j * 100 + 100)]) for j in range(100)})
    graph["total"] = (sum, [("s", j) for j in range(100)])
    for parallelism in (16, 64, 100):
        plan = build_plan(graph, ["total"], settings=FuseSettings(parallelism=parallelism))
        leaf_units = {plan.producer[("leaf", i)] for i in range(10_000)}
        assert len(leaf_units) >= min(parallelism, 100), "fusion serialised the widest level"
        assert len(plan.units) < 10_101 / 50, "the tree of sums was not fused"
        check_well_formed(plan)
        assert run_locally(plan)["total"] == -sum(range(10_000))


def test_small_array_work_runs_on_as_few_units_as_its_bytes_need():
    """A 4-chunk sum of 20 KB chunks is one unit (not five activations in two rounds); 80 MB of
    chunks spread over 80 MB / unit_bytes units; a user's function over the same small chunks
    (it may take any time: a parameter sweep) keeps the whole parallelism."""
    settings = FuseSettings(parallelism=8, unit_bytes=8 * 2**20)
    small, _, _ = collection_plan(da.ones((100, 100), chunks=50).sum(), settings)
    assert small.summary()["units"] == 1
    check_well_formed(small)
    assert collection_plan(da.ones((100, 100), chunks=50).sum(), FuseSettings(parallelism=8))[0] \
        .summary()["units"] == 5, "unit_bytes=0 no longer means the whole parallelism"
    x = da.ones((10_000, 1_000), chunks=(250, 1_000))  # 40 chunks of 2 MB: 80 MB in all
    wide = FuseSettings(parallelism=64, unit_bytes=8 * 2**20)
    medium = collection_plan((x + 1).sum(), wide)[0].summary()["units"]
    whole = collection_plan((x + 1).sum(), FuseSettings(parallelism=64))[0].summary()["units"]
    assert whole > 40 and 10 <= medium < 40
    swept, _, _ = collection_plan(da.ones((100, 100), chunks=50).map_blocks(lambda b: b * 2).sum(), settings)
    assert swept.summary()["units"] == 5


def test_fan_in_tree_groups_stay_within_tasks_over_parallelism():
    leaves = [dask.delayed(operator.neg)(i) for i in range(1024)]
    while len(leaves) > 1:
        leaves = [dask.delayed(operator.add)(leaves[i], leaves[i + 1]) for i in range(0, len(leaves), 2)]
    total = leaves[0]
    plan = build_plan(total.__dask_graph__(), [total.key], settings=FuseSettings(parallelism=64))
    assert max(len(u.keys) for u in plan.units.values()) <= -(-2047 // 64)
    assert plan.summary()["units"] <= 2047 // 8 and plan.summary()["critical_path_units"] <= 6
    assert run_locally(plan)[total.key] == -sum(range(1024))


def test_subtrees_that_fill_a_unit_each_run_side_by_side():
    """A 1,024-leaf tree over 8 slots: eight 255-task subtrees and the top. A subtree taken into
    the unit of the add joining it with another would wait for the other (a round later) and
    fill the unit the adds above it could have joined (a round more)."""
    leaves = [dask.delayed(operator.neg)(i) for i in range(1024)]
    while len(leaves) > 1:
        leaves = [dask.delayed(operator.add)(leaves[i], leaves[i + 1]) for i in range(0, len(leaves), 2)]
    total = leaves[0]
    plan = build_plan(total.__dask_graph__(), [total.key], settings=FuseSettings(parallelism=8))
    assert plan.summary()["critical_path_units"] == 2, plan.summary()
    assert sorted(len(u.keys) for u in plan.units.values()) == [7] + [255] * 8
    assert run_locally(plan)[total.key] == -sum(range(1024))


def test_feeders_of_equal_size_join_their_consumer_in_execution_order():
    """Which of equal feeders a tree's unit takes in follows dask.order, never set order (so the
    same graph gives the same plan whatever the hash seed)."""
    graph = {f"leaf-{i}": (operator.neg, i) for i in range(8)}
    graph["total"] = (sum, [f"leaf-{i}" for i in range(8)])
    plan = build_plan(graph, ["total"], settings=FuseSettings(parallelism=4))  # 3 tasks a unit
    (unit,) = [u for u in plan.units.values() if "total" in u.keys]
    first = sorted(graph, key=dask.order.order(as_task_graph(graph)).__getitem__)[:2]
    assert sorted(unit.keys) == sorted([*first, "total"])
    assert run_locally(plan)["total"] == -sum(range(8))


def test_cheap_getitem_runs_beside_its_producer():
    pair = dask.delayed(lambda: (1, 2), nout=2)()
    first, second = pair
    heavy = [dask.delayed(operator.add)(first, i) for i in range(3)] + [dask.delayed(operator.mul)(second, 5)]
    out = dask.delayed(sum)(heavy)
    plan = build_plan(out.__dask_graph__(), [out.key], settings=FuseSettings(parallelism=100))
    getitems = [k for k, node in dict(out.__dask_graph__()).items()
                if getattr(node, "func", None) is operator.getitem]
    assert getitems and all(plan.producer[k] == plan.producer[pair.key] for k in getitems)
    assert run_locally(plan)[out.key] == sum(1 + i for i in range(3)) + 2 * 5


def test_large_chunks_pull_their_consumers_and_never_cross_the_store():
    x = da.random.random((4000, 4000), chunks=(1000, 1000))  # 8 MB chunks, each read twice
    plan, sizes, seen = collection_plan((x + x.T).mean(axis=0).sum())
    assert sizes and all(v == 8_000_000 for v in sizes.values() if v > 1000)
    large = {k for k, v in sizes.items() if v >= 2 * 1024 * 1024}
    crossing = [k for u in plan.units.values() for k in u.inputs if plan.source(k) in large]
    assert not crossing, f"{len(crossing)} large chunks read across units"
    assert plan.summary()["remade"] == 0, "chunks kept beside their readers are made once"
    unfused, _, _ = collection_plan((x + x.T).mean(axis=0).sum(), FuseSettings(fuse=False))
    assert sum(plan.source(k) in large for u in unfused.units.values() for k in u.inputs) >= len(large)
    check_well_formed(plan)
    (key,) = flatten(seen["keys"])
    assert run_locally(plan)[plan.source(key)] == pytest.approx(dask.get(seen["graph"], key))


def test_pulling_stops_at_the_unit_byte_limit():
    x = da.random.random((8000, 8000), chunks=(2000, 2000))  # 32 MB chunks, each read 8 times
    settings = FuseSettings(parallelism=64, max_bytes=64 * 1024 * 1024)
    plan, sizes, _ = collection_plan((x @ x).sum(), settings)
    for unit in plan.units.values():
        assert sum(sizes.get(k, 0) for k in unit.keys) <= settings.max_bytes
    assert len(plan.units) > 16
    check_well_formed(plan)


def test_a_matrix_products_partial_sums_do_not_gather_its_blocks_into_one_unit():
    """(x @ x).sum() on 8k^2 in 2k^2 blocks (32 MB each), 512 MB actions: a partial sum may not
    take in the products feeding it when the blocks they read pass the unit byte limit (a unit
    read 17 blocks, 549 MiB, and was refused)."""
    x = da.random.random((8_000, 8_000), chunks=(2_000, 2_000))
    settings = FuseSettings(parallelism=8, max_bytes=128 * 2**20)
    plan, sizes, _ = collection_plan((x @ x).sum(), settings)
    check_well_formed(plan)
    block = 2_000 * 2_000 * 8
    for unit in plan.units.values():  # each product reads 2 blocks; a partial sum 4 products
        assert sum(sizes.get(plan.source(k), block) for k in unit.inputs) <= 4 * block, unit.keys


def test_random_graphs_give_acyclic_plans_that_compute_the_same():
    rng = random.Random(11)
    for trial in range(40):
        n = rng.randint(1, 120)
        graph, sizes = {}, {}
        for i in range(n):
            deps = rng.sample(range(i), k=min(i, rng.choice([0, 1, 1, 2, 3])))
            if deps and rng.random() < 0.2:
                graph[f"a{i}"] = f"t{deps[0]}"  # aliases, read inside and across units
            graph[f"t{i}"] = (sum, [f"t{d}" if rng.random() < 0.7 or f"a{d}" not in graph else f"a{d}"
                                    for d in deps] + [i])
            if not deps and rng.random() < 0.5:
                sizes[f"t{i}"] = rng.choice([10, 4 << 20, 40 << 20])
        graph["lit"] = 5
        wanted = [f"t{n - 1}", "lit", *(f"t{i}" for i in rng.sample(range(n), k=min(n, 3)))]
        settings = FuseSettings(parallelism=rng.choice([1, 4, 64]), max_bytes=64 << 20)
        plan = build_plan(graph, wanted, sizes, settings)
        check_well_formed(plan)
        got = run_locally(plan)
        want = dict(zip(wanted, dask.get(graph, wanted)))
        assert {k: got[plan.source(k)] for k in wanted} == want, f"trial {trial}"


def test_summary_counts():
    b = db.from_sequence(range(100), npartitions=10).map(lambda v: v + 1).sum()
    plan = build_plan(b.__dask_graph__(), b.__dask_keys__())
    summary = plan.summary()
    assert summary["tasks"] == sum(len(u.keys) for u in plan.units.values())
    assert summary["units"] == len(plan.units) and 1 <= summary["critical_path_units"] <= summary["units"]


def test_culls_to_requested_keys():
    a = dask.delayed(lambda: 1)()
    b = dask.delayed(lambda: 2)()
    graph = {**dict(a.__dask_graph__()), **dict(b.__dask_graph__())}
    plan = build_plan(graph, [a.key])
    assert [k for u in plan.units.values() for k in u.keys] == [a.key]


def test_disk_shuffle_is_refused_with_advice():
    bag = db.from_sequence(range(10), npartitions=2).groupby(lambda v: v % 2, shuffle="disk")
    with pytest.raises(LocalDiskGraphError, match="shuffle='tasks'"):
        build_plan(bag.__dask_graph__(), bag.__dask_keys__())


def test_missing_key_is_a_clear_error():
    with pytest.raises(KeyError, match="not in the graph"):
        build_plan({"a": 1}, ["b"])


def test_depth_first_order_finishes_each_branch_and_respects_dependencies():
    from dask_whisk.plan import depth_first_order

    tree = {"l0": (operator.add, 0, 1), "l1": (operator.add, 1, 1), "l2": (operator.add, 2, 1),
            "l3": (operator.add, 3, 1), "m0": (operator.add, "l0", "l1"),
            "m1": (operator.add, "l2", "l3"), "root": (operator.add, "m0", "m1")}
    priority = depth_first_order(as_task_graph(tree), ["root"])
    assert sorted(priority, key=priority.get) == ["l0", "l1", "m0", "l2", "l3", "m1", "root"]
    rng = random.Random(3)  # a random DAG: every input before its task, every key once
    dag = {f"k{i}": (sum, [f"k{j}" for j in rng.sample(range(i), min(i, 3))]) for i in range(300)}
    graph = as_task_graph(dag)
    priority = depth_first_order(graph, ["k299", "k10"])
    assert sorted(priority.values()) == list(range(300))
    assert all(priority[d] < priority[k] for k, node in graph.items() for d in node.dependencies)


def test_a_graph_over_the_order_limit_plans_the_same_work(monkeypatch):
    """Above ORDER_MAX_TASKS the plan is ordered depth-first: every task is still in exactly
    one unit, and each unit runs its tasks after the inputs it computes itself."""
    import dask_whisk.plan as plan

    x = da.ones((40, 40), chunks=5)
    target = (x @ x.T).sum()
    graph, keys = dict(target.__dask_graph__()), target.__dask_keys__()
    monkeypatch.setattr(plan, "ORDER_MAX_TASKS", 10)
    big = build_plan(graph, keys)
    monkeypatch.setattr(plan, "ORDER_MAX_TASKS", 10**9)
    small = build_plan(graph, keys)
    assert sorted(map(str, (k for u in big.units.values() for k in u.keys))) == \
        sorted(map(str, (k for u in small.units.values() for k in u.keys)))
    for unit in big.units.values():
        done = set()
        for key, node in unit.tasks.items():
            assert not (set(node.dependencies) & set(unit.tasks)) - done, (unit.name, key)
            done.add(key)


def generator_inputs(plan):
    """Inputs of units that are generated chunks (random numbers, ones...) another unit made."""
    return [k for u in plan.units.values() for k in u.inputs
            if plan.source(k) in plan.producer and is_generator(
                plan.units[plan.producer[plan.source(k)]].tasks[plan.source(k)])]


def test_generated_chunks_read_across_units_are_made_by_their_readers():
    """(x @ x).sum() of random 32 MB blocks on 512 MB actions: each block is read by seven
    products, which no unit can hold together; so each unit makes the blocks it reads, just
    before the first task reading it, and units group by output block (no large value moves)."""
    x = da.random.random((8_000, 8_000), chunks=(2_000, 2_000))
    settings = FuseSettings(parallelism=8, max_bytes=128 * 2**20)
    plan, sizes, _ = collection_plan((x @ x).sum(), settings)
    check_well_formed(plan)
    assert plan.summary()["remade"] >= 16 * 6 and not generator_inputs(plan)
    assert len(plan.units) <= 16, "units group by output block"
    large_inputs = [k for u in plan.units.values() for k in u.inputs if sizes.get(plan.source(k), 0) > 1000]
    assert not large_inputs
    for unit in plan.units.values():  # made just before its first reader: no unit holds them all
        order = list(unit.tasks)
        for made in (order.index(k) for k in order if k in plan.remade):
            first = next(i for i, k in enumerate(order) if order[made] in unit.tasks[k].dependencies)
            assert made < first and all(not unit.tasks[k].dependencies for k in order[made:first])


def test_a_plan_whose_readers_make_its_chunks_computes_the_same():
    x = da.random.RandomState(3).random((3_000, 3_000), chunks=1_000)  # 8 MB blocks
    plan, _, seen = collection_plan((x @ x).sum(), FuseSettings(parallelism=4, max_bytes=64 * 2**20))
    assert plan.summary()["remade"] > 0 and not generator_inputs(plan)
    (key,) = flatten(seen["keys"])
    assert run_locally(plan)[plan.source(key)] == pytest.approx(dask.get(seen["graph"], key))


def test_chunks_are_not_made_again_where_units_would_then_hold_more():
    """12 MB blocks, 64 MiB actions: grouped by output block, units would hold several blocks at
    once, more than the action's memory and the plan that moves them: that plan stands."""
    x = da.random.random((4_800, 4_800), chunks=(1_200, 1_200))
    plan, _, _ = collection_plan((x @ x).sum(), FuseSettings(parallelism=8, max_bytes=16 * 2**20))
    assert plan.summary()["remade"] == 0 and generator_inputs(plan)
    check_well_formed(plan)


def test_peak_bytes_counts_what_is_held_at_once():
    """Inputs all along; a value from its task to its last reader; outputs to the end."""
    nodes = {"a": Task("a", abs, TaskRef("in")), "b": Task("b", abs, TaskRef("a")),
             "c": Task("c", abs, TaskRef("b")), "d": Task("d", operator.add, TaskRef("c"), TaskRef("a"))}
    guess = {"in": 1, "a": 10, "b": 100, "c": 1000, "d": 10_000}
    assert peak_bytes(nodes, ["in"], ["d"], guess) == 1 + 10 + 1000 + 10_000  # b dropped once c is made
    assert peak_bytes(nodes, ["in"], ["b", "d"], guess) == 1 + 10 + 100 + 1000 + 10_000
