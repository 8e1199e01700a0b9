"""The examples users run first: the `make demo` script and the notebook, on the embedded default."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_demo_script_runs_and_matches_dask(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "notebooks" / "demo.py")], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("match=True") == 2, out.stdout
    assert "embedded local OpenWhisk-compatible server" in out.stderr


HARNESS = """
import ast, json, re, sys
import dask

# Runs a notebook's code cells in order and prints what Jupyter would show: each cell's output
# and the value of its last expression. With "sync", Dask's own scheduler replaces the one the
# notebook chose, after every cell, so both runs print the same things if whisk_get is right.
notebook, scheduler = sys.argv[1], sys.argv[2]
namespace = {"__name__": "__main__"}
for number, cell in enumerate(json.load(open(notebook))["cells"]):
    if cell["cell_type"] != "code":
        continue
    print(f"### cell {number}")
    source = "".join(cell["source"])
    tree = ast.parse(source)
    quiet = source.rstrip().splitlines()[-1].split("#")[0].rstrip().endswith(";")  # as Jupyter
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, f"cell {number}", "exec"), namespace)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), f"cell {number}", "eval"), namespace)
        if value is not None and not quiet:
            print(repr(value))
    if scheduler == "sync":
        dask.config.set(scheduler="sync")
"""


def _shown(notebook: Path, scheduler: str, tmp_path: Path) -> dict[str, list[str]]:
    """Each cell's shown lines, without timings and progress bars (which differ per run)."""
    harness = tmp_path / "harness.py"
    harness.write_text(HARNESS)
    out = subprocess.run([sys.executable, str(harness), str(notebook), scheduler], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    cells: dict[str, list[str]] = {}
    for line in out.stdout.replace("\r", "\n").splitlines():
        if line.startswith("### cell "):
            shown = cells.setdefault(line, [])
        elif line.strip() and "Completed" not in line:
            shown.append(re.sub(r"\d+\.\d+ s\b", "<time>", line))
    return cells


def test_the_tour_shows_what_dask_shows(tmp_path):
    """Every cell runs in order on OpenWhisk and shows what Dask's sync scheduler shows; only
    OpenWhisk adds the remote traceback to a user's exception."""
    notebook = ROOT / "notebooks" / "tour.ipynb"
    on_whisk, on_sync = _shown(notebook, "whisk", tmp_path), _shown(notebook, "sync", tmp_path)
    assert on_whisk.keys() == on_sync.keys() and sum(map(len, on_whisk.values())) >= 3, on_whisk
    for cell, lines in on_whisk.items():
        remote = [i for i, line in enumerate(lines) if "Remote traceback" in line]
        if remote:
            assert any(line.lstrip().startswith("File ") for line in lines[remote[0]:]), lines
            lines = lines[:remote[0]]
        assert lines == on_sync[cell], cell


#: the story notebooks, and a line each must print when run again
STORIES = {
    "array-numerics.ipynb": "same answer as Dask's threads: True",
    "bag-text-analytics.ipynb": "same as Dask's sync scheduler: True",
    "scaling-and-cost.ipynb": "n= 4000: threads",
}


def _texts(book) -> list[str]:
    """Every code cell's shown text (streams and plain-text results), in order."""
    shown = []
    for cell in book.cells:
        if cell.cell_type == "code":
            shown.append("".join(o.get("text", "") or o.get("data", {}).get("text/plain", "")
                                 for o in cell.outputs))
    return shown


def _output_kinds(book) -> list[list[tuple]]:
    """Each code cell's kinds of output; prints that arrived together or apart count once."""
    kinds = []
    for cell in (c for c in book.cells if c.cell_type == "code"):
        shown = [(o.output_type, o.get("name") or tuple(sorted(o.get("data", {})))) for o in cell.outputs]
        kinds.append([k for i, k in enumerate(shown) if i == 0 or shown[i - 1] != k])
    return kinds


@pytest.mark.parametrize("name", sorted(STORIES))
def test_a_story_notebook_runs_in_jupyter_and_its_outputs_are_stored(name, tmp_path):
    """Executed afresh in a Jupyter kernel on the embedded default: no cell fails, the answer
    check holds and a figure is drawn. The committed copy carries outputs of the same shape
    (each code cell's output kinds), so readers on GitHub see what a run shows."""
    import nbformat
    from nbclient import NotebookClient

    stored = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    book = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    NotebookClient(book, timeout=240, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on an error
    assert STORIES[name] in "\n".join(_texts(book))
    kinds = _output_kinds(book)
    assert any("image/png" in data for cell in kinds for _, data in cell), "no figure drawn"
    assert kinds == _output_kinds(stored), "stored outputs out of date: run the notebook again"
