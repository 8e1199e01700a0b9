"""What a container's Python sees: OpenWhisk's stock ``python:3.x`` images, and blackbox images.

A stock image has the standard library and a few packages (``STOCK_PACKAGES``) and nothing else,
so an action that works here needs what it needs on a real deployment: its own zip or
``virtualenv/``. Each is stood in for by a virtual environment built once per server and
interpreter, whose site-packages links those packages (and what they require) from the
interpreter's own environment where they are installed, never anything else of it. A blackbox
image is a Python environment the server was told about (``--image NAME=PATH``), seen whole.
"""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

#: what OpenWhisk's python:3.x images install (core/requirements_common.txt of
#: apache/openwhisk-runtime-python), by distribution name
STOCK_PACKAGES = ("requests", "simplejson", "beautifulsoup4", "lxml", "scrapy", "twisted",
                  "kafka-python", "python-dateutil", "httplib2", "virtualenv")
#: never linked into a stock image, even as a requirement: what actions must bring themselves
NEVER_STOCK = ("dask", "numpy", "cloudpickle", "pandas", "toolz", "swiftclient",
               "python-swiftclient", "dask-whisk")
IMAGE_PULL_ERROR = "Failed to pull container image '{}'."

#: run by the image's base interpreter: its base executable, version and the files of the
#: stock distributions (and their requirements) it has installed, as JSON on stdout
_PROBE = r"""
import importlib.metadata as md, json, re, sys
def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()
todo, seen, links = [norm(n) for n in STOCK], set(), set()
while todo:
    name = todo.pop()
    if name in seen or name in NEVER:
        continue
    seen.add(name)
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        continue
    todo += [norm(re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0]) for r in dist.requires or []
             if "extra ==" not in r]
    for f in dist.files or []:
        top = f.parts[0]
        if top not in ("..", "__pycache__") and not top.endswith(".data"):
            links.add(str(dist.locate_file(top)))
print(json.dumps({"base": getattr(sys, "_base_executable", sys.executable),
                  "version": "%d.%d" % sys.version_info[:2], "links": sorted(links)}))
"""


class StockImages:
    """Stock-image environments under ``folder``, built on first use, one per interpreter."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._built: dict[str, asyncio.Task] = {}

    async def python(self, interpreter: str) -> str:
        """The interpreter of the stock image for ``interpreter`` (built once, concurrently safe)."""
        if interpreter not in self._built:
            self._built[interpreter] = asyncio.create_task(self._build(interpreter))
        return await asyncio.shield(self._built[interpreter])

    async def _build(self, interpreter: str) -> str:
        probe = _PROBE.replace("STOCK", repr(STOCK_PACKAGES)).replace("NEVER", repr(set(NEVER_STOCK)))
        process = await asyncio.create_subprocess_exec(
            interpreter, "-I", "-c", probe, stdout=asyncio.subprocess.PIPE)
        out, _ = await process.communicate()
        if process.returncode != 0:
            raise OSError(f"cannot inspect the interpreter {interpreter}")
        found = json.loads(out)
        root = self.folder / f"python{found['version']}-{len(self._built)}"
        await asyncio.get_running_loop().run_in_executor(None, _lay_out, root, found)
        return str(root / "bin" / "python")


def _lay_out(root: Path, found: dict) -> None:
    """A virtual environment at ``root`` on ``found['base']`` whose site-packages links only
    ``found['links']``."""
    site = root / "lib" / f"python{found['version']}" / "site-packages"
    site.mkdir(parents=True)
    (root / "bin").mkdir()
    os.symlink(found["base"], root / "bin" / "python")
    (root / "pyvenv.cfg").write_text(
        f"home = {os.path.dirname(found['base'])}\ninclude-system-site-packages = false\n"
        f"version = {found['version']}\n")
    for path in found["links"]:
        if os.path.exists(path):
            os.symlink(path, site / os.path.basename(path))
