"""``dask-whisk doctor``: check an OpenWhisk (and store) configuration end to end.

Each check prints one line (ok / warn / FAIL) with the numbers behind it and, when it fails, what
to do. The checks follow the path of a job: the API answers, the key is accepted, the namespace
limits allow a job to fan out (to ``whisk.max-in-flight`` when it is set; if they are lower, the
Helm chart values to raise and to what), the deployment offers this client's Python runtime
kind, the worker action exists and matches this client, an activation round-trips (cold and warm
latency), and the store is writable from inside an activation.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask_whisk

from .artifact import DeployError, host_python
from .capacity import invocations_per_minute
from .config import ClientSettings, add_whisk_arguments, setting, whisk_config_from_args
from .deploy import (DEFAULT_ACTION, annotation, blackbox_advice, check_worker_action,
                     deploy_command, deployment_info, offered_kinds, runtime_kind)

#: OpenWhisk's stock per-namespace limits, which throttle any sizeable job
STOCK_PER_MINUTE = 60
STOCK_CONCURRENT = 30
#: the checks in the order they run; after a failure the remaining ones are reported as skipped
CHECKS = ("API reachable", "credentials", "namespace limits", "runtimes", "worker action",
          "round trip", "store")

_RAISE_LIMITS = (
    "raise them for this namespace: `wskadmin limits set <namespace> --invocationsPerMinute N "
    "--concurrentInvocations N`, or deployment-wide with helm values "
    "`whisk.limits.actionsInvokesPerminute` / `whisk.limits.actionsInvokesConcurrent`, or ansible "
    "`limit_invocations_per_minute` / `limit_invocations_concurrent` (research deployments use "
    "10,000+; each concurrent activation holds one container of the action's memory)"
)

#: the chart's limit values -> the ``wskadmin limits set`` option of the same limit
_WSKADMIN = {"actionsInvokesConcurrent": "concurrentInvocations",
             "actionsInvokesPerminute": "invocationsPerMinute"}


@dataclass
class Report:
    """The outcome of each check, in order; ``failed`` decides the exit code."""

    out: Callable[[str], None] = print
    lines: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, status: str, check: str, detail: str) -> None:
        """Record and print one check's outcome (status: ok, warn, FAIL, skip)."""
        self.lines.append((status, check, detail))
        self.out(f"  {status:<5} {check}: {detail}")

    @property
    def failed(self) -> int:
        """How many checks failed (skipped checks count: they could not be verified)."""
        return sum(status in ("FAIL", "skip") for status, _, _ in self.lines)

    def summary(self) -> str:
        """One closing line with the counts."""
        counts = {s: sum(1 for status, _, _ in self.lines if status == s)
                  for s in ("ok", "warn", "FAIL", "skip")}
        return (f"{counts['ok']} ok, {counts['warn']} warning(s), {counts['FAIL']} failed, "
                f"{counts['skip']} not checked")


def limits_advice(limits: dict[str, Any], units: int, max_in_flight: int | None = None,
                  memory_mb: int | None = None) -> tuple[str, str]:
    """(status, text) for the namespace's invocation limits, judged for a job of ``units`` units
    and, when set, ``whisk.max-in-flight`` activations at once (of ``memory_mb`` each)."""
    per_minute = limits.get("invocationsPerMinute")
    concurrent = limits.get("concurrentInvocations")
    memory = (limits.get("minActionMemory"), limits.get("maxActionMemory"))
    timeout = (limits.get("minActionTimeout"), limits.get("maxActionTimeout"))
    text = (f"{per_minute} invocations/min, {concurrent} concurrent, action memory "
            f"{memory[0]}..{memory[1]} MB, timeout {timeout[0]}..{timeout[1]} ms")
    problems = []
    if isinstance(per_minute, int) and units > per_minute:
        problems.append(f"a job of {units:,} work units needs at least {units / per_minute:.0f} "
                        f"minutes at {per_minute}/min")
    if isinstance(concurrent, int) and concurrent < min(units, 10 * STOCK_CONCURRENT):
        problems.append(f"at most {concurrent} units run at once")
    raises = _raises_for(max_in_flight, per_minute, concurrent, problems)
    if raises:
        chart = " and ".join(f"`whisk.limits.{key}` to {value}" for key, value in raises.items())
        wskadmin = " ".join(f"--{_WSKADMIN[key]} {value}" for key, value in raises.items())
        return "warn", (f"{text}; {'; '.join(problems)}; raise the helm chart's {chart} (for one "
                        f"namespace: `wskadmin limits set <namespace> {wskadmin}`); `dask-whisk "
                        f"capacity --workers {max_in_flight} --memory {memory_mb or 'MB'}` sizes "
                        "the invokers to match")
    if problems:
        return "warn", f"{text}; {'; '.join(problems)}; {_RAISE_LIMITS}"
    return "ok", text


def _raises_for(max_in_flight: int | None, per_minute: Any, concurrent: Any,
                problems: list[str]) -> dict[str, int]:
    """The chart limits below what ``max_in_flight`` activations need -> the value each needs,
    with the shortfalls added to ``problems``."""
    if max_in_flight is None:
        return {}
    seconds = float(setting("unit-target-seconds"))
    needed = invocations_per_minute(max_in_flight, seconds)
    raises = {}
    if isinstance(concurrent, int) and concurrent < max_in_flight:
        problems.append(f"whisk.max-in-flight is {max_in_flight:,} but at most {concurrent} run at once")
        raises["actionsInvokesConcurrent"] = max_in_flight
    if isinstance(per_minute, int) and per_minute < needed:
        problems.append(f"{max_in_flight:,} activations of {seconds:g} s (whisk.unit-target-seconds) "
                        f"start up to {needed:,} a minute, above {per_minute}/min")
        raises["actionsInvokesPerminute"] = needed
    return raises


def _describe_failure(record: dict[str, Any]) -> str:
    response = record.get("response") or {}
    result = response.get("result")
    error = result.get("error") if isinstance(result, dict) else result
    return f"status {response.get('status')!r}: {error}"


def runtimes_advice(info: dict[str, Any] | None) -> tuple[str, str]:
    """(status, text) listing the deployment's action kinds, and whether this client's is one."""
    wanted = runtime_kind(host_python())
    kinds = offered_kinds(info) if info is not None else None
    if kinds is None:
        return "warn", (f"the deployment does not list its runtimes (no manifest at GET /); "
                        f"`dask-whisk deploy` will find out whether it offers {wanted}")
    if wanted in kinds:
        return "ok", f"{', '.join(kinds)} (this client needs {wanted})"
    return "warn", (f"{', '.join(kinds)}: no {wanted} for this client's Python, so the worker must "
                    f"be a blackbox image; {blackbox_advice(host_python())}")


async def _ping(client: Any, name: str, params: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """(wall seconds, activation record) of one blocking ping of the worker action."""
    started = time.perf_counter()
    record = await client.run(name, params)
    return time.perf_counter() - started, record


async def _check_round_trip(client: Any, name: str, warm_calls: int, report: Report) -> bool:
    check = "round trip"
    seconds, record = await _ping(client, name, {"ping": True})
    response = record.get("response") or {}
    result = response.get("result") or {}
    if not response.get("success") or not result.get("pong"):
        report.add("FAIL", check, f"the worker action did not answer a ping ({_describe_failure(record)}); "
                   f"see `wsk activation logs {record.get('activationId')}`")
        return False
    python = str(result.get("python", ""))
    if result.get("dask_whisk") != dask_whisk.__version__ or not python.startswith(host_python() + "."):
        report.add("FAIL", check, f"the worker runs dask-whisk {result.get('dask_whisk')} on Python "
                   f"{python}, this client dask-whisk {dask_whisk.__version__} on Python "
                   f"{host_python()}: redeploy with `{deploy_command(name, host_python())}`")
        return False
    init = annotation(record, "initTime")
    first = (f"first call {seconds * 1000:.0f} ms "
             + (f"(cold start, initTime {init} ms)" if init is not None else "(a warm container)"))
    warm = []
    for _ in range(warm_calls):
        seconds, record = await _ping(client, name, {"ping": True})
        if (record.get("response") or {}).get("success"):
            warm.append(seconds)
    if len(warm) < warm_calls:
        report.add("FAIL", check, f"{first}; {warm_calls - len(warm)} of {warm_calls} further pings failed")
        return False
    detail = first
    if warm:
        detail += f", warm {statistics.median(warm) * 1000:.0f} ms (median of {len(warm)})"
    report.add("ok", check, f"{detail}; worker dask-whisk {result.get('dask_whisk')}, Python {python}")
    return True


async def _check_store(client: Any, name: str, kind: str, report: Report) -> None:
    from .store import new_job_id, open_job_store

    check = f"store {kind}"
    try:
        job = await asyncio.to_thread(open_job_store, kind, new_job_id())
    except Exception as exc:  # any failure to open is a configuration problem to report
        report.add("FAIL", check, f"cannot open the store from this machine: {exc}")
        return
    try:
        data = b"dask-whisk doctor"
        await asyncio.to_thread(job.put, "doctor-client", [data])
        if bytes(await asyncio.to_thread(job.get, "doctor-client")) != data:
            report.add("FAIL", check, "an object written from this machine read back different")
            return
        probe = "doctor-activation"
        access = await asyncio.to_thread(job.worker_access, [probe], [probe])
        started = time.perf_counter()
        record = await client.run(name, {"ping": True, "store": access, "probe": probe})
        seconds = time.perf_counter() - started
        result = (record.get("response") or {}).get("result") or {}
        if result.get("store_ok") is True:
            report.add("ok", check, f"writable from this machine and from inside an activation "
                       f"(probe round trip {seconds * 1000:.0f} ms)")
        else:
            report.add("FAIL", check, f"an activation could not write and read the store "
                       f"({_describe_failure(record)}); the store must be reachable from the "
                       "invokers' containers (a 'local' store only works with the local server)")
    except Exception as exc:  # the store's own errors say what failed, without credentials
        report.add("FAIL", check, f"{type(exc).__name__}: {exc}")
    finally:
        await asyncio.to_thread(job.destroy)
        job.close()


async def diagnose(config: Any, *, action: str = DEFAULT_ACTION, store: str | None = None,
                   units: int = 1000, max_in_flight: int | None = None, warm_calls: int = 3,
                   out: Callable[[str], None] = print) -> Report:
    """Run every check against ``config`` (a WhiskConfig) and return the report; the limits are
    judged for a job of ``units`` units and ``max_in_flight`` activations at once."""
    from .openwhisk import (OpenWhiskClient, WhiskAuthError, WhiskConnectionError, WhiskError,
                            WhiskNotFound, WhiskTimeout)

    report = Report(out)
    out(f"dask-whisk doctor: {config.apihost} namespace {config.namespace} "
        f"(dask-whisk {dask_whisk.__version__}, Python {host_python()})")
    async with OpenWhiskClient(config) as client:
        started = time.perf_counter()
        info = None
        try:
            info = await deployment_info(client)  # without credentials
            elapsed = (time.perf_counter() - started) * 1000
            limits = await client.limits()
        except (WhiskConnectionError, WhiskTimeout) as exc:
            report.add("FAIL", "API reachable", str(exc))
            return _skip_rest(report)
        except WhiskAuthError as exc:
            report.add("ok", "API reachable", f"{config.apihost} answered")
            report.add("FAIL", "credentials", f"{exc.message}: check AUTH in ~/.wskprops, "
                       "WHISK_AUTH or 'whisk.auth' (the key is uuid:key, from `wskadmin user get`)")
            return _skip_rest(report)
        except WhiskNotFound:
            limits = None  # a deployment without the limits route; credentials checked below
        report.add("ok", "API reachable", f"{config.apihost} answered in {elapsed:.0f} ms")
        try:
            action_record = await client.get_action(action, code=False)
        except WhiskNotFound:
            action_record = None
        except WhiskAuthError as exc:
            report.add("FAIL", "credentials", exc.message)
            return _skip_rest(report)
        report.add("ok", "credentials", f"accepted for namespace {config.namespace}")
        if limits is None:
            report.add("warn", "namespace limits", "this deployment does not report them "
                       f"(no limits route); stock values are {STOCK_PER_MINUTE}/min and "
                       f"{STOCK_CONCURRENT} concurrent: {_RAISE_LIMITS}")
        else:
            memory = ((action_record or {}).get("limits") or {}).get("memory")
            status, detail = limits_advice(limits, units, max_in_flight, memory)
            report.add(status, "namespace limits", detail)
        status, detail = runtimes_advice(info)
        report.add(status, "runtimes", detail)
        if action_record is None:
            report.add("FAIL", "worker action", f"{action!r} is not deployed: run "
                       f"`{deploy_command(action, host_python())}`")
            return _skip_rest(report)
        try:
            check_worker_action(action_record, action)
        except DeployError as exc:
            report.add("FAIL", "worker action", str(exc))
            return _skip_rest(report)
        kind = (action_record.get("exec") or {}).get("kind")
        action_limits = action_record.get("limits") or {}
        report.add("ok", "worker action", f"{action} version {action_record.get('version')}, kind "
                   f"{kind}, built for dask-whisk {dask_whisk.__version__} on Python {host_python()}, "
                   f"memory {action_limits.get('memory')} MB, timeout {action_limits.get('timeout')} ms")
        try:
            round_trip = await _check_round_trip(client, action, warm_calls, report)
        except WhiskError as exc:
            report.add("FAIL", "round trip", str(exc))
            round_trip = False
        if not round_trip:
            return _skip_rest(report)
        if store is not None:
            await _check_store(client, action, store, report)
    return report


def _skip_rest(report: Report) -> Report:
    """Report every check not yet run as skipped (an earlier one failed); return the report."""
    done = {check for _, check, _ in report.lines}
    for check in CHECKS:
        if check not in done:
            report.add("skip", check, "not checked (an earlier check failed)")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``dask-whisk doctor``."""
    parser.add_argument("--name", default=None,
                        help=f"worker action name (default: dask config 'whisk.action', {DEFAULT_ACTION})")
    parser.add_argument("--store", choices=["local", "swift", "none"], default=None,
                        help="store to probe from inside an activation (default: dask config "
                             "'whisk.store'); 'none' skips the store check")
    parser.add_argument("--units", type=int, default=1000,
                        help="job size (work units) to judge the namespace limits against")
    parser.add_argument("--warm", type=int, default=3, help="warm pings to time (default 3)")
    add_whisk_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Print the report; exit 1 when any check failed or could not run."""
    from .config import WhiskConfigError

    try:
        config = whisk_config_from_args(args)
        max_in_flight = ClientSettings.from_dask_config().max_in_flight
    except WhiskConfigError as exc:
        print(f"  FAIL  configuration: {exc}")
        return 1
    store = setting("store", args.store)
    report = asyncio.run(diagnose(config, action=args.name or setting("action"),
                                  store=None if store == "none" else store,
                                  units=args.units, max_in_flight=max_in_flight,
                                  warm_calls=args.warm))
    print(report.summary())
    sys.stdout.flush()
    return 1 if report.failed else 0


__all__ = ["Report", "diagnose", "limits_advice", "runtimes_advice", "add_arguments", "run"]
