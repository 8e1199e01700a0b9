"""Shared fixtures: an isolated configuration, the embedded backend, and a real Swift."""
import os
import shutil
from pathlib import Path

import dask
import pytest

from _server_fixtures import shared_folder

from _swift_fixtures import *  # noqa: F401,F403  (swift_env: a real Swift for the session)

# Tests must not pick up a developer's own OpenWhisk or Swift settings.
for _name in ("WHISK_APIHOST", "WHISK_AUTH", "WHISK_NAMESPACE", "__OW_API_HOST", "__OW_API_KEY",
              "__OW_NAMESPACE"):
    os.environ.pop(_name, None)


@pytest.fixture(autouse=True, scope="session")
def _isolated_wsk_config(tmp_path_factory):
    """An empty ~/.wskprops stand-in, so only what a test sets is configured."""
    props = tmp_path_factory.mktemp("wsk") / "wskprops"
    props.write_text("")
    os.environ["WSK_CONFIG_FILE"] = str(props)
    yield props


@pytest.fixture
def shared_tmp_path() -> Path:
    """Like ``tmp_path``, but visible inside activations: where tasks leave files for each other."""
    folder = shared_folder()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def local_store_root() -> Path:
    """The local store's root for the whole session (checked empty after each job)."""
    root = shared_folder()
    with dask.config.set({"whisk.local.root": str(root)}):
        yield root
    shutil.rmtree(root, ignore_errors=True)
