"""The worker action's artifact and its deployment, against the real local server (no mocks).

The full zip is built once per session; its wheels are downloaded from the package index once
and cached in ~/.cache/dask-whisk (later builds ask no index at all).
"""
from __future__ import annotations

import asyncio
import base64
import importlib.resources
import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import dask_whisk
from _server_fixtures import THIS_PYTHON
from dask_whisk import artifact, deploy
from dask_whisk.cli import main as cli_main
from dask_whisk.config import WhiskConfig
from dask_whisk.openwhisk import OpenWhiskClient, WhiskNotFound
from dask_whisk.server import ServerSettings, start_server_process

PYTHON = artifact.host_python()
CP = "cp" + PYTHON.replace(".", "")
SITE = f"virtualenv/lib/python{PYTHON}/site-packages/"


def arun(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="session")
def full_zip(tmp_path_factory) -> tuple[Path, bytes]:
    """The full action zip (virtualenv included), built once for the session."""
    path = tmp_path_factory.mktemp("artifact") / "worker.zip"
    return path, artifact.build_action_zip(str(path), with_dependencies=True)


@pytest.fixture(scope="session")
def full_zip_dir(full_zip, tmp_path_factory) -> Path:
    """The full zip unpacked, as the runtime's /init does."""
    target = tmp_path_factory.mktemp("unpacked")
    with zipfile.ZipFile(full_zip[0]) as archive:
        archive.extractall(target)
    return target


@pytest.fixture(scope="module")
def server():
    """A local server with OpenWhisk's stock limits (60/min, 30 concurrent, 128..512 MB), which
    knows this Python environment as an image (as the embedded default does)."""
    with start_server_process(ServerSettings(images=THIS_PYTHON)) as handle:
        yield handle


def client_for(handle) -> OpenWhiskClient:
    return OpenWhiskClient(WhiskConfig(apihost=handle.url, auth=handle.auth))


def names_of(code: bytes) -> list[str]:
    return zipfile.ZipFile(io.BytesIO(code)).namelist()


# -- the artifact ---------------------------------------------------------------------------

def test_small_zip_holds_the_entry_point_and_only_the_worker_modules():
    code = artifact.build_action_zip(with_dependencies=False)
    assert set(names_of(code)) == {
        "__main__.py", "dask_whisk/__init__.py", "dask_whisk/config.py", "dask_whisk/protocol.py",
        "dask_whisk/store/__init__.py", "dask_whisk/store/local.py", "dask_whisk/store/swift.py",
        "dask_whisk/store/swift_settings.py", "dask_whisk/store/swift_worker.py",
        "dask_whisk/store/swift_grants.py", "dask_whisk/store/swiftfs.py",
    }
    entry = (importlib.resources.files("worker_action") / "__main__.py").read_bytes()
    assert zipfile.ZipFile(io.BytesIO(code)).read("__main__.py") == entry
    assert artifact.build_action_zip(with_dependencies=False) == code, "the same inputs give the same bytes"


def test_a_module_level_import_the_worker_does_not_ship_is_refused(monkeypatch):
    # the client-side REST client imports aiohttp: pulling it into the worker must be an error
    roots = artifact.worker_roots()
    monkeypatch.setattr(artifact, "worker_roots", lambda: [*roots, "dask_whisk.openwhisk"])
    with pytest.raises(artifact.DeployError, match=r"dask_whisk/openwhisk.py imports 'aiohttp'.*inside the function"):
        artifact.worker_files()


def test_imports_inside_functions_and_type_checking_blocks_are_not_followed():
    source = (
        "from typing import TYPE_CHECKING\n"
        "import json\n"
        "from . import protocol\n"
        "if TYPE_CHECKING:\n    import aiohttp\n"
        "try:\n    import yaml\nexcept ImportError:\n    yaml = None\n"
        "def later():\n    from .scheduler import get\n"
        "class C:\n    import toolz\n"
    )
    found = artifact._imports_at_load(source, "dask_whisk", is_package=True)
    assert found == {"typing", "json", "dask_whisk", "dask_whisk.protocol", "yaml", "toolz"}


def test_full_zip_is_under_the_code_limit_with_base64_counted(full_zip):
    _, code = full_zip
    encoded = len(base64.b64encode(code))
    assert artifact.encoded_size(code) == encoded
    print(f"full zip: {len(code):,} bytes, {encoded:,} base64 (limit {artifact.MAX_CODE_BYTES:,})")
    assert encoded < artifact.MAX_CODE_BYTES


def test_full_zip_layout_and_trimming(full_zip):
    names = names_of(full_zip[1])
    assert "__main__.py" in names and "dask_whisk/protocol.py" in names
    assert "virtualenv/bin/activate_this.py" in names
    installed = {n[len(SITE):].split("/")[0] for n in names if n.startswith(SITE)}
    for package in ("dask", "numpy", "cloudpickle", "toolz", "yaml", "tlz"):
        assert package in installed
    for unwanted in ("aiohttp", "swiftclient", "pytest"):
        assert unwanted not in installed
    assert not any("/__pycache__/" in n or "/tests/" in n or n.endswith((".pyi", ".pyc")) for n in names)
    assert not any(n.startswith(SITE + "numpy/_core/include/") for n in names)
    assert all(n.startswith(("virtualenv/", "dask_whisk/")) or n == "__main__.py" for n in names)


def test_full_zip_wheels_are_manylinux_x86_64_for_the_runtime_python(full_zip):
    archive = zipfile.ZipFile(io.BytesIO(full_zip[1]))
    wheel_files = [n for n in archive.namelist() if re.fullmatch(re.escape(SITE) + r"[^/]+\.dist-info/WHEEL", n)]
    assert len(wheel_files) >= 8, wheel_files  # dask, numpy, cloudpickle, toolz, pyyaml and dask's deps
    compiled = 0
    for name in wheel_files:
        tags = [line.split(":", 1)[1].strip() for line in archive.read(name).decode().splitlines()
                if line.startswith("Tag:")]
        assert tags, name
        platforms = {tag.split("-")[2] for tag in tags}
        assert all(p == "any" or re.fullmatch(r"manylinux(1|2010|2014|_2_\d+)_x86_64", p)
                   for p in platforms), (name, tags)
        usable = [tag for tag in tags if tag.split("-")[:2] in (["py3", "none"], ["py2.py3", "none"],
                                                                 [CP, CP], [CP, "abi3"])]
        assert usable, f"{name}: no tag {tags} loads on CPython {PYTHON}"
        compiled += "any" not in platforms
    assert compiled >= 2  # numpy and pyyaml at least


def test_full_zip_runs_the_worker_with_only_its_virtualenv(full_zip_dir):
    # What the Python runtime does at /init: activate virtualenv/, import main from __main__.py
    # (renamed main__), then run it; -S keeps this machine's site-packages out of sight.
    script = (
        "import json, os, sys\n"
        "f = os.path.abspath('virtualenv/bin/activate_this.py')\n"
        "exec(compile(open(f).read(), f, 'exec'), dict(__file__=f))\n"
        "sys.path.append(os.getcwd())\n"
        "os.rename('__main__.py', 'main__.py')\n"
        "from main__ import main\n"
        "import numpy, dask, dask.array as da, dask.bag as db\n"
        "total = float(da.ones((40, 40), chunks=10).dot(da.ones((40, 40), chunks=10)).sum().compute(scheduler='sync'))\n"
        "words = db.from_sequence(['a b', 'b c'], npartitions=2).str.split().flatten().frequencies().compute(scheduler='sync')\n"
        "print(json.dumps({'pong': main({'ping': True}), 'numpy': numpy.__file__, 'dask': dask.__file__,\n"
        "                  'total': total, 'words': sorted(words)}))\n"
    )
    done = subprocess.run([sys.executable, "-S", "-c", script], cwd=full_zip_dir, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["pong"]["pong"] is True and answer["pong"]["dask_whisk"] == dask_whisk.__version__
    assert answer["total"] == 40.0 ** 3 and answer["words"] == [["a", 1], ["b", 2], ["c", 1]]
    for module in ("numpy", "dask"):
        assert answer[module].startswith(str(full_zip_dir / SITE)), answer[module]


def test_full_zip_computes_on_the_local_servers_stock_kind(full_zip, server, local_store_root):
    """The path a real deployment takes: the full zip on ``python:3.x``, whose containers see
    only the standard library and the stock packages (tests/test_server_images.py), so
    everything the worker imports comes from the zip's own virtualenv."""
    import dask
    import dask.array as da
    import dask.bag as db

    from dask_whisk import whisk_get

    async def put():
        async with client_for(server) as client:
            return await deploy.deploy_worker_action(client, "full-worker", log=lambda _: None,
                                                     cache_dir=None)
    action = arun(put())
    assert action["exec"]["kind"] == f"python:{PYTHON}"
    x = da.arange(400, chunks=100).reshape(20, 20)
    words = db.from_sequence(["a b", "b c", "c a b"], npartitions=3).str.split().flatten()
    with dask.config.set({"whisk.apihost": server.url, "whisk.auth": server.auth,
                          "whisk.action": "full-worker"}):
        total, counts = dask.compute((x @ x.T).sum(), words.frequencies(), scheduler=whisk_get)
    assert total == (x @ x.T).sum().compute(scheduler="sync")
    assert sorted(counts) == [("a", 2), ("b", 3), ("c", 2)]


def test_wheels_come_from_the_cache_on_a_second_build(full_zip, tmp_path, monkeypatch):
    # The session fixture filled ~/.cache/dask-whisk: a manifest now names every wheel, so a
    # second build asks no index. Proved by pointing pip at an index that refuses connections
    # (and at no config file, no find-links): any question to it would fail the build.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{port}/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "2")
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)
    requirements = artifact.worker_requirements(PYTHON)
    wheels = artifact.download_wheels(requirements, PYTHON, artifact.default_cache_dir())
    assert wheels and all(p.is_file() for p in wheels)
    manifests = list(wheels[0].parent.glob("manifest-*.json"))
    assert manifests and any(sorted(p.name for p in wheels) == json.loads(m.read_text()) for m in manifests)


def test_requirements_pin_this_clients_versions():
    import cloudpickle
    import dask
    import numpy

    pins = dict(line.split("==") for line in artifact.worker_requirements(PYTHON))
    assert pins["dask"] == dask.__version__
    assert pins["cloudpickle"] == cloudpickle.__version__
    assert pins["numpy"] == numpy.__version__
    assert all("==" not in line for line in artifact.worker_requirements("3.99"))


def test_dockerfile_pins_the_runtime_release():
    text = (Path(deploy.__file__).parent.parent / "worker_action" / "Dockerfile").read_text()
    assert f"ARG RUNTIME_TAG={deploy.RUNTIME_IMAGE_TAG}" in text
    assert "FROM openwhisk/action-python-v${PYTHON}:${RUNTIME_TAG}" in text


# -- the command line -------------------------------------------------------------------------

def test_zip_only_writes_the_artifact_and_prints_its_sizes(tmp_path, capsys, full_zip):
    target = tmp_path / "worker.zip"
    assert cli_main(["deploy", "--zip-only", str(target)]) == 0
    out = capsys.readouterr().out
    code = target.read_bytes()
    assert code == full_zip[1]
    assert f"{len(code):,} bytes" in out and f"{artifact.encoded_size(code):,} in base64" in out


def test_zip_only_small_through_the_console_script(tmp_path):
    target = tmp_path / "small.zip"
    done = subprocess.run([str(Path(sys.executable).parent / "dask-whisk"), "deploy", "--zip-only",
                           str(target), "--without-dependencies"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "virtualenv/bin/activate_this.py" not in names_of(target.read_bytes())
    assert "in base64" in done.stdout


def test_bad_python_option_is_a_clear_error(capsys):
    assert cli_main(["deploy", "--zip-only", "/nonexistent/x.zip", "--python", "3"]) == 1
    assert "--python must look like '3.11'" in capsys.readouterr().err


def test_print_requirements(capsys):
    assert cli_main(["deploy", "--print-requirements"]) == 0
    assert capsys.readouterr().out.split() == artifact.worker_requirements(PYTHON)


# -- deployment into the local server ---------------------------------------------------------

def annotations_of(action: dict) -> dict:
    return {a["key"]: a["value"] for a in action["annotations"]}


def test_ensure_deploys_a_missing_action_once(server):
    messages: list[str] = []

    async def scenario():
        async with client_for(server) as client:
            first = await deploy.ensure_worker_action(client, "ensure-once", local=True, log=messages.append)
            second = await deploy.ensure_worker_action(client, "ensure-once", local=True, log=messages.append)
            pong = await client.run("ensure-once", {"ping": True})
            return first, second, pong

    first, second, pong = arun(scenario())
    assert len(messages) == 1 and messages[0].startswith(f"deployed the worker action ensure-once to {server.url}")
    notes = annotations_of(first)
    assert notes["dask-whisk-version"] == dask_whisk.__version__ and notes["dask-whisk-python"] == PYTHON
    assert notes["provide-api-key"] is False
    assert first["exec"]["kind"] == "blackbox" and first["exec"]["image"] == deploy.local_image()
    assert first["limits"]["memory"] == deploy.DEFAULT_MEMORY_MB
    assert first["limits"]["timeout"] == deploy.DEFAULT_TIMEOUT_MS
    assert second["version"] == first["version"], "an up-to-date action is not redeployed"
    result = pong["response"]["result"]
    assert result["pong"] is True and result["dask_whisk"] == dask_whisk.__version__


async def _put_foreign(client, name: str, version: str, python: str) -> None:
    small = base64.b64encode(artifact.build_action_zip(with_dependencies=False)).decode()
    await client.put_action(name, code=small, kind=f"python:{PYTHON}", binary=True, annotations=[
        {"key": "dask-whisk-version", "value": version}, {"key": "dask-whisk-python", "value": python}])


def test_a_mismatched_action_is_refused_with_the_fix(server):
    async def scenario():
        async with client_for(server) as client:
            await _put_foreign(client, "old-worker", "0.0.1", "3.9")
            with pytest.raises(deploy.WorkerActionMismatch) as caught:
                await deploy.ensure_worker_action(client, "old-worker", local=False)
            return str(caught.value)

    message = arun(scenario())
    assert "dask-whisk 0.0.1" in message and f"this client is {dask_whisk.__version__}" in message
    assert f"Python 3.9, this client runs Python {PYTHON}" in message
    assert f"`dask-whisk deploy --name old-worker --python {PYTHON}`" in message


def test_an_action_not_made_by_dask_whisk_is_refused(server):
    async def scenario():
        async with client_for(server) as client:
            await client.put_action("someone-elses", code="def main(a):\n    return a\n",
                                    kind=f"python:{PYTHON}")
            with pytest.raises(deploy.WorkerActionMismatch, match="no dask-whisk-version annotation"):
                await deploy.ensure_worker_action(client, "someone-elses", local=False)

    arun(scenario())


def test_the_local_server_gets_an_outdated_action_redeployed(server):
    async def scenario():
        async with client_for(server) as client:
            await _put_foreign(client, "stale-worker", "0.0.1", PYTHON)
            before = await client.get_action("stale-worker", code=False)
            after = await deploy.ensure_worker_action(client, "stale-worker", local=True)
            return before, after

    before, after = arun(scenario())
    assert after["version"] != before["version"]
    assert annotations_of(after)["dask-whisk-version"] == dask_whisk.__version__


def test_limits_outside_the_namespace_range_are_refused(server):
    async def scenario():
        async with client_for(server) as client:
            with pytest.raises(artifact.DeployError, match=r"memory 1024 MB is outside .* 128\.\.512 MB.*--memory"):
                await deploy.deploy_worker_action(client, "too-big", local=True, memory_mb=1024)

    arun(scenario())


def test_a_missing_runtime_kind_offers_the_blackbox_image_before_building(server, tmp_path):
    # The deployment's GET / lists its kinds: the full zip (a pip download for Python 3.99,
    # which would fail differently) is never built, and nothing reaches the wheel cache.
    cache = tmp_path / "wheel-cache"

    async def scenario():
        async with client_for(server) as client:
            with pytest.raises(artifact.DeployError) as caught:
                await deploy.deploy_worker_action(client, "old-python", python="3.99",
                                                  cache_dir=cache)
            with pytest.raises(WhiskNotFound):
                await client.get_action("old-python")
            return str(caught.value)

    message = arun(scenario())
    assert "does not offer the runtime kind 'python:3.99' (its Python kinds: " in message
    assert f"python:{PYTHON}" in message.split("its Python kinds: ")[1].split(")")[0]
    assert "worker_action/Dockerfile" in message and "--build-arg PYTHON=3.99" in message
    assert "dask-whisk deploy --image ORG/dask-whisk-worker:TAG --python 3.99" in message
    assert not cache.exists()


def test_offered_kinds_reads_the_runtimes_manifest():
    info = {"runtimes": {"nodejs": [{"kind": "nodejs:20"}],
                         "python": [{"kind": "python:3.11", "default": True}, {"kind": "python:3.10"}]}}
    assert deploy.offered_kinds(info) == ["nodejs:20", "python:3.10", "python:3.11"]
    assert deploy.offered_kinds({"description": "a gateway"}) is None
    assert deploy.offered_kinds({"runtimes": {}}) is None


def test_full_zip_deploys_and_runs_on_the_local_server(server, full_zip):
    # The local server activates virtualenv/ as the Python runtime does: the same artifact a
    # real deployment gets, 20+ MB of base64 in one PUT.
    async def scenario():
        async with client_for(server) as client:
            action = await deploy.deploy_worker_action(client, "full-worker", local=False,
                                                       provide_api_key=True)
            record = await client.run("full-worker", {"ping": True})
            return action, record

    action, record = arun(scenario())
    assert annotations_of(action)["provide-api-key"] is True
    assert record["response"]["success"], record["response"]
    assert record["response"]["result"]["pong"] is True


def test_deploy_command_against_the_local_server(server, capsys):
    code = cli_main(["deploy", "--apihost", server.url, "--auth", server.auth, "--name", "cli-worker",
                     "--without-dependencies", "--memory", "256", "--timeout", "60000"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"deployed the worker action cli-worker to {server.url}" in out

    async def fetch():
        async with client_for(server) as client:
            return await client.get_action("cli-worker", code=False)

    action = arun(fetch())
    assert action["limits"]["memory"] == 256 and action["limits"]["timeout"] == 60000


def test_deploy_command_reports_an_unreachable_host(capsys):
    code = cli_main(["deploy", "--apihost", "http://127.0.0.1:9", "--auth", server_auth(),
                     "--without-dependencies"])
    err = capsys.readouterr().err
    assert code == 1 and "Cannot connect to OpenWhisk at http://127.0.0.1:9" in err
    assert server_auth().split(":")[1] not in err


def server_auth() -> str:
    return ServerSettings().auth



def test_a_blackbox_image_is_sent_as_kind_blackbox(server, capsys):
    # The small zip as code on the named image; the server accepts it as OpenWhisk does, and
    # (not knowing the image) fails its activations as an image that cannot be pulled.
    code = cli_main(["deploy", "--apihost", server.url, "--auth", server.auth, "--name", "bb-worker",
                     "--image", "example/dask-whisk-worker:1.0"])
    out = capsys.readouterr().out
    assert code == 0 and "(blackbox, image example/dask-whisk-worker:1.0, " in out

    async def fetch_and_run():
        async with OpenWhiskClient(WhiskConfig(apihost=server.url, auth=server.auth)) as client:
            action = await client.get_action("bb-worker", code=True)
            return action, await client.run("bb-worker", {"ping": True})
    action, record = arun(fetch_and_run())
    assert action["exec"]["kind"] == "blackbox" and action["exec"]["image"] == "example/dask-whisk-worker:1.0"
    assert zipfile.ZipFile(io.BytesIO(base64.b64decode(action["exec"]["code"]))).namelist()
    assert record["response"]["result"] == {
        "error": "Failed to pull container image 'example/dask-whisk-worker:1.0'."}
