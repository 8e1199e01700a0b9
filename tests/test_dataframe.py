"""dask.dataframe through ``whisk_get``: on the embedded default (the client's own environment as
the workers' image) and on the local server's stock ``python:3.x`` kind with the full worker zip
and a runtime of pandas and pyarrow from the store; each case compared with ``scheduler="sync"``.
Files the jobs read and write live where activations see them (``shared_tmp_path``)."""
from __future__ import annotations

import asyncio

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from _server_fixtures import own_local_store  # noqa: F401 (a fixture)
from dask_whisk import whisk_get
from dask_whisk.cli import main as cli_main
from dask_whisk.config import WhiskConfig
from dask_whisk.deploy import deploy_worker_action
from dask_whisk.openwhisk import OpenWhiskClient
from dask_whisk.plan import LocalDiskGraphError
from dask_whisk.server import ServerSettings, start_server_process


def frames(folder) -> dict[str, dd.DataFrame]:
    """The inputs: two frames from pandas, and CSV and Parquet files written to ``folder``."""
    rng = np.random.default_rng(7)
    people = pd.DataFrame({"id": np.arange(600), "team": [f"t{i % 7}" for i in range(600)],
                           "name": [f"person {i}" for i in range(600)], "score": rng.normal(50, 10, 600)})
    teams = pd.DataFrame({"team": [f"t{i}" for i in range(7)], "city": ["Oslo", "Lima", "Pune", "Graz",
                                                                          "Kobe", "Lyon", "Nome"]})
    for i in range(3):
        people.iloc[i * 200:(i + 1) * 200].to_csv(folder / f"people-{i}.csv", index=False)
    people.to_parquet(folder / "people.parquet")
    return {"people": dd.from_pandas(people, npartitions=4), "teams": dd.from_pandas(teams, npartitions=2),
            "csv": dd.read_csv(str(folder / "people-*.csv")),
            "parquet": dd.read_parquet(str(folder / "people.parquet"))}


def cases(f: dict[str, dd.DataFrame]) -> dict[str, object]:
    """The operations of the issue, each a dask collection."""
    p = f["people"]
    return {
        "elementwise": (p.score * 2 + p.id).sum(),
        "strings": p.name.str.upper().str.replace("PERSON", "P").str.len().sum(),
        "groupby-agg": p.groupby("team").agg({"score": ["sum", "mean"], "id": "count"}),
        "value_counts": p.team.value_counts(),
        "merge": p.merge(f["teams"], on="team").sort_values("id"),
        "set_index": p.set_index("score"),
        "sort_values": p.sort_values("score"),
        "describe": p.describe(),
        "read_csv": f["csv"].groupby("team").score.sum(),
        "read_parquet": f["parquet"].score.mean(),
    }


def assert_same(name: str, got: object, want: object) -> None:
    if isinstance(want, pd.DataFrame):
        pd.testing.assert_frame_equal(got, want, obj=name)
    elif isinstance(want, pd.Series):
        pd.testing.assert_series_equal(got, want, obj=name)
    else:
        assert np.isclose(got, want), (name, got, want)


def check_all(folder, **compute) -> None:
    """Every case on whisk equals the same on sync; then ``to_parquet`` written by activations."""
    jobs = cases(frames(folder))
    got = dict(zip(jobs, dask.compute(*jobs.values(), scheduler=whisk_get, **compute), strict=True))
    want = dict(zip(jobs, dask.compute(*jobs.values(), scheduler="sync"), strict=True))
    for name in jobs:
        assert_same(name, got[name], want[name])
    people = frames(folder)["people"]
    people.to_parquet(str(folder / "out-whisk"), compute_kwargs={"scheduler": whisk_get, **compute})
    people.to_parquet(str(folder / "out-sync"), compute_kwargs={"scheduler": "sync"})
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "out-whisk"), pd.read_parquet(folder / "out-sync"))


def test_dataframes_on_the_embedded_default(local_store_root, shared_tmp_path):
    check_all(shared_tmp_path)


def test_a_shuffle_through_the_clients_disk_is_refused_with_the_setting_that_avoids_it(local_store_root):
    unsorted = np.random.default_rng(1).permutation(40)  # sorted data would need no shuffle
    people = dd.from_pandas(pd.DataFrame({"a": range(40), "b": unsorted}), npartitions=4)
    with pytest.raises(LocalDiskGraphError, match=r"dataframe\.shuffle\.method.*tasks"):
        people.set_index("b", shuffle_method="disk").compute(scheduler=whisk_get)


@pytest.fixture(scope="module")
def stock_server_with_dataframe_runtime(own_local_store):
    """A local server running the full worker zip on its stock kind, and a runtime of pandas
    and pyarrow (the client's versions) in the local store."""
    assert cli_main(["runtime", "build", "pandas", "pyarrow", "--name", "dataframe"]) == 0
    with start_server_process(ServerSettings(invocations_per_minute=100_000, concurrent_invocations=100,
                                             user_memory_mb=2048)) as server:
        async def put() -> None:
            async with OpenWhiskClient(WhiskConfig(apihost=server.url, auth=server.auth)) as client:
                await deploy_worker_action(client, "dataframe-worker", log=lambda _: None)
        asyncio.run(put())
        yield server
    assert cli_main(["runtime", "delete", "dataframe"]) == 0


def test_dataframes_on_the_stock_kind_with_a_runtime(own_local_store, shared_tmp_path,
                                                     stock_server_with_dataframe_runtime):
    server = stock_server_with_dataframe_runtime
    with dask.config.set({"whisk.apihost": server.url, "whisk.auth": server.auth,
                          "whisk.action": "dataframe-worker"}):
        check_all(shared_tmp_path, runtime="dataframe")
