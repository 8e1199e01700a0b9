"""The local server driven by the official npm ``openwhisk`` JavaScript client (tests/js/)."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from _server_fixtures import (  # noqa: F401 (fixtures)
    ROOMY, server_factory, server_npm_dir, server_process,
)

JS_DIR = Path(__file__).parent / "js"
KIND = f"python:3.{sys.version_info.minor}"


def write_zip(path: Path, files: dict[str, str | Path]) -> Path:
    """A zip action: ``files`` maps archive names to text or to a file on disk."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            if isinstance(content, Path):
                archive.write(content, name)
            else:
                archive.writestr(name, content)
    return path


def build_virtualenv_zip(tmp_path: Path) -> Path:
    """A zip with a ``virtualenv/`` (made by the virtualenv package) holding a pure-Python module."""
    venv = tmp_path / "virtualenv"
    subprocess.run([sys.executable, "-m", "virtualenv", "--no-seed", "--quiet", str(venv)],
                   check=True, timeout=120)
    site = venv / "lib" / f"python3.{sys.version_info.minor}" / "site-packages"
    (site / "venvonly.py").write_text("VALUE = 'from the virtualenv'\n")
    files: dict[str, str | Path] = {
        "__main__.py": "import venvonly\ndef main(args):\n"
                       "    return {'v': venvonly.VALUE, 'file': venvonly.__file__}\n"}
    for path in venv.rglob("*"):
        if path.is_file() and not path.is_symlink():
            files[str(path.relative_to(tmp_path))] = path
    assert "virtualenv/bin/activate_this.py" in files
    return write_zip(tmp_path / "venv-action.zip", files)


def test_npm_openwhisk_client(server_process, server_factory, server_npm_dir, tmp_path):
    narrow = server_factory(invocations_per_minute=1_000_000, concurrent_invocations=2)
    vendored = write_zip(tmp_path / "vendored.zip", {
        "__main__.py": "import vendored\ndef main(args):\n    return {'v': vendored.VALUE}\n",
        "vendored/__init__.py": "VALUE = 42\n"})
    env = dict(os.environ, NODE_PATH=str(server_npm_dir / "node_modules"),
               OW_APIHOST=server_process.url, OW_API_KEY=server_process.auth,
               NARROW_APIHOST=narrow.url, ZIP_PATH=str(vendored),
               VENV_ZIP_PATH=str(build_virtualenv_zip(tmp_path)), KIND=KIND)
    done = subprocess.run(["node", str(JS_DIR / "openwhisk_client.js")], env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    sections = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("ok ")]
    assert sections == ["crud", "invoke", "notYet", "errors", "limits", "concurrency", "zips"]
