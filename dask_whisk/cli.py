"""The ``dask-whisk`` command line: one subcommand per module, each module owning its options.

Every subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``; this file only
wires them together, so a subcommand's code lives next to what it drives.
"""
from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand -> (module implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "server": ("dask_whisk.server.main", "run the local OpenWhisk-compatible server"),
    "swift-saio": ("dask_whisk.store.saio", "start, stop or inspect a single-node Swift on loopback"),
    "clean": ("dask_whisk.store.clean", "delete job objects a killed client left in the store"),
    "deploy": ("dask_whisk.deploy", "build the worker action and create or update it on OpenWhisk"),
    "runtime": ("dask_whisk.runtime", "build, list or delete runtimes: packages activations fetch from the store"),
    "doctor": ("dask_whisk.doctor", "check an OpenWhisk and Swift configuration end to end"),
    "report": ("dask_whisk.diagnostics", "print a saved job report and draw its timeline (--png)"),
    "capacity": ("dask_whisk.capacity", "size an OpenWhisk Helm deployment for N workers at once, and price a job"),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dask-whisk`` console script; imports only the chosen subcommand."""
    commands = "\n".join(f"  {name:<12} {help_text}" for name, (_, help_text) in COMMANDS.items())
    top = argparse.ArgumentParser(
        prog="dask-whisk",
        description="Dask on Apache OpenWhisk.",
        epilog=f"commands:\n{commands}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("command", choices=list(COMMANDS), metavar="COMMAND",
                     help="one of the commands below; dask-whisk COMMAND --help shows its options")
    top.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parsed = top.parse_args(argv)
    module_name, help_text = COMMANDS[parsed.command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"dask-whisk {parsed.command}", description=help_text)
    module.add_arguments(parser)
    try:
        return int(module.run(parser.parse_args(parsed.args)) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
