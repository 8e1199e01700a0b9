"""``dask-whisk capacity``: size an OpenWhisk deployment for N workers running at once.

OpenWhisk on OpenShift or Kubernetes is installed with its Helm chart (apache/openwhisk-deploy-kube,
``helm/openwhisk``), whose defaults fit a demo: 30 activations in flight per namespace, 60 a
minute, one invoker with 2 GB for containers. The planner turns a target (workers of a given
memory, activations of a given length) into the chart values that allow it, the invoker nodes
that hold it, the containers the first wave starts cold, and what a job costs at the prices the
job report uses (``whisk.cost.*``). ``--values FILE`` writes the values as an overlay for
``helm install -f``, each with the reason for its value; ``deploy/openshift/README.md`` is the
step-by-step guide.

The model of a deployment (from the chart's templates): with the KubernetesContainerFactory the
invokers are a StatefulSet kept one to a node labelled ``openwhisk-role=invoker``, and the action
pods they create run on those nodes, each requesting exactly its action's memory (no CPU request
unless the invoker is configured for it). An invoker starts containers until their memory
reaches its ``whisk.containerPool.userMemory``; a namespace may have
``whisk.limits.actionsInvokesConcurrent`` activations queued or running and start
``whisk.limits.actionsInvokesPerminute`` in each wall-clock minute.
"""
from __future__ import annotations

import argparse
import json
import math
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .config import _nested, setting
from .diagnostics import JobReport, new_report

#: memory of a node an invoker node cannot give to action pods (MB): the kubelet's and the
#: system's reservations, the node's own pods (DNS, SDN, monitoring) and the invoker pod itself
#: (its JVM heap is 512 MB in the chart)
NODE_RESERVED_MB = 4096
#: pods of a node that are not action pods: the platform's per-node pods and the invoker
NODE_SYSTEM_PODS = 20
#: MB of memory per vCPU on AWS Lambda, whose prices ``whisk.cost.*`` default to: the CPU share a
#: worker of that memory is priced for
LAMBDA_MB_PER_CORE = 1769
#: the largest action memory the overlay allows (MB), for units of larger chunks
ARRAY_MEMORY_MAX_MB = 4096
#: the longest action time limit the overlay allows at least (minutes): Lambda's 15
TIME_MAX_MINUTES = 15
#: OpenWhisk's smallest action memory (MB), the chart's ``whisk.limits.actions.memory.min``
MIN_ACTION_MEMORY_MB = 128
#: the kubelet's default pod limit per node on each platform
MAX_PODS = {"openshift": 250, "kubernetes": 110}
#: the invoker's log store that leaves action logs to the platform (read with `oc logs`)
LOG_STORE = "org.apache.openwhisk.core.containerpool.logging.LogDriverLogStoreProvider"
#: what the planner writes for keys it must not choose: the chart refuses identical guest and
#: system keys, so an install that forgot the private values file stops at its database init
KEY_PLACEHOLDER = "set-in-private.yaml"


@dataclass(frozen=True)
class Node:
    """An invoker node's size: memory (GB), cores, and the most pods its kubelet runs."""

    memory_gb: float
    cores: float
    max_pods: int


@dataclass(frozen=True)
class Plan:
    """A deployment sized for ``workers`` activations of ``memory_mb`` running at once."""

    workers: int
    memory_mb: int
    seconds: float
    units: int
    node: Node
    worker_cores: float
    platform: str
    fits: dict[str, int]
    invokers: int
    pool_mb: int
    per_minute: int


def lambda_cores(memory_mb: int) -> float:
    """The vCPU share a Lambda function of ``memory_mb`` gets (one at 1,769 MB)."""
    return memory_mb / LAMBDA_MB_PER_CORE


def node_fits(memory_mb: int, worker_cores: float, node: Node) -> dict[str, int]:
    """How many workers one invoker node holds by its memory, its cores and its pod limit."""
    return {
        "memory": max(0, math.floor((node.memory_gb * 1024 - NODE_RESERVED_MB) / memory_mb)),
        "cores": math.floor(node.cores / worker_cores + 1e-9),
        "pods": max(0, node.max_pods - NODE_SYSTEM_PODS),
    }


def invoker_nodes(workers: int, per_node: int) -> int:
    """Invoker nodes (one invoker each) for ``workers`` at ``per_node`` a node."""
    return math.ceil(workers / per_node)


def pool_mb(workers: int, invokers: int, memory_mb: int) -> int:
    """``whisk.containerPool.userMemory`` (MB) of each invoker: its share of the workers."""
    return math.ceil(workers / invokers) * memory_mb


def invocations_per_minute(workers: int, seconds: float) -> int:
    """Activations ``workers`` start in one wall-clock minute, each starting one every ``seconds``."""
    return workers * math.ceil(60 / seconds)


def memory_max_mb(memory_mb: int, pool: int) -> int:
    """The overlay's action memory ceiling: room for larger chunks, within one invoker's pool."""
    return max(memory_mb, min(ARRAY_MEMORY_MAX_MB, pool))


def time_max_minutes(seconds: float) -> int:
    """The overlay's action time ceiling: Lambda's 15 minutes, or twice a longer activation."""
    return max(TIME_MAX_MINUTES, math.ceil(2 * seconds / 60))


def waves(units: int, workers: int) -> int:
    """Rounds of activations ``units`` take on ``workers`` at once."""
    return math.ceil(units / workers)


def priced_activation(seconds: float, memory_mb: int, wall_s: float) -> JobReport:
    """A job report holding one activation of ``seconds`` at ``memory_mb`` in a job of ``wall_s``,
    priced at ``whisk.cost.*``: a planned job costs this times its activations, so the planner and
    the report price alike."""
    report = new_report(memory_mb=memory_mb, wall_s=wall_s)
    start_ms = report.started_at * 1000
    record = {"activationId": "planned", "start": start_ms, "end": start_ms + seconds * 1000,
              "duration": seconds * 1000,
              "annotations": [{"key": "limits", "value": {"memory": memory_mb}}]}
    report.add_attempt(record, submitted=report.started_at, units=1, kind="planned", attempt=1,
                       backup=False, outcome="success")
    return report


def plan(workers: int, memory_mb: int, *, seconds: float, units: int, node: Node,
         worker_cores: float, platform: str) -> Plan:
    """The deployment for ``workers`` of ``memory_mb``; ValueError when a node holds none."""
    fits = node_fits(memory_mb, worker_cores, node)
    per_node = min(fits.values())
    if per_node < 1:
        short = ", ".join(name for name, count in fits.items() if count < 1)
        raise ValueError(f"an invoker node of {node.memory_gb:g} GB, {node.cores:g} cores and "
                         f"{node.max_pods} pods cannot hold one worker of {memory_mb} MB and "
                         f"{worker_cores:.2f} cores (too little: {short}; {NODE_RESERVED_MB} MB and "
                         f"{NODE_SYSTEM_PODS} pods of a node are the platform's): plan larger nodes")
    invokers = invoker_nodes(workers, per_node)
    return Plan(workers=workers, memory_mb=memory_mb, seconds=seconds, units=units, node=node,
                worker_cores=worker_cores, platform=platform, fits=fits, invokers=invokers,
                pool_mb=pool_mb(workers, invokers, memory_mb),
                per_minute=invocations_per_minute(workers, seconds))


def chart_values(p: Plan) -> dict[str, tuple[Any, str]]:
    """The chart's value paths to set for ``p``, each with why it has its value."""
    per_invoker = p.pool_mb // p.memory_mb
    values: dict[str, tuple[Any, str]] = {
        "whisk.limits.actionsInvokesConcurrent": (p.workers, (
            f"Activations a namespace may have queued or running. dask-whisk fans out to this "
            f"limit (whisk.max-in-flight and whisk.parallelism default to it), so it is the "
            f"{p.workers:,} workers planned; the chart's 30 would run a job 30 units at a time.")),
        "whisk.limits.actionsInvokesPerminute": (p.per_minute, (
            f"Activations a namespace may start in one wall-clock minute (refused calls count "
            f"too). Each worker starts one every {p.seconds:g} s, at most {math.ceil(60 / p.seconds)} "
            f"in a minute: {p.workers:,} x {math.ceil(60 / p.seconds)}. Below it, the client "
            f"waits out 429s instead of computing.")),
        "whisk.limits.actions.memory.max": (f"{memory_max_mb(p.memory_mb, p.pool_mb)}m", (
            f"The largest action memory. Workers of {p.memory_mb} MB are planned; up to "
            f"{ARRAY_MEMORY_MAX_MB} MB (within one invoker's pool) leaves room for units of "
            f"larger chunks (`dask-whisk deploy --memory MB`; fewer workers then fit: plan again).")),
        "whisk.limits.actions.time.max": (f"{time_max_minutes(p.seconds)}m", (
            "The longest action time limit: a heavy unit (a large matmul block) may run minutes; "
            "dask-whisk deploys 5 minutes unless told `--timeout MS`.")),
        "whisk.containerPool.userMemory": (f"{p.pool_mb}m", (
            f"Memory each invoker fills with action containers: its share of the workers, "
            f"{per_invoker} x {p.memory_mb} MB. {p.invokers} invokers x {p.pool_mb} MB hold "
            f"{per_invoker * p.invokers:,} workers; the chart's 2048m holds 4.")),
        "whisk.loadbalancer.blackboxFraction": ("100%", (
            "Invokers that run blackbox actions: the worker image (worker_action/Dockerfile, "
            "`dask-whisk deploy --image`) is one, and by default only a tenth of the invokers "
            "(at least one) would run it.")),
        "controller.options": ("-Dwhisk.loadbalancer.managed-fraction=100%", (
            "Invokers that run managed actions: the worker zip on a python:3.X kind is one, run "
            "by 90% of the invokers by default; with both fractions at 100% every invoker serves "
            "the worker whichever way it is deployed.")),
        "invoker.containerFactory.impl": ("kubernetes", (
            "The KubernetesContainerFactory: invokers create action pods through the Kubernetes "
            "API. OpenShift requires it (its nodes run CRI-O, with no Docker socket to share).")),
        "invoker.containerFactory.kubernetes.replicaCount": (p.invokers, (
            f"Invokers: one per invoker node (the chart keeps two off one node), {p.invokers} "
            f"nodes labelled openwhisk-role=invoker of {p.node.memory_gb:g} GB and "
            f"{p.node.cores:g} cores.")),
        "invoker.options": (f"-Dwhisk.spi.LogStoreProvider={LOG_STORE}", (
            "Leave action logs in the pods' own logs: reading every activation's logs through the "
            "Kubernetes API is what limits an invoker at thousands of activations a second. "
            "Errors then come without the last log lines (tracebacks still reach the client).")),
    }
    if p.platform == "openshift":
        values["k8s.dns"] = ("dns-default.openshift-dns", (
            "The cluster DNS service nginx resolves the controllers with: OpenShift's, not the "
            "chart's kube-dns.kube-system."))
    values["whisk.auth.guest"] = (KEY_PLACEHOLDER, (
        "Replaced by your own key in private.yaml (see the guide): the chart's default is "
        "published. Guest and system are the same placeholder here, which the chart's database "
        "init refuses, so an install without private.yaml stops there."))
    values["whisk.auth.system"] = (KEY_PLACEHOLDER, "The same placeholder as the guest key's.")
    return values


def command(p: Plan) -> str:
    """The ``dask-whisk capacity`` command line that makes ``p`` (its sizing options spelled out)."""
    cores = "" if p.worker_cores == lambda_cores(p.memory_mb) else f" --worker-cores {p.worker_cores:g}"
    return (f"dask-whisk capacity --workers {p.workers} --memory {p.memory_mb} --duration {p.seconds:g} "
            f"--node-memory {p.node.memory_gb:g} --node-cores {p.node.cores:g} --max-pods "
            f"{p.node.max_pods}{cores} --platform {p.platform}")


def values_yaml(p: Plan) -> str:
    """The values overlay for ``helm install -f``: the chart values of ``p``, each under a comment
    saying why it is what it is."""
    lines = [f"# {line}" if line else "#" for line in (
        "dask-whisk burst cluster: values for the OpenWhisk Helm chart (apache/openwhisk-deploy-kube,",
        "helm/openwhisk), over its defaults. Made by",
        f"  {command(p)}",
        "Install with your keys and host in a private file given last:",
        "  helm install owdev openwhisk/openwhisk -n openwhisk -f THIS_FILE -f private.yaml",
        "Step by step: deploy/openshift/README.md in dask-whisk.",
    )]

    def emit(tree: Mapping[str, Any], depth: int) -> None:
        pad = "  " * depth
        for key, item in tree.items():
            if isinstance(item, dict):
                lines.append(f"{pad}{key}:")
                emit(item, depth + 1)
            else:
                value, why = item
                lines.extend(f"{pad}# {line}" for line in textwrap.wrap(why, 96 - len(pad)))
                lines.append(f"{pad}{key}: {json.dumps(value)}")

    emit(_nested(chart_values(p)), 0)
    return "\n".join(lines) + "\n"


def summary(p: Plan) -> str:
    """What the planner prints: the chart values, the invoker nodes, the cold-start wave, the cost."""
    values = chart_values(p)
    width = max(map(len, values))
    per_invoker = p.pool_mb // p.memory_mb
    rounds = waves(p.units, p.workers)
    wall = rounds * p.seconds
    unit = priced_activation(p.seconds, p.memory_mb, wall)
    cold = min(p.workers, p.units)
    fits = p.fits
    warm = (f"the job's other {p.units - cold:,} activations reuse them warm" if p.units > cold
            else "every activation of the job starts cold")
    paragraphs = [
        f"invoker nodes: {p.invokers} of {p.node.memory_gb:g} GB and {p.node.cores:g} cores, "
        f"labelled openwhisk-role=invoker. One holds {min(fits.values())} workers (by memory "
        f"{fits['memory']}, by cores {fits['cores']} at {p.worker_cores:.2f} each, by pods "
        f"{fits['pods']}); each invoker's pool takes {per_invoker}: {p.invokers} x {per_invoker} = "
        f"{p.invokers * per_invoker:,} workers.",
        f"cold-start wave: {cold:,} containers start with the job, {math.ceil(cold / p.invokers)} "
        f"per invoker node, and each node pulls the action's image once; {warm}.",
        f"job of {p.units:,} units of {p.seconds:g} s: {rounds:,} wave{'s' if rounds > 1 else ''}, "
        f"at least {wall:g} s; {p.units * unit.gb_seconds:,.1f} GB-s and {p.units * unit.requests:,} "
        f"requests cost ${p.units * unit.cost:,.6f} at whisk.cost.* (an always-on VM with the "
        f"workers' {cold * p.memory_mb / 1024:,g} GB for as long: ${cold * unit.vm_cost:,.6f}).",
    ]
    return "\n".join([
        f"dask-whisk capacity: {p.workers:,} workers of {p.memory_mb} MB at once, activations of "
        f"{p.seconds:g} s, on {p.platform}",
        "helm values (openwhisk-deploy-kube's helm/openwhisk; --values FILE writes them with the reasons):",
        *(f"  {path:<{width}}  {json.dumps(value)}" for path, (value, _) in values.items()),
        *(textwrap.fill(text, 100, subsequent_indent="  ") for text in paragraphs),
    ])


def _positive(kind: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    """An argparse type: ``kind`` of the text, refused unless above zero."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above zero, got {text}")
        return value
    return parse


def _action_memory(text: str) -> int:
    """An argparse type: MB of an action, at least OpenWhisk's smallest."""
    value = _positive(int, "a whole number of MB")(text)
    if value < MIN_ACTION_MEMORY_MB:
        raise argparse.ArgumentTypeError(f"OpenWhisk's smallest action has {MIN_ACTION_MEMORY_MB} MB, "
                                         f"got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``dask-whisk capacity``."""
    count = _positive(int, "a whole number")
    number = _positive(float, "a number")
    parser.add_argument("--workers", type=count, required=True, metavar="N",
                        help="activations to run at once (the job's fan-out)")
    parser.add_argument("--memory", type=_action_memory, required=True, metavar="MB",
                        help="memory of each worker (the action's, `dask-whisk deploy --memory`)")
    parser.add_argument("--duration", type=number, default=None, metavar="S",
                        help="seconds of each activation (default: whisk.unit-target-seconds, the "
                             "length dask-whisk batches small units to)")
    parser.add_argument("--units", type=count, default=None, metavar="U",
                        help="activations of the job to price (default: one per worker)")
    parser.add_argument("--node-memory", type=number, default=64, metavar="GB",
                        help="memory of an invoker node (default 64)")
    parser.add_argument("--node-cores", type=number, default=16, metavar="N",
                        help="cores of an invoker node (default 16)")
    parser.add_argument("--max-pods", type=count, default=None, metavar="N",
                        help="pods a node's kubelet runs (default: 250 on OpenShift, 110 on Kubernetes)")
    parser.add_argument("--worker-cores", type=number, default=None, metavar="N",
                        help="cores each worker needs (default: memory / 1769, Lambda's share, "
                             "which the whisk.cost.* prices are for)")
    parser.add_argument("--platform", choices=sorted(MAX_PODS), default="openshift",
                        help="where the chart is installed (default openshift)")
    parser.add_argument("--values", metavar="FILE", default=None,
                        help="also write the values as a Helm values overlay to FILE")


def run(args: argparse.Namespace) -> int:
    """Print the plan; with ``--values``, write the overlay. Exit 2 when no node fits a worker."""
    seconds = args.duration or float(setting("unit-target-seconds"))
    node = Node(args.node_memory, args.node_cores, args.max_pods or MAX_PODS[args.platform])
    try:
        p = plan(args.workers, args.memory, seconds=seconds, units=args.units or args.workers,
                 node=node, worker_cores=args.worker_cores or lambda_cores(args.memory),
                 platform=args.platform)
    except ValueError as exc:
        print(f"dask-whisk capacity: {exc}")
        return 2
    print(summary(p))
    if args.values:
        with open(args.values, "w", encoding="utf-8") as f:
            f.write(values_yaml(p))
        print(f"values overlay: {args.values}")
    return 0


__all__ = ["Node", "Plan", "plan", "chart_values", "values_yaml", "summary", "invocations_per_minute",
           "add_arguments", "run"]
