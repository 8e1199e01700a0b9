"""Draw ``docs/architecture.svg`` from dask-whisk's real modules.

Every module under ``dask_whisk/`` and ``worker_action/`` is placed in its layer (``LAYERS``),
and an arrow goes from one layer to another wherever a module of the first imports one of the
second: the imports are parsed from the sources (never run), including those inside functions
and the modules named in strings that ``importlib.import_module`` loads (the CLI's subcommands,
the store's backends). ``docs/architecture.json`` keeps the layers and the module-level edges
the picture was drawn from; ``tests/test_docs.py`` computes them again from the code and fails
when they differ, so the picture cannot drift from the code.

    .venv/bin/python docs/architecture.py      # or: make architecture
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dask_whisk", "worker_action")
PICTURE = ROOT / "docs" / "architecture.svg"
EDGES = ROOT / "docs" / "architecture.json"

#: how a module reaches another: at import time, inside a function (when first used), or by a
#: name in a string that importlib loads; a layer's arrow is drawn in its strongest kind's style
KINDS = ("import", "lazy", "by name")

#: layer -> (what it does, its box (x, y, width, height) on a 100 x 64 canvas, its modules)
LAYERS: dict[str, tuple[str, tuple[float, float, float, float], tuple[str, ...]]] = {
    "CLI": ("the dask-whisk command; end-to-end checks", (2, 56, 64, 7),
            ("dask_whisk.cli", "dask_whisk.doctor", "dask_whisk.capacity")),
    "OpenWhisk client": ("REST client; builds and deploys the action", (2, 36, 18, 16),
                         ("dask_whisk.openwhisk", "dask_whisk.deploy", "dask_whisk.artifact",
                          "dask_whisk.runtime")),
    "configuration": ("whisk.* settings and their sources", (24, 45, 24, 7), ("dask_whisk.config",)),
    "API": ("what you import: whisk_get", (54, 41, 12, 11), ("dask_whisk",)),
    "planning": ("graph -> work units; pure", (2, 20, 14, 13), ("dask_whisk.plan", "dask_whisk.fuse")),
    "execution": ("dispatch, batching, backups, results", (24, 20, 22, 18),
                  ("dask_whisk.scheduler", "dask_whisk.job", "dask_whisk.assemble",
                   "dask_whisk.callback_state", "dask_whisk.backend")),
    "diagnostics": ("job reports, timeline, progress", (51, 25, 15, 10),
                    ("dask_whisk.diagnostics", "dask_whisk.timeline", "dask_whisk.progress")),
    "protocol": ("the wire format of both sides", (51, 11, 15, 10), ("dask_whisk.protocol",)),
    "worker action": ("one activation: fetch, run, store", (73, 11, 21, 11),
                      ("worker_action", "worker_action.__main__")),
    "local server": ("OpenWhisk's REST API and runtime, locally", (75, 33, 23, 30),
                     ("dask_whisk.server.*",)),
    "storage": ("one interface: a directory or Swift, with a client side and an activation side",
                (2, 0, 96, 8),
                ("dask_whisk.store.*",)),
}

#: the part of the canvas that stands for OpenWhisk (or the local server standing in for it)
OPENWHISK_SIDE = (70, 10, 30, 55)
COLOURS = {"import": "#333333", "lazy": "#4c72b0", "by name": "#c44e52"}
STYLES = {"import": "-", "lazy": (0, (4, 2)), "by name": (0, (1, 2))}


def modules() -> dict[str, Path]:
    """Every module of the packages by dotted name (a package by its own name) -> its file."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _nodes(tree: ast.AST, in_function: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    """Every node below ``tree``, and whether it lies inside a function body."""
    for child in ast.iter_child_nodes(tree):
        yield child, in_function
        yield from _nodes(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                   ast.Lambda)))


def imports(name: str, source: str, known: set[str], is_package: bool = False) -> set[tuple[str, str]]:
    """(module imported, kind) for each of the ``known`` modules that module ``name``'s
    ``source`` imports; ``from X import y`` counts as importing ``X.y`` when that is a module."""
    package = name if is_package else name.rpartition(".")[0]
    tree = ast.parse(source)
    nodes = list(_nodes(tree))
    registries = set()  # the strings of module-level assignments, when the module loads by name
    if any(isinstance(n, ast.Attribute) and n.attr == "import_module" for n, _ in nodes):
        registries = {id(n) for statement in tree.body if isinstance(statement, (ast.Assign, ast.AnnAssign))
                      for n in ast.walk(statement) if isinstance(n, ast.Constant)}
    found: set[tuple[str, str]] = set()
    for node, in_function in nodes:
        kind = "lazy" if in_function else "import"
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names]
        elif id(node) in registries and node.value in known:
            targets, kind = [node.value], "by name"
        else:
            continue
        for target in targets:
            while target and target not in known:  # an attribute of a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add((target, kind))
    return found


def graph() -> dict[str, Any]:
    """The layers with their modules and every module-level import edge, as the JSON keeps them.

    A member ``package.*`` of ``LAYERS`` stands for the package and every module below it.
    Raises ValueError naming any module missing from ``LAYERS`` (or listed there but gone)."""
    found = modules()
    layers: dict[str, list[str]] = {}
    gone = []
    for layer, (_, _, members) in LAYERS.items():
        layers[layer] = []
        for member in members:
            package = member.removesuffix(".*")
            matched = [m for m in sorted(found) if m == member
                       or (member.endswith(".*") and (m == package or m.startswith(package + ".")))]
            layers[layer] += matched
            gone += [] if matched else [member]
    placed = [m for members in layers.values() for m in members]
    unplaced = sorted(set(found) - set(placed))
    if unplaced or gone or len(placed) != len(set(placed)):
        raise ValueError(f"put every module in exactly one layer of docs/architecture.py LAYERS: "
                         f"not placed {unplaced}, no longer there {gone}")
    strongest: dict[tuple[str, str], str] = {}
    for source, path in found.items():
        for target, kind in imports(source, path.read_text(), set(found), path.name == "__init__.py"):
            strongest[source, target] = min(strongest.get((source, target), kind), kind, key=KINDS.index)
    edges = sorted([source, target, kind] for (source, target), kind in strongest.items())
    return {"layers": layers, "edges": edges}


def digest(described: dict[str, Any]) -> str:
    """A short hash of a graph, written into the picture so a test can match it to its JSON."""
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def layer_edges(described: dict[str, Any]) -> dict[tuple[str, str], tuple[int, str]]:
    """(importing layer, imported layer) -> (module pairs, strongest kind) for edges between layers."""
    layer_of = {m: layer for layer, members in described["layers"].items() for m in members}
    pairs: Counter[tuple[str, str]] = Counter()
    strongest: dict[tuple[str, str], str] = {}
    for source, target, kind in described["edges"]:
        key = (layer_of[source], layer_of[target])
        if key[0] != key[1]:
            pairs[key] += 1
            strongest[key] = min(strongest.get(key, kind), kind, key=KINDS.index)
    return {key: (count, strongest[key]) for key, count in pairs.items()}


Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def _crosses(box: Box, x0: float, y0: float, x1: float, y1: float, margin: float = 0.8) -> bool:
    """Whether the axis-parallel segment (x0, y0)-(x1, y1) passes within ``margin`` of ``box``."""
    return (min(x0, x1) < box[2] + margin and max(x0, x1) > box[0] - margin
            and min(y0, y1) < box[3] + margin and max(y0, y1) > box[1] - margin)


def route(a: Box, b: Box, others: list[Box], used: list[Box]) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """End points of a straight vertical or horizontal arrow from box ``a`` to box ``b`` that
    passes no other box and keeps clear of the parallel arrows in ``used`` (it is added there); None
    when the boxes face each other nowhere without something in between."""
    for axis in (0, 1):  # 0: a vertical arrow where the x ranges overlap; 1: horizontal, y ranges
        lo, hi = max(a[axis], b[axis]) + 0.8, min(a[axis + 2], b[axis + 2]) - 0.8
        if hi < lo:
            continue
        across = 1 - axis
        start, end = (a[across], b[across + 2]) if a[across] >= b[across + 2] else (a[across + 2], b[across])
        middle = (lo + hi) / 2
        for offset in sorted((lo + 0.5 * i for i in range(int((hi - lo) / 0.5) + 1)), key=lambda v: abs(v - middle)):
            ends = [(offset, start), (offset, end)] if axis == 0 else [(start, offset), (end, offset)]
            segment = (*ends[0], *ends[1])
            parallel = [line for line in used if (line[0] == line[2]) == (axis == 0)]
            if not any(_crosses(box, *segment) for box in others) and not any(
                    _crosses(line, *segment, margin=1.0) for line in parallel):
                used.append((min(segment[0], segment[2]), min(segment[1], segment[3]),
                             max(segment[0], segment[2]), max(segment[1], segment[3])))
                return ends[0], ends[1]
    return None


def label(module: str) -> str:
    """A module's name as the picture shows it: ``store.swift``, ``worker_action.__main__``."""
    return module.removeprefix("dask_whisk.") if module != "dask_whisk" else "dask_whisk (package)"


def draw(described: dict[str, Any], path: Path) -> None:
    """Draw the layers, their modules and the arrows between layers into ``path`` (SVG or PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

    plt.rcParams.update({"svg.hashsalt": "dask-whisk", "svg.fonttype": "none", "font.size": 8})
    figure, axes = plt.subplots(figsize=(12, 8))
    axes.set_xlim(0, 100)
    axes.set_ylim(-7, 65)
    axes.axis("off")
    x, y, w, h = OPENWHISK_SIDE
    axes.add_patch(Rectangle((x, y), w, h, facecolor="#fdf3e7", edgecolor="none", zorder=0))
    axes.text(x + w - 1, 64.5, "OpenWhisk side: activations (the local server or a real OpenWhisk)",
              ha="right", va="top", fontsize=7, style="italic", color="#9a6a2f")
    axes.text(1, 64.5, "client side: your Python process", ha="left", va="top", fontsize=7,
              style="italic", color="#555555")
    boxes = {}
    for layer, (role, (x, y, w, h), _) in LAYERS.items():
        remote = x >= OPENWHISK_SIDE[0]
        box = FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.3,rounding_size=1.2", zorder=2,
                             facecolor="#ffffff" if remote else "#eef3fa", edgecolor="#4c72b0")
        axes.add_patch(box)
        boxes[layer] = box
        axes.text(x + 1, y + h - 0.8, layer, ha="left", va="top", fontsize=9, weight="bold", zorder=3)
        role_lines = textwrap.wrap(role, int(w * 2.1))
        axes.text(x + 1, y + h - 3.0, "\n".join(role_lines), ha="left", va="top", fontsize=7,
                  style="italic", zorder=3)
        top = y + h - 3.4 - 2.0 * len(role_lines)
        members = [label(m) for m in described["layers"][layer]]
        columns = 1 + (len(members) - 1) // max(1, int((top - y) // 2.0))
        rows = -(-len(members) // columns)
        for i, member in enumerate(members):
            column, row = divmod(i, rows)
            axes.text(x + 1.5 + column * w / columns, top - 2.0 * row, member, ha="left", va="top",
                      family="monospace", fontsize=7, zorder=3)
    bounds = {layer: (x - 0.3, y - 0.3, x + w + 0.3, y + h + 0.3) for layer, (_, (x, y, w, h), _) in LAYERS.items()}
    used: list[Box] = []
    for (source, target), (count, kind) in sorted(layer_edges(described).items()):
        others = [box for layer, box in bounds.items() if layer not in (source, target)]
        ends = route(bounds[source], bounds[target], others, used)
        style = dict(arrowstyle="-|>", mutation_scale=11, color=COLOURS[kind], linestyle=STYLES[kind],
                     linewidth=min(3.0, 0.8 + 0.4 * count), alpha=0.9, zorder=4)
        if ends:
            axes.add_patch(FancyArrowPatch(*ends, shrinkA=0, shrinkB=0, **style))
        else:  # no clear straight way: from centre to centre, clipped to the boxes
            axes.add_patch(FancyArrowPatch(
                posA=boxes[source].get_bbox().get_points().mean(axis=0),
                posB=boxes[target].get_bbox().get_points().mean(axis=0),
                patchA=boxes[source], patchB=boxes[target], connectionstyle="arc3,rad=0.1", **style))
    legend = {"import": "imports it at import time", "lazy": "imports it inside a function",
              "by name": "loads it by name (importlib)"}
    axes.text(2, -2.6, "an arrow from layer A to layer B: a module of A", va="center", fontsize=7)
    for i, kind in enumerate(KINDS):
        x0 = 30 + 22 * i
        axes.plot([x0, x0 + 4], [-2.6, -2.6], color=COLOURS[kind], linestyle=STYLES[kind], linewidth=1.5)
        axes.text(x0 + 5, -2.6, legend[kind], va="center", fontsize=7)
    axes.text(2, -5.4, "thicker: more pairs of modules; imports within a layer are not drawn "
              "(docs/architecture.json lists every one)", va="center", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=150, metadata={
        "Date": None, "Description": f"import graph {digest(described)}, drawn by docs/architecture.py"})
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    """Write the edge list and draw the picture (both from the modules as they are now)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--picture", type=Path, default=PICTURE,
                        help=f"picture to draw, .svg or .png (default {PICTURE})")
    parser.add_argument("--json", type=Path, default=EDGES, help=f"edge list to write (default {EDGES})")
    args = parser.parse_args(argv)
    described = graph()
    text = json.dumps(described, indent=1)  # then an edge per line, for diffs that read well
    args.json.write_text(re.sub(r'\[\s+("[^"]+"),\s+("[^"]+"),\s+("[^"]+")\s+\]', r"[\1, \2, \3]", text) + "\n")
    draw(described, args.picture)
    print(f"{args.picture}: {len(described['edges'])} imports between {sum(map(len, described['layers'].values()))} "
          f"modules; {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
