"""``dask-whisk capacity`` and the OpenShift deployment kit: the values overlay it writes is the
OpenWhisk Helm chart's own keys, holds the workers it was planned for, and the kit's files are
the planner's output."""
from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

import dask
import pytest
import yaml

from dask_whisk import capacity
from dask_whisk.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "deploy" / "openshift"
OVERLAY = KIT / "dask-whisk-1000x512.yaml"

#: value paths of the OpenWhisk chart (apache/openwhisk-deploy-kube, helm/openwhisk/values.yaml,
#: read at commit 108f327 of 2024-07-31) in the sections an overlay for dask-whisk may touch
CHART_VALUE_PATHS = {
    "whisk.ingress.apiHostName", "whisk.ingress.apiHostPort", "whisk.ingress.apiHostProto",
    "whisk.ingress.type", "whisk.ingress.domain", "whisk.ingress.awsSSL",
    "whisk.ingress.useInternally", "whisk.ingress.tls.enabled", "whisk.ingress.tls.createsecret",
    "whisk.ingress.tls.secretname", "whisk.ingress.tls.secrettype", "whisk.ingress.tls.crt",
    "whisk.ingress.tls.key", "whisk.auth.system", "whisk.auth.guest", "whisk.systemNameSpace",
    "whisk.limits.actionsInvokesPerminute", "whisk.limits.actionsInvokesConcurrent",
    "whisk.limits.triggersFiresPerminute", "whisk.limits.actionsSequenceMaxlength",
    "whisk.limits.actions.time.min", "whisk.limits.actions.time.max", "whisk.limits.actions.time.std",
    "whisk.limits.actions.memory.min", "whisk.limits.actions.memory.max",
    "whisk.limits.actions.memory.std", "whisk.limits.actions.concurrency.min",
    "whisk.limits.actions.concurrency.max", "whisk.limits.actions.concurrency.std",
    "whisk.limits.actions.log.min", "whisk.limits.actions.log.max", "whisk.limits.actions.log.std",
    "whisk.limits.activation.payload.max", "whisk.loadbalancer.blackboxFraction",
    "whisk.loadbalancer.timeoutFactor", "whisk.containerPool.userMemory", "whisk.runtimes",
    "k8s.domain", "k8s.dns", "k8s.persistence.enabled", "k8s.persistence.hasDefaultStorageClass",
    "k8s.persistence.explicitStorageClass", "db.auth.username", "db.auth.password",
    "db.wipeAndInit", "nginx.httpsNodePort", "nginx.replicaCount",
    "controller.replicaCount", "controller.options", "controller.jvmHeapMB", "controller.jvmOptions",
    "invoker.options", "invoker.jvmHeapMB", "invoker.jvmOptions", "invoker.loglevel",
    "invoker.containerFactory.useRunc", "invoker.containerFactory.impl",
    "invoker.containerFactory.enableConcurrency", "invoker.containerFactory.networkConfig.name",
    "invoker.containerFactory.kubernetes.isolateUserActions",
    "invoker.containerFactory.kubernetes.replicaCount", "affinity.enabled",
    "affinity.invokerNodeLabel", "toleration.enabled", "toleration.invokerValue",
}

SMALL = ["--workers", "40", "--memory", "256", "--duration", "2", "--units", "100",
         "--node-memory", "8", "--node-cores", "2", "--max-pods", "110", "--platform", "kubernetes"]

SMALL_OUTPUT = """\
dask-whisk capacity: 40 workers of 256 MB at once, activations of 2 s, on kubernetes
helm values (openwhisk-deploy-kube's helm/openwhisk; --values FILE writes them with the reasons):
  whisk.limits.actionsInvokesConcurrent             40
  whisk.limits.actionsInvokesPerminute              1200
  whisk.limits.actions.memory.max                   "2560m"
  whisk.limits.actions.time.max                     "15m"
  whisk.containerPool.userMemory                    "2560m"
  whisk.loadbalancer.blackboxFraction               "100%"
  controller.options                                "-Dwhisk.loadbalancer.managed-fraction=100%"
  invoker.containerFactory.impl                     "kubernetes"
  invoker.containerFactory.kubernetes.replicaCount  4
  invoker.options                                   "-Dwhisk.spi.LogStoreProvider=org.apache.openwhisk.core.containerpool.logging.LogDriverLogStoreProvider"
  whisk.auth.guest                                  "set-in-private.yaml"
  whisk.auth.system                                 "set-in-private.yaml"
invoker nodes: 4 of 8 GB and 2 cores, labelled openwhisk-role=invoker. One holds 13 workers (by
  memory 16, by cores 13 at 0.14 each, by pods 90); each invoker's pool takes 10: 4 x 10 = 40
  workers.
cold-start wave: 40 containers start with the job, 10 per invoker node, and each node pulls the
  action's image once; the job's other 60 activations reuse them warm.
job of 100 units of 2 s: 3 waves, at least 6 s; 50.0 GB-s and 100 requests cost $0.000853 at
  whisk.cost.* (an always-on VM with the workers' 10 GB for as long: $0.000200).
"""


def leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """A parsed values file as {dotted path: value}."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        flat.update(leaves(value, path + ".") if isinstance(value, dict) else {path: value})
    return flat


def planned(tmp_path: Path, argv: list[str], capsys) -> tuple[str, dict[str, object], str]:
    """(printed output, the written overlay's values, its text) of ``dask-whisk capacity ARGV``."""
    path = tmp_path / "values.yaml"
    assert cli_main(["capacity", *argv, "--values", str(path)]) == 0
    text = path.read_text()
    return capsys.readouterr().out, leaves(yaml.safe_load(text)), text


def megabytes(quantity: str) -> int:
    """A chart memory value such as ``"27136m"`` in MB."""
    assert re.fullmatch(r"\d+m", quantity), quantity
    return int(quantity[:-1])


def test_the_kits_overlay_is_yaml_of_the_charts_own_value_paths():
    values = leaves(yaml.safe_load(OVERLAY.read_text()))
    assert set(values) <= CHART_VALUE_PATHS, set(values) - CHART_VALUE_PATHS
    assert values["invoker.containerFactory.impl"] == "kubernetes"
    assert values["whisk.loadbalancer.blackboxFraction"] == "100%"
    assert values["k8s.dns"] == "dns-default.openshift-dns"
    published = {"23bc46b1-71f6-4ed5-8c54-816aa4f8c502", "789c46b1-71f6-4ed5-8c54-816aa4f8c502"}
    assert not any(values[f"whisk.auth.{who}"].split(":")[0] in published for who in ("guest", "system"))


def test_the_kits_overlay_is_what_the_planner_writes_today(tmp_path, capsys):
    """The committed file is the output of the command in its header (regenerate it with that
    command when the planner changes)."""
    text = OVERLAY.read_text()
    made_by = re.search(r"^#   (dask-whisk capacity .*)$", text, re.M).group(1)
    _, _, written = planned(tmp_path, shlex.split(made_by)[2:], capsys)
    assert written == text
    assert "--workers 1000 --memory 512" in made_by


def test_the_values_for_1000_workers_of_512_mb_hold_them(tmp_path, capsys):
    _, values, text = planned(tmp_path, ["--workers", "1000", "--memory", "512"], capsys)
    assert set(values) <= CHART_VALUE_PATHS
    invokers = values["invoker.containerFactory.kubernetes.replicaCount"]
    pool = megabytes(values["whisk.containerPool.userMemory"])
    assert values["whisk.limits.actionsInvokesConcurrent"] >= 1000
    assert invokers * (pool // 512) >= 1000 and invokers * pool >= 1000 * 512
    # one wave of 0.5 s activations (whisk.unit-target-seconds) starts 120 per worker a minute
    assert values["whisk.limits.actionsInvokesPerminute"] >= 1000 * 120
    assert 512 <= megabytes(values["whisk.limits.actions.memory.max"]) <= pool
    # an invoker's pool fits on its node (64 GB, less what the platform keeps)
    assert pool <= 64 * 1024 - capacity.NODE_RESERVED_MB
    assert text.count("\n    # ") >= 2, "each value carries its reason as a comment"


@pytest.mark.parametrize("workers, memory, node_gb, cores, worker_cores", [
    (1, 128, 8, 1, None), (7, 300, 16, 4, None), (999, 2048, 32, 8, None),   # bound by cores
    (20_000, 256, 64, 16, None), (1000, 512, 64, 16, 0.1), (777, 1000, 48, 64, 0.5),  # by memory
    (5000, 128, 64, 64, 0.01)])                                              # by pods
def test_every_plan_holds_its_workers_on_nodes_that_fit_them(workers, memory, node_gb, cores,
                                                             worker_cores, tmp_path, capsys):
    argv = ["--workers", str(workers), "--memory", str(memory), "--node-memory", str(node_gb),
            "--node-cores", str(cores)] + (["--worker-cores", str(worker_cores)] if worker_cores else [])
    _, values, _ = planned(tmp_path, argv, capsys)
    invokers = values["invoker.containerFactory.kubernetes.replicaCount"]
    pool = megabytes(values["whisk.containerPool.userMemory"])
    per_invoker = pool // memory
    assert pool % memory == 0 and invokers * per_invoker >= workers
    assert (invokers - 1) * per_invoker < workers, "no invoker more than the workers need"
    assert per_invoker * memory <= node_gb * 1024 - capacity.NODE_RESERVED_MB
    assert per_invoker * (worker_cores or memory / capacity.LAMBDA_MB_PER_CORE) <= cores
    assert per_invoker <= capacity.MAX_PODS["openshift"] - capacity.NODE_SYSTEM_PODS
    assert values["whisk.limits.actionsInvokesConcurrent"] == workers


def test_the_planners_output_for_a_small_case(tmp_path, capsys):
    out, values, text = planned(tmp_path, SMALL, capsys)
    assert out == SMALL_OUTPUT + f"values overlay: {tmp_path / 'values.yaml'}\n"
    assert "k8s.dns" not in values, "plain Kubernetes keeps the chart's DNS"
    assert text.startswith("# dask-whisk burst cluster")
    assert "#   dask-whisk capacity --workers 40 --memory 256 --duration 2 --node-memory 8 " \
           "--node-cores 2 --max-pods 110 --platform kubernetes\n" in text


def test_the_job_is_priced_at_the_reports_settings(capsys):
    """50 GB-s and 100 requests at $1 per GB-second and $1 per request: $150."""
    with dask.config.set({"whisk.cost.gb-second": 1.0, "whisk.cost.million-requests": 1e6,
                          "whisk.cost.vm-gb-hour": 3600.0}):
        assert cli_main(["capacity", *SMALL]) == 0
    out = capsys.readouterr().out
    # the VM: the workers' 10 GB for the job's 6 s at $3,600 per GB-hour
    assert "requests cost $150.000000 at whisk.cost.* (an always-on VM with the workers' 10 GB " \
           "for as long: $60.000000)" in " ".join(out.split())


def test_the_duration_defaults_to_the_batching_target(capsys):
    with dask.config.set({"whisk.unit-target-seconds": 4}):
        assert cli_main(["capacity", "--workers", "10", "--memory", "512"]) == 0
    out = capsys.readouterr().out
    assert "activations of 4 s" in out
    assert re.search(r"actionsInvokesPerminute\s+150$", out, re.M), out  # 10 x ceil(60 / 4)


@pytest.mark.parametrize("argv, message", [
    (["--workers", "0", "--memory", "512"], "argument --workers: must be above zero, got 0"),
    (["--workers", "ten", "--memory", "512"], "argument --workers: 'ten' is not a whole number"),
    (["--workers", "10", "--memory", "64"], "argument --memory: OpenWhisk's smallest action has 128 MB"),
    (["--workers", "10", "--memory", "512", "--duration", "-1"], "argument --duration: must be above zero"),
    (["--workers", "10"], "the following arguments are required: --memory"),
])
def test_bad_input_is_a_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        cli_main(["capacity", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_a_node_too_small_for_one_worker_is_said_plainly(capsys):
    assert cli_main(["capacity", "--workers", "10", "--memory", "4096", "--node-memory", "6"]) == 2
    out = capsys.readouterr().out
    assert out.startswith("dask-whisk capacity: an invoker node of 6 GB, 16 cores and 250 pods "
                          "cannot hold one worker of 4096 MB")
    assert "(too little: memory;" in out


def test_the_guides_private_values_are_chart_paths_too():
    """The guide's private.yaml (keys and API host) sets chart values, and names the overlay."""
    guide = (KIT / "README.md").read_text()
    assert OVERLAY.name in guide and "dask-whisk doctor --store swift" in guide
    block = re.search(r"cat > private\.yaml <<EOF\n(.*?)\nEOF\n", guide, re.S).group(1)
    private = leaves(yaml.safe_load(re.sub(r'"\$[^"]*"', '"x"', block)))
    assert set(private) <= CHART_VALUE_PATHS, set(private) - CHART_VALUE_PATHS
    assert {"whisk.auth.guest", "whisk.auth.system"} <= set(private)


def test_the_readme_shows_the_planners_real_output(capsys):
    readme = (ROOT / "README.md").read_text()
    shown = re.search(r"^\$ (dask-whisk capacity [^\n]*)\n(.*?)^```", readme, re.M | re.S)
    assert shown and "deploy/openshift/README.md" in readme
    assert cli_main(shlex.split(shown.group(1))[1:]) == 0
    assert capsys.readouterr().out == shown.group(2)
