"""Shared fixtures: an isolated configuration, the embedded backend, and a real Swift."""
import os
from pathlib import Path

import dask
import pytest

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


@pytest.fixture(scope="session")
def local_store_root(tmp_path_factory) -> Path:
    """The local store's root for the whole session (checked empty after each job)."""
    root = tmp_path_factory.mktemp("store")
    with dask.config.set({"whisk.local.root": str(root)}):
        yield root
