"""Many activations against the local server: none lost, each answered once (latency figures:
benchmarks/server_latency.py)."""
from __future__ import annotations

import asyncio
import time

from _server_fixtures import run_raw, server_process  # noqa: F401 (fixtures)

WORK = "import time\ndef main(args):\n    time.sleep(0.01)\n    return {'i': args['i']}\n"
N_BLOCKING = 400
N_NONBLOCKING = 400


def test_hundreds_in_flight_none_lost(server_process):
    async def scenario(ow):
        await ow.put_action("stress", WORK, limits={"memory": 128})

        async def blocking(i: int) -> dict:
            status, result, _ = await ow.invoke("stress", {"i": i}, result=True)
            if status == 202:  # the blocking wait ended first: fetch the record later
                return {"poll": result["activationId"], "i": i}
            assert status == 200, result
            return result

        async def nonblocking(i: int) -> dict:
            status, accepted, _ = await ow.request("POST", "actions/stress", {"i": i})
            assert status == 202, accepted
            return {"poll": accepted["activationId"], "i": i}

        started = time.monotonic()
        answers = await asyncio.gather(*(blocking(i) for i in range(N_BLOCKING)),
                                       *(nonblocking(N_BLOCKING + i) for i in range(N_NONBLOCKING)))
        seen = []
        for answer in answers:
            if "poll" in answer:
                status = 404
                while status == 404:
                    status, result, _ = await ow.request("GET", f"activations/{answer['poll']}/result")
                    if status == 404:
                        await asyncio.sleep(0.05)
                assert result["status"] == "success", result
                seen.append(result["result"]["i"])
            else:
                seen.append(answer["i"])
        assert sorted(seen) == list(range(N_BLOCKING + N_NONBLOCKING))
        elapsed = time.monotonic() - started
        status, records, _ = await ow.request("GET", "activations",
                                              params={"name": "stress", "limit": "200"})
        assert status == 200 and len(records) == 200
        print(f"{N_BLOCKING + N_NONBLOCKING} activations in {elapsed:.2f}s")

    run_raw(server_process, scenario)


def test_warm_blocking_invokes_reuse_one_container(server_process):
    """Sequential blocking invokes: each answered with its own result by the one warm container.

    How fast they are is a figure for benchmarks/server_latency.py, not an assertion here.
    """
    code = "import os\ndef main(args):\n    return {'i': args['i'], 'pid': os.getpid()}\n"

    async def scenario(ow):
        await ow.put_action("warm-seq", code)
        records = []
        for i in range(200):
            status, record, headers = await ow.invoke("warm-seq", {"i": i})
            assert status == 200, record
            assert headers["x-openwhisk-activation-id"] == record["activationId"]
            records.append(record)
        assert [r["response"]["result"]["i"] for r in records] == list(range(200))
        assert len({r["activationId"] for r in records}) == 200
        cold = ["initTime" in {a["key"] for a in r["annotations"]} for r in records]
        assert cold == [True] + [False] * 199  # only the first started a container
        assert len({r["response"]["result"]["pid"] for r in records}) == 1  # and it served all

    run_raw(server_process, scenario)
