"""``dask-whisk server``: run the local OpenWhisk-compatible server until SIGINT or SIGTERM.

The first stdout line is ``dask-whisk server listening on <url>`` (flushed), so a parent
process that asked for ``--port 0`` can read where it listens. The API key is taken from
``--auth``, else the ``DASK_WHISK_SERVER_AUTH`` environment variable, else the guest key.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from .settings import AUTH_ENV, FAULT_KINDS, GUEST_AUTH, READY_PREFIX, FaultSettings, ServerSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's options; defaults are OpenWhisk's code defaults."""
    d = ServerSettings()
    add = parser.add_argument
    add("--host", default=d.host, help="address to bind (default %(default)s)")
    add("--port", type=int, default=d.port, help="port, 0 for any free one (default %(default)s)")
    add("--auth", default=None, help=f"accepted API key uuid:key (default: ${AUTH_ENV}, else the guest key)")
    add("--namespace", default=d.namespace, help="the namespace's name (default %(default)s)")
    add("--invocations-per-minute", type=int, default=d.invocations_per_minute,
        help="invokes a minute the namespace accepts before answering 429 (default %(default)s)")
    add("--concurrent-invocations", type=int, default=d.concurrent_invocations,
        help="activations in flight the namespace accepts before answering 429 (default %(default)s)")
    add("--user-memory", type=int, default=d.user_memory_mb, metavar="MB",
        help="memory for containers; the pool holds user-memory / action-memory of them")
    add("--min-memory", type=int, default=d.min_memory_mb, metavar="MB",
        help="smallest action memory limit accepted at PUT (default %(default)s)")
    add("--max-memory", type=int, default=d.max_memory_mb, metavar="MB",
        help="largest action memory limit accepted at PUT (default %(default)s)")
    add("--default-memory", type=int, default=d.default_memory_mb, metavar="MB",
        help="memory limit of an action that names none (default %(default)s)")
    add("--min-timeout", type=int, default=d.min_timeout_ms, metavar="MS",
        help="shortest action time limit accepted at PUT (default %(default)s)")
    add("--max-timeout", type=int, default=d.max_timeout_ms, metavar="MS",
        help="longest action time limit accepted at PUT (default %(default)s)")
    add("--default-timeout", type=int, default=d.default_timeout_ms, metavar="MS",
        help="time limit of an action that names none (default %(default)s)")
    add("--max-logs", type=int, default=d.max_logs_mb, metavar="MB",
        help="largest log limit accepted at PUT (default %(default)s)")
    add("--default-logs", type=int, default=d.default_logs_mb, metavar="MB",
        help="log limit of an action that names none (default %(default)s)")
    add("--max-payload", type=int, default=d.max_payload_bytes, metavar="BYTES",
        help="invoke payload and result limit")
    add("--max-code", type=int, default=d.max_code_bytes, metavar="BYTES",
        help="largest action code accepted at PUT, else 413 (default %(default)s)")
    add("--max-blocking-wait", type=int, default=d.max_blocking_wait_ms, metavar="MS",
        help="how long a blocking invoke waits before answering 202 (default %(default)s)")
    add("--idle-container-seconds", type=float, default=d.idle_container_seconds,
        help="remove a warm container after this idle time")
    add("--max-activation-records", type=int, default=d.max_activation_records,
        help="activation records kept, oldest dropped first (default %(default)s)")
    add("--memory-poll-ms", type=int, default=d.memory_poll_ms,
        help="how often container memory is checked against the action's limit")
    add("--image", action="append", default=[], metavar="NAME=PATH", type=image_option,
        help="run blackbox actions of image NAME (e.g. org/worker:1) in the Python environment "
             "PATH (its interpreter, or a virtualenv's folder); repeatable")
    faults = parser.add_argument_group("test-only fault injection (off by default)")
    faults.add_argument("--fault-rate", type=float, default=0.0, metavar="R",
                        help="probability an invoke gets one of --fault-kinds")
    faults.add_argument("--fault-kinds", default=",".join(FAULT_KINDS),
                        help="comma-separated subset of: " + ", ".join(FAULT_KINDS))
    faults.add_argument("--hang-rate", type=float, default=0.0, metavar="R",
                        help="probability an activation hangs until its time limit")
    faults.add_argument("--latency-ms", type=int, default=0, metavar="N",
                        help="latency added to every invoke request")
    faults.add_argument("--seed", type=int, default=None, metavar="N",
                        help="seed of the fault draws, for a repeatable run")


def image_option(text: str) -> tuple[str, str]:
    """``NAME=PATH`` of ``--image``: the image name and the interpreter of its environment."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    python = Path(path).expanduser()
    if python.is_dir():
        python = python / "bin" / "python"
    if not (python.is_file() and os.access(python, os.X_OK)):
        raise argparse.ArgumentTypeError(
            f"{path} is neither a Python interpreter nor a virtualenv folder with bin/python")
    return name, str(python.absolute())


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """The settings the parsed options describe (ValueError with the reason when invalid)."""
    kinds = tuple(k.strip() for k in args.fault_kinds.split(",") if k.strip())
    return ServerSettings(
        host=args.host, port=args.port,
        auth=args.auth or os.environ.get(AUTH_ENV) or GUEST_AUTH, namespace=args.namespace,
        invocations_per_minute=args.invocations_per_minute,
        concurrent_invocations=args.concurrent_invocations, user_memory_mb=args.user_memory,
        min_memory_mb=args.min_memory, max_memory_mb=args.max_memory,
        default_memory_mb=args.default_memory, min_timeout_ms=args.min_timeout,
        max_timeout_ms=args.max_timeout, default_timeout_ms=args.default_timeout,
        max_logs_mb=args.max_logs, default_logs_mb=args.default_logs,
        max_payload_bytes=args.max_payload, max_code_bytes=args.max_code,
        max_blocking_wait_ms=args.max_blocking_wait,
        idle_container_seconds=args.idle_container_seconds,
        max_activation_records=args.max_activation_records, memory_poll_ms=args.memory_poll_ms,
        images=dict(args.image),
        faults=FaultSettings(fault_rate=args.fault_rate, kinds=kinds, hang_rate=args.hang_rate,
                             latency_ms=args.latency_ms, seed=args.seed),
    )


async def serve(settings: ServerSettings) -> None:
    """Serve until SIGINT or SIGTERM, announcing the URL on stdout first."""
    from .local import LocalWhisk

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with LocalWhisk(settings) as url:
        print(READY_PREFIX + url, flush=True)
        if settings.auth == GUEST_AUTH:
            print("dask-whisk server: accepting OpenWhisk's published guest key, which anyone can "
                  f"use; it listens on {settings.host} only (pass --auth, or ${AUTH_ENV}, for a key "
                  "of your own)", file=sys.stderr, flush=True)
        await stop.wait()


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dask-whisk server``."""
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"dask-whisk server: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(serve(settings))
    except OSError as exc:
        print(f"dask-whisk server: cannot listen on {settings.host}:{settings.port}: {exc}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="dask-whisk server")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
