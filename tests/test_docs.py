"""The documentation that lives in the code: a docstring on everything public, and a complete
``--help`` for the ``dask-whisk`` command and each of its subcommands."""
from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import io
import re
from pathlib import Path

import pytest

from dask_whisk import cli

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dask_whisk", "worker_action")
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def module_name(path: Path) -> str:
    """``dask_whisk/store/local.py`` -> ``dask_whisk.store.local`` (a package by its own name)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def documented_by_base(module: str, class_name: str, method: str) -> bool:
    """Whether a project class that ``class_name`` derives from documents ``method``: the
    interface it implements (the store's ``get``, ``put``...) says what it does."""
    cls = getattr(importlib.import_module(module), class_name)
    return any(base.__module__.split(".")[0] in PACKAGES
               and getattr(vars(base).get(method), "__doc__", None) for base in cls.__mro__[1:])


def public_definitions() -> dict[str, bool]:
    """Every module, and every public function, class and public method of a public class
    defined at a module's top level, under the packages -> whether it has a docstring."""
    found: dict[str, bool] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = module_name(path)
            tree = ast.parse(path.read_text())
            found[module] = bool(ast.get_docstring(tree))
            for node in tree.body:
                if not isinstance(node, (*FUNCTIONS, ast.ClassDef)) or node.name.startswith("_"):
                    continue
                found[f"{module}.{node.name}"] = bool(ast.get_docstring(node))
                for member in node.body if isinstance(node, ast.ClassDef) else ():
                    if isinstance(member, FUNCTIONS) and not member.name.startswith("_"):
                        found[f"{module}.{node.name}.{member.name}"] = bool(
                            ast.get_docstring(member)) or documented_by_base(module, node.name, member.name)
    return found


def test_every_public_function_class_and_method_has_a_docstring():
    found = public_definitions()
    # the walk reaches functions, methods, properties and both packages' modules
    for name in ("dask_whisk.whisk_get", "dask_whisk.diagnostics.JobReport.summary",
                 "dask_whisk.diagnostics.JobReport.cost", "dask_whisk.store.local.LocalJobStore",
                 "worker_action.__main__.main"):
        assert name in found, name
    missing = sorted(name for name, documented in found.items() if not documented)
    assert not missing, f"{len(missing)} without a docstring:\n" + "\n".join(missing)


def help_text(argv: list[str]) -> str:
    """What ``dask-whisk ARGV --help`` prints (it exits 0)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        cli.main([*argv, "--help"])
    assert exited.value.code == 0
    return out.getvalue()


def test_the_command_lists_every_subcommand_with_what_it_does():
    text = help_text([])
    assert re.search(r"^  COMMAND[ \t]+\S", text, re.M), f"COMMAND has no help:\n{text}"
    for name, (_, purpose) in cli.COMMANDS.items():
        assert purpose.strip(), name
        assert re.search(rf"^  {re.escape(name)}\s+{re.escape(purpose)}$", text, re.M), name


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_each_subcommand_says_what_it_does_and_what_every_option_means(command):
    module, purpose = cli.COMMANDS[command]
    text = help_text([command])
    assert " ".join(purpose.split()) in " ".join(text.split())
    parser = argparse.ArgumentParser()
    importlib.import_module(module).add_arguments(parser)
    unexplained = [action.option_strings or action.dest for action in parser._actions
                   if not (action.help or "").strip()]
    assert not unexplained, f"dask-whisk {command}: no help for {unexplained}"
    for action in parser._actions:
        assert all(option in text for option in action.option_strings), action.option_strings
