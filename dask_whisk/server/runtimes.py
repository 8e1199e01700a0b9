"""Which action kinds the local server runs, and with which Python interpreter.

The default kind is ``python:3.<host minor>``, on the server's own interpreter; another
``python:3.X`` kind is offered only when a working ``python3.X`` is found on PATH. Either runs as
OpenWhisk's stock image does (``images.py``): the standard library and the stock packages only.
``python:3`` and ``python:default`` name the default kind. ``blackbox`` actions run on the images
the server was given (``--image``); anything else (nodejs, sequences) gets a 400 at PUT.
"""
from __future__ import annotations

import asyncio
import shutil
import sys
from dataclasses import dataclass

#: minor versions of Python 3 probed on PATH besides the host's
PROBED_MINORS = range(8, 15)
PROBE_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Runtimes:
    """Kinds this server can run: kind -> interpreter path, and the default kind."""

    interpreters: dict[str, str]
    default_kind: str

    def resolve(self, kind: str) -> str:
        """The canonical kind for ``kind`` (aliases resolved); ValueError in OpenWhisk's words.

        OpenWhisk answers an unknown kind with the kinds it offers; here a ``python:3.X`` kind is
        offered only when ``python3.X`` runs on the server's PATH.
        """
        if kind in ("python:3", "python:default"):
            return self.default_kind
        if kind in self.interpreters:
            return kind
        valid = "', '".join(sorted(self.interpreters))
        raise ValueError(f"The specified runtime '{kind}' is not supported by this platform. "
                         f"Valid values are: '{valid}'.")

    def manifest(self) -> dict:
        """The ``runtimes`` section of ``GET /``, shaped like OpenWhisk's."""
        return {
            "python": [
                {"kind": kind, "default": kind == self.default_kind, "deprecated": False,
                 "attached": False, "requireMain": False,
                 "image": f"local process ({path})"}
                for kind, path in sorted(self.interpreters.items())
            ]
        }


async def _probe(minor: int) -> tuple[str, str] | None:
    """``(kind, interpreter)`` when ``python3.<minor>`` on PATH runs and has that version."""
    path = shutil.which(f"python3.{minor}")
    if path is None:
        return None
    try:
        process = await asyncio.create_subprocess_exec(
            path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(process.communicate(), PROBE_TIMEOUT_SECONDS)
    except (OSError, asyncio.TimeoutError):
        return None
    if process.returncode != 0 or out.decode().strip() != f"3.{minor}":
        return None
    return f"python:3.{minor}", path


async def discover() -> Runtimes:
    """Find the kinds this machine can run (the host's interpreter, plus any on PATH)."""
    host_minor = sys.version_info.minor
    default_kind = f"python:3.{host_minor}"
    found = await asyncio.gather(*(_probe(m) for m in PROBED_MINORS if m != host_minor))
    interpreters = {kind: path for kind, path in filter(None, found)}
    interpreters[default_kind] = sys.executable
    return Runtimes(interpreters, default_kind)
