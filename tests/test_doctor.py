"""``dask-whisk doctor`` against the real local server and a real Swift (no mocks)."""
from __future__ import annotations

import asyncio
import base64

import dask
import pytest

from _server_fixtures import THIS_PYTHON
from dask_whisk import artifact, deploy
from dask_whisk.cli import main as cli_main
from dask_whisk.config import WhiskConfig
from dask_whisk.doctor import diagnose, limits_advice, runtimes_advice
from dask_whisk.openwhisk import OpenWhiskClient
from dask_whisk.server import ServerSettings, start_server_process

ACTION = "doctor-worker"


def arun(coro):
    return asyncio.run(coro)


def config_for(handle, auth: str | None = None) -> WhiskConfig:
    return WhiskConfig(apihost=handle.url, auth=auth or handle.auth)


async def _deploy(handle, name: str = ACTION) -> None:
    async with OpenWhiskClient(config_for(handle)) as client:
        await deploy.ensure_worker_action(client, name, local=True)


@pytest.fixture(scope="module")
def roomy_server():
    """A research-style deployment (limits raised), with the worker deployed."""
    with start_server_process(ServerSettings(
            invocations_per_minute=100_000, concurrent_invocations=1_000, images=THIS_PYTHON)) as handle:
        arun(_deploy(handle))
        yield handle


@pytest.fixture(scope="module")
def stock_server():
    """OpenWhisk's stock limits: 60 invocations a minute, 30 concurrent."""
    with start_server_process(ServerSettings(images=THIS_PYTHON)) as handle:
        arun(_deploy(handle))
        yield handle


def run_doctor(config, **options):
    lines: list[str] = []
    report = arun(diagnose(config, out=lines.append, **options))
    return report, "\n".join(lines)


def statuses(report) -> dict[str, str]:
    return {check: status for status, check, _ in report.lines}


def test_a_healthy_configuration_passes_every_check(roomy_server, local_store_root):
    report, text = run_doctor(config_for(roomy_server), action=ACTION, store="local")
    assert statuses(report) == {"API reachable": "ok", "credentials": "ok", "namespace limits": "ok",
                                "runtimes": "ok", "worker action": "ok", "round trip": "ok",
                                "store local": "ok"}, text
    assert report.failed == 0
    assert "100000 invocations/min, 1000 concurrent" in text
    kind = f"python:{artifact.host_python()}"
    assert f"runtimes: {kind} (this client needs {kind})" in text  # the local server's kinds
    assert "warm" in text and "median of 3" in text
    assert "writable from this machine and from inside an activation" in text
    assert not list(local_store_root.iterdir()), "the probe's job namespace is removed"


def test_swift_is_checked_from_inside_an_activation(roomy_server, swift_env):
    swift = {"whisk.swift.auth-url": swift_env.auth_url, "whisk.swift.user": swift_env.user,
             "whisk.swift.key": swift_env.key}
    with dask.config.set(swift):
        report, text = run_doctor(config_for(roomy_server), action=ACTION, store="swift", warm_calls=1)
    assert statuses(report)["store swift"] == "ok", text
    assert swift_env.key not in text


def test_an_unreachable_swift_fails_the_store_check(roomy_server, swift_env):
    swift = {"whisk.swift.auth-url": "http://127.0.0.1:9/auth/v1.0", "whisk.swift.user": swift_env.user,
             "whisk.swift.key": swift_env.key, "whisk.swift.retries": 0}
    with dask.config.set(swift):
        report, text = run_doctor(config_for(roomy_server), action=ACTION, store="swift", warm_calls=1)
    assert statuses(report)["store swift"] == "FAIL", text
    assert swift_env.key not in text


def test_stock_limits_are_a_warning_with_numbers_and_the_way_to_raise_them(stock_server):
    report, text = run_doctor(config_for(stock_server), action=ACTION, store=None, units=1000,
                              warm_calls=1)
    assert statuses(report)["namespace limits"] == "warn"
    assert report.failed == 0
    assert "60 invocations/min, 30 concurrent" in text
    assert "needs at least 17 minutes at 60/min" in text and "at most 30 units run at once" in text
    assert "wskadmin limits set <namespace> --invocationsPerMinute N --concurrentInvocations N" in text
    assert "actionsInvokesPerminute" in text and "limit_invocations_per_minute" in text


def test_limits_below_max_in_flight_name_the_chart_values_to_raise_and_to_what(capsys):
    """A deployment started with 5 concurrent and 600 a minute, a client configured for 200 at
    once: 200 activations of 0.5 s (whisk.unit-target-seconds) start 24,000 a minute."""
    with start_server_process(ServerSettings(concurrent_invocations=5, invocations_per_minute=600,
                                             images=THIS_PYTHON)) as low:
        arun(_deploy(low))
        with dask.config.set({"whisk.max-in-flight": 200}):
            code = cli_main(["doctor", "--apihost", low.url, "--auth", low.auth, "--name", ACTION,
                             "--store", "none", "--warm", "0"])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 0, out
    assert "warn namespace limits: 600 invocations/min, 5 concurrent" in out
    assert "whisk.max-in-flight is 200 but at most 5 run at once" in out
    assert "raise the helm chart's `whisk.limits.actionsInvokesConcurrent` to 200 and " \
           "`whisk.limits.actionsInvokesPerminute` to 24000" in out
    assert "`wskadmin limits set <namespace> --concurrentInvocations 200 --invocationsPerMinute 24000`" in out
    assert "`dask-whisk capacity --workers 200 --memory 512` sizes the invokers" in out


def test_limits_advice_raises_only_the_limit_that_is_short():
    roomy = {"invocationsPerMinute": 100_000, "concurrentInvocations": 300}
    assert limits_advice(roomy, units=20, max_in_flight=300)[0] == "ok"
    status, text = limits_advice({**roomy, "invocationsPerMinute": 6_000}, units=20, max_in_flight=300)
    assert status == "warn" and "`whisk.limits.actionsInvokesPerminute` to 36000" in text
    assert "actionsInvokesConcurrent" not in text and "--memory MB" in text


def test_limits_advice_is_quiet_for_a_job_the_limits_allow():
    status, _ = limits_advice({"invocationsPerMinute": 60, "concurrentInvocations": 30}, units=20)
    assert status == "ok"


def test_runtimes_advice_names_the_kinds_and_the_blackbox_way_when_ours_is_missing():
    kind = f"python:{artifact.host_python()}"
    manifest = {"runtimes": {"python": [{"kind": "python:3.1"}, {"kind": kind}],
                             "nodejs": [{"kind": "nodejs:20"}]}}
    assert runtimes_advice(manifest) == ("ok", f"nodejs:20, python:3.1, {kind} (this client needs {kind})")
    status, text = runtimes_advice({"runtimes": {"python": [{"kind": "python:3.1"}]}})
    assert status == "warn" and text.startswith(f"python:3.1: no {kind} for this client's Python")
    assert "worker_action/Dockerfile" in text and "dask-whisk deploy --image" in text
    status, text = runtimes_advice(None)
    assert status == "warn" and "does not list its runtimes" in text


def test_a_wrong_key_fails_the_credentials_check_without_showing_it(stock_server):
    wrong = stock_server.auth.split(":")[0] + ":" + "x" * 64
    report, text = run_doctor(config_for(stock_server, wrong), action=ACTION)
    assert statuses(report)["API reachable"] == "ok"
    assert statuses(report)["credentials"] == "FAIL"
    assert statuses(report)["round trip"] == "skip" and report.failed
    assert "x" * 64 not in text and stock_server.auth.split(":")[1] not in text


def test_a_missing_action_fails_with_the_deploy_command(stock_server):
    report, text = run_doctor(config_for(stock_server), action="never-deployed")
    assert statuses(report)["worker action"] == "FAIL"
    assert "`dask-whisk deploy --name never-deployed --python" in text


def test_a_mismatched_action_fails(stock_server):
    async def put_old():
        small = base64.b64encode(artifact.build_action_zip(with_dependencies=False)).decode()
        async with OpenWhiskClient(config_for(stock_server)) as client:
            await client.put_action("old-doctor", code=small, kind=f"python:{artifact.host_python()}",
                                    binary=True, annotations=[
                                        {"key": "dask-whisk-version", "value": "0.0.1"},
                                        {"key": "dask-whisk-python", "value": artifact.host_python()}])

    arun(put_old())
    report, text = run_doctor(config_for(stock_server), action="old-doctor")
    assert statuses(report)["worker action"] == "FAIL"
    assert "built for dask-whisk 0.0.1" in text


def test_an_action_that_cannot_answer_fails_the_round_trip(stock_server):
    async def put_broken():
        async with OpenWhiskClient(config_for(stock_server)) as client:
            await client.put_action("broken-doctor", code="def main(args):\n    raise RuntimeError('boom')\n",
                                    kind=f"python:{artifact.host_python()}", annotations=[
                                        {"key": "dask-whisk-version", "value": deploy.dask_whisk.__version__},
                                        {"key": "dask-whisk-python", "value": artifact.host_python()}])

    arun(put_broken())
    report, text = run_doctor(config_for(stock_server), action="broken-doctor")
    assert statuses(report)["round trip"] == "FAIL"
    assert "did not answer a ping" in text and "boom" in text


def test_the_command_exits_non_zero_when_a_check_fails(capsys):
    code = cli_main(["doctor", "--apihost", "http://127.0.0.1:9", "--auth", ServerSettings().auth])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL  API reachable: Cannot connect to OpenWhisk at http://127.0.0.1:9" in out
    assert "1 failed, 6 not checked" in out


def test_the_command_exits_zero_on_a_healthy_deployment(roomy_server, capsys, local_store_root):
    code = cli_main(["doctor", "--apihost", roomy_server.url, "--auth", roomy_server.auth,
                     "--name", ACTION, "--store", "local", "--warm", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "7 ok, 0 warning(s), 0 failed, 0 not checked" in out
