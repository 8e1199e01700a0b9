"""Create, update and check the worker action on OpenWhisk, and the ``dask-whisk deploy`` command.

The action runs the artifact :mod:`dask_whisk.artifact` builds: the full zip for a stock
``python:3.X`` runtime, or the small zip on a blackbox image: one built from
``worker_action/Dockerfile``, or on the local server the image of the client's own Python
environment (``local_image()``). Its annotations record the dask-whisk version, Python and code it
was built from, so a client can refuse an action that does not match it.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import dask_whisk

from .artifact import (MAX_CODE_BYTES, DeployError, build_action_zip, check_python, code_digest,
                       default_cache_dir, encoded_size, host_python, worker_files, worker_requirements)
from .config import add_whisk_arguments, whisk_config_from_args

logger = logging.getLogger(__name__)

DEFAULT_ACTION = "dask-whisk-worker"
#: 512 MB, the default ceiling: dask + numpy take ~100 MB once imported, and a unit holds its
#: inputs and outputs in memory; on most deployments CPU share grows with memory too
DEFAULT_MEMORY_MB = 512
#: 300 s, the default ceiling: billing counts only the time used, the scheduler keeps its own
#: per-unit deadline, and a cold start's /init (unzip, imports) counts against this limit
DEFAULT_TIMEOUT_MS = 300_000

#: action annotations that record what the worker was built for
VERSION_ANNOTATION = "dask-whisk-version"
PYTHON_ANNOTATION = "dask-whisk-python"
CODE_ANNOTATION = "dask-whisk-code"

#: the blackbox base image the Dockerfile pins (openwhisk-runtime-python release 1.20.0)
RUNTIME_IMAGE_TAG = "1.20.0"


def local_image() -> str:
    """The blackbox image name under which a local server runs this Python environment (the
    embedded default registers it; ``dask-whisk server --image NAME=PATH`` can)."""
    return f"dask-whisk/local-python:{host_python()}"


def local_images() -> dict[str, str]:
    """What a local server needs to run the small zip here: ``local_image()`` -> this interpreter
    (``ServerSettings(images=...)``)."""
    return {local_image(): sys.executable}


def runtime_kind(python: str) -> str:
    """The OpenWhisk runtime kind for a Python minor version, e.g. ``python:3.11``."""
    return f"python:{check_python(python)}"


def deploy_command(name: str, python: str) -> str:
    """The command a user runs to (re)deploy the worker action for this client."""
    extra = "" if name == DEFAULT_ACTION else f" --name {name}"
    return f"dask-whisk deploy{extra} --python {python}"


# -- the action ----------------------------------------------------------------------------

class WorkerActionMismatch(DeployError):
    """The deployed worker action was built for another dask-whisk version or Python."""


def annotation(record: dict[str, Any], key: str) -> Any:
    """The value of annotation ``key`` on an action or activation record, or None."""
    for item in record.get("annotations") or []:
        if item.get("key") == key:
            return item.get("value")
    return None


def _fit_limit(label: str, unit: str, requested: int | None, default: int,
               low: int | None, high: int | None, flag: str, log: Callable[[str], None]) -> int:
    """``requested`` if within the namespace's range (else an error), or the default clamped to it."""
    if requested is not None:
        if (low is not None and requested < low) or (high is not None and requested > high):
            raise DeployError(
                f"The action {label} {requested} {unit} is outside this deployment's range "
                f"{low}..{high} {unit}: choose {flag} within it, or have the operator raise the "
                f"range (helm/ansible action limits; code defaults 128..512 MB, 100..300000 ms)."
            )
        return requested
    value = default
    if high is not None and value > high:
        value = high
    if low is not None and value < low:
        value = low
    if value != default:
        log(f"the namespace allows {label} {low}..{high} {unit}: using {value} {unit} "
            f"instead of the default {default}")
    return value


async def _namespace_limits(client: Any) -> dict[str, Any]:
    from .openwhisk import WhiskNotFound

    try:
        return dict(await client.limits())
    except WhiskNotFound:
        return {}  # deployments older than the limits route: OpenWhisk validates at PUT


def offered_kinds(info: dict[str, Any]) -> list[str] | None:
    """The action kinds in a deployment description (``GET /``), or None if it lists none."""
    runtimes = info.get("runtimes")
    if not isinstance(runtimes, dict):
        return None
    kinds = [rt["kind"] for family in runtimes.values() if isinstance(family, list)
             for rt in family if isinstance(rt, dict) and isinstance(rt.get("kind"), str)]
    return sorted(kinds) or None


async def deployment_info(client: Any) -> dict[str, Any] | None:
    """The deployment's description (``GET /``); None when it gives none (no connection: raises).

    A gateway may expose only ``/api/v1``: then OpenWhisk's own checks at PUT decide.
    """
    from .openwhisk import WhiskConnectionError, WhiskError, WhiskTimeout

    try:
        return await client.info()
    except (WhiskConnectionError, WhiskTimeout):
        raise
    except WhiskError as exc:
        logger.debug("the deployment does not describe itself at GET / (%s)", exc)
        return None


def blackbox_advice(python: str) -> str:
    """What to do when the deployment has no ``python:<python>`` kind: a blackbox image."""
    return (f"cloudpickle needs the worker to run the client's Python {python}: build a blackbox "
            f"image with `docker build -f worker_action/Dockerfile --build-arg PYTHON={python} "
            f"--build-arg REQUIREMENTS=\"$(dask-whisk deploy --print-requirements --python {python})\" "
            f"-t ORG/dask-whisk-worker:TAG worker_action`, push it, then run `dask-whisk deploy "
            f"--image ORG/dask-whisk-worker:TAG --python {python}` (or use a client with a Python "
            f"the deployment offers)")


async def deploy_worker_action(client: Any, name: str = DEFAULT_ACTION, *, local: bool = False,
                               python: str | None = None, image: str | None = None,
                               memory_mb: int | None = None, timeout_ms: int | None = None,
                               provide_api_key: bool = False,
                               cache_dir: str | os.PathLike[str] | None = None,
                               log: Callable[[str], None] = logger.info) -> dict[str, Any]:
    """Create or update the worker action and return OpenWhisk's record of it.

    ``image``: a blackbox image (from worker_action/Dockerfile) carrying the dependencies, with
    the small zip as code; ``local``: the same on ``local_image()``, a local server's image of
    this Python environment. Otherwise the full zip for the ``python:<python>`` runtime.
    """
    from .openwhisk import WhiskBadRequest, WhiskPayloadTooLarge

    python = check_python(python or host_python())
    if local and image is None:
        image = local_image()
    limits = await _namespace_limits(client)
    memory = _fit_limit("memory", "MB", memory_mb, DEFAULT_MEMORY_MB, limits.get("minActionMemory"),
                        limits.get("maxActionMemory"), "--memory", log)
    timeout = _fit_limit("timeout", "ms", timeout_ms, DEFAULT_TIMEOUT_MS,
                         limits.get("minActionTimeout"), limits.get("maxActionTimeout"),
                         "--timeout", log)
    kind = "blackbox" if image else runtime_kind(python)
    if image is None:  # say so before spending a minute building a zip nobody can run
        info = await deployment_info(client)
        kinds = offered_kinds(info) if info is not None else None
        if kinds is not None and kind not in kinds:
            python_kinds = [k for k in kinds if k.startswith("python:")] or ["none"]
            raise DeployError(
                f"{client.config.apihost} does not offer the runtime kind {kind!r} (its Python "
                f"kinds: {', '.join(python_kinds)}). {blackbox_advice(python)}."
            )
    with_dependencies = image is None
    code = await asyncio.to_thread(build_action_zip, with_dependencies=with_dependencies,
                                   python=python, cache_dir=cache_dir)
    annotations = [
        {"key": VERSION_ANNOTATION, "value": dask_whisk.__version__},
        {"key": PYTHON_ANNOTATION, "value": python},
        {"key": CODE_ANNOTATION, "value": code_digest(worker_files())},
        {"key": "provide-api-key", "value": bool(provide_api_key)},
    ]
    try:
        action = await client.put_action(
            name, code=base64.b64encode(code).decode("ascii"), kind=kind, main="main", binary=True,
            image=image, limits={"memory": memory, "timeout": timeout}, annotations=annotations,
            overwrite=True)
    except WhiskBadRequest as exc:
        if kind in str(exc) and image is None:
            raise DeployError(
                f"{client.config.apihost} does not offer the runtime kind {kind!r} ({exc.message}). "
                f"{blackbox_advice(python)}."
            ) from None
        raise
    except WhiskPayloadTooLarge as exc:
        raise DeployError(
            f"{client.config.apihost} refused the {encoded_size(code):,}-byte (base64) worker code "
            f"({exc.message}): deploy a blackbox image from worker_action/Dockerfile with --image."
        ) from None
    what = "image " + image if image else ("small zip" if not with_dependencies else "zip with virtualenv")
    log(f"deployed the worker action {name} to {client.config.apihost} ({kind}, {what}, "
        f"{len(code) / 1e3:,.0f} kB, memory {memory} MB, timeout {timeout} ms)")
    return action


def check_worker_action(action: dict[str, Any], name: str, python: str | None = None) -> None:
    """Raise WorkerActionMismatch unless ``action`` was built for this dask-whisk and Python."""
    python = python or host_python()
    found_version = annotation(action, VERSION_ANNOTATION)
    found_python = annotation(action, PYTHON_ANNOTATION)
    kind = (action.get("exec") or {}).get("kind")
    if isinstance(kind, str) and kind.startswith("python:"):
        found_python = found_python or kind.partition(":")[2]
    problems = []
    if found_version is None:
        problems.append("it carries no dask-whisk-version annotation (was it deployed by dask-whisk?)")
    elif found_version != dask_whisk.__version__:
        problems.append(f"it was built for dask-whisk {found_version}, this client is "
                        f"{dask_whisk.__version__}")
    if found_python != python:
        problems.append(f"it runs Python {found_python}, this client runs Python {python} "
                        "(cloudpickle needs the same minor version on both sides)")
    if kind not in (None, "blackbox") and kind != runtime_kind(python):
        problems.append(f"its runtime kind is {kind!r}, expected {runtime_kind(python)!r}")
    if problems:
        raise WorkerActionMismatch(
            f"The worker action {name!r} does not match this client: {'; '.join(problems)}. "
            f"Redeploy it with `{deploy_command(name, python)}` (add --image IMG if it is a "
            f"blackbox action), or set 'whisk.action' to another action name."
        )


async def ensure_worker_action(client: Any, name: str = DEFAULT_ACTION, *, local: bool,
                               memory_mb: int | None = None, timeout_ms: int | None = None,
                               log: Callable[[str], None] = logger.info) -> dict[str, Any]:
    """Make sure the worker action exists and matches this client; return its record.

    A missing action is deployed (``local``: the small zip; else the full zip). On the local
    server an outdated action is simply redeployed; on a real deployment a version or Python
    mismatch is refused with the command that fixes it, since the action may serve other users.
    """
    from .openwhisk import WhiskNotFound

    try:
        action = await client.get_action(name, code=False)
    except WhiskNotFound:
        return await deploy_worker_action(client, name, local=local, memory_mb=memory_mb,
                                          timeout_ms=timeout_ms, log=log)
    current = code_digest(worker_files())
    if local:
        try:
            check_worker_action(action, name)
            stale = annotation(action, CODE_ANNOTATION) != current
        except WorkerActionMismatch:
            stale = True
        if stale:
            return await deploy_worker_action(client, name, local=True, memory_mb=memory_mb,
                                              timeout_ms=timeout_ms, log=log)
        return action
    check_worker_action(action, name)
    if annotation(action, CODE_ANNOTATION) != current:
        logger.warning("the worker action %s was built from other dask-whisk %s sources than this "
                       "client's; if jobs fail, redeploy it with `%s`", name,
                       dask_whisk.__version__, deploy_command(name, host_python()))
    return action


# -- command line --------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``dask-whisk deploy``."""
    parser.add_argument("--name", default=None,
                        help=f"action name (default: dask config 'whisk.action', {DEFAULT_ACTION})")
    parser.add_argument("--memory", type=int, metavar="MB",
                        help=f"action memory limit (default {DEFAULT_MEMORY_MB}, within the namespace's range)")
    parser.add_argument("--timeout", type=int, metavar="MS",
                        help=f"action time limit (default {DEFAULT_TIMEOUT_MS}, within the namespace's range)")
    parser.add_argument("--provide-api-key", action="store_true",
                        help="give activations __OW_API_KEY (not needed by the worker; off by default)")
    parser.add_argument("--image", metavar="ORG/IMG:TAG",
                        help="deploy as a blackbox action on this image (built from worker_action/Dockerfile)")
    parser.add_argument("--python", metavar="3.X", default=None,
                        help=f"Python of the runtime (default: this interpreter's, {host_python()})")
    parser.add_argument("--without-dependencies", action="store_true",
                        help="deploy the small zip on a local server's image of this Python "
                             f"environment, {local_image()} (dask-whisk server --image "
                             f"{local_image()}=$(which python))")
    parser.add_argument("--zip-only", metavar="PATH",
                        help="write the action's zip to PATH and print its size; deploy nothing")
    parser.add_argument("--print-requirements", action="store_true",
                        help="print the worker's pinned requirements (for docker build --build-arg)")
    parser.add_argument("--cache-dir", metavar="DIR", default=None,
                        help=f"where downloaded wheels are kept (default {default_cache_dir()})")
    add_whisk_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Build the worker action and, unless ``--zip-only``, create or update it."""
    from .config import WhiskConfigError, setting
    from .openwhisk import OpenWhiskClient, WhiskError

    python = args.python or host_python()
    try:
        check_python(python)
        if args.print_requirements:
            print(" ".join(worker_requirements(python)))
            return 0
        if args.zip_only:
            with_dependencies = not (args.image or args.without_dependencies)
            code = build_action_zip(args.zip_only, with_dependencies=with_dependencies,
                                    python=python, cache_dir=args.cache_dir)
            print(f"wrote {args.zip_only}: {len(code):,} bytes, {encoded_size(code):,} in base64 "
                  f"({100 * encoded_size(code) / MAX_CODE_BYTES:.0f}% of OpenWhisk's "
                  f"{MAX_CODE_BYTES // 2**20} MB code limit)")
            return 0
        config = whisk_config_from_args(args)
        name = args.name or setting("action")

        async def deploy() -> dict[str, Any]:
            async with OpenWhiskClient(config) as client:
                return await deploy_worker_action(
                    client, name, local=args.without_dependencies, python=python, image=args.image,
                    memory_mb=args.memory, timeout_ms=args.timeout,
                    provide_api_key=args.provide_api_key, cache_dir=args.cache_dir, log=print)

        action = asyncio.run(deploy())
        print(f"{action.get('namespace', config.namespace)}/{action.get('name', name)} "
              f"version {action.get('version', '?')}")
        return 0
    except (DeployError, WhiskConfigError, WhiskError) as exc:
        print(f"dask-whisk deploy: error: {exc}", file=sys.stderr)
        return 1


__all__ = [
    "DEFAULT_ACTION", "DEFAULT_MEMORY_MB", "DEFAULT_TIMEOUT_MS", "RUNTIME_IMAGE_TAG",
    "WorkerActionMismatch", "annotation", "blackbox_advice", "check_worker_action", "deploy_command",
    "deploy_worker_action", "deployment_info", "ensure_worker_action", "offered_kinds",
    "runtime_kind",
]
