"""The documentation that lives in the code: a docstring on everything public, a complete
``--help`` for the ``dask-whisk`` command and each of its subcommands, and an architecture
picture drawn from the imports the modules have now."""
from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import io
import json
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


def architecture():
    """``docs/architecture.py``, the script that draws the picture, as a module."""
    spec = importlib.util.spec_from_file_location("architecture", ROOT / "docs" / "architecture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_architecture_picture_shows_the_imports_the_code_has_now():
    arch = architecture()
    stored, current = json.loads(arch.EDGES.read_text()), arch.graph()
    drawn, now = ({tuple(e) for e in graph["edges"]} for graph in (stored, current))
    moved = {layer: members for layer, members in current["layers"].items()
             if stored["layers"].get(layer) != members}
    assert stored == current, (f"docs/architecture.svg is out of date (run `make architecture`): "
                               f"new {sorted(now - drawn)}, gone {sorted(drawn - now)}, layers now {moved}")
    assert f"import graph {arch.digest(stored)}," in arch.PICTURE.read_text(), \
        "docs/architecture.svg was not drawn from docs/architecture.json: run `make architecture`"
    for edge in (("dask_whisk.scheduler", "dask_whisk.plan", "import"),
                 ("worker_action.__main__", "dask_whisk.protocol", "import"),
                 ("dask_whisk.diagnostics", "dask_whisk.timeline", "lazy"),
                 ("dask_whisk.cli", "dask_whisk.diagnostics", "by name"),
                 ("dask_whisk.store", "dask_whisk.store.local", "by name")):
        assert edge in now, edge


def test_the_import_graph_reads_every_way_a_module_imports_another():
    source = """
import importlib
import pkg.c
from .. import a
from . import b
from ..c import helper
BACKENDS = {"one": "pkg.e"}

def load(name):
    from ..a import thing
    importlib.import_module(BACKENDS[name])
    return "pkg.f"  # only a string
"""
    known = {"pkg", "pkg.a", "pkg.c", "pkg.e", "pkg.f", "pkg.sub", "pkg.sub.b", "pkg.sub.d"}
    assert architecture().imports("pkg.sub.d", source, known) == {
        ("pkg.c", "import"), ("pkg.a", "import"), ("pkg.sub.b", "import"), ("pkg.a", "lazy"),
        ("pkg.e", "by name")}


def test_a_module_left_out_of_the_layers_and_a_member_that_is_gone_are_named(monkeypatch):
    arch = architecture()
    monkeypatch.delitem(arch.LAYERS, "planning")
    with pytest.raises(ValueError, match=r"not placed \[[^]]*'dask_whisk.fuse', 'dask_whisk.plan'"):
        arch.graph()
    monkeypatch.setitem(arch.LAYERS, "planning", ("", (0, 0, 1, 1), ("dask_whisk.plan", "dask_whisk.gone.*")))
    with pytest.raises(ValueError, match=r"'dask_whisk.fuse'.*no longer there \['dask_whisk.gone.\*'\]"):
        arch.graph()
