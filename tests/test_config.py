"""Where OpenWhisk settings come from: arguments, dask config, environment, ~/.wskprops."""
from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import dask.config
import pytest

from dask_whisk.config import (
    ClientSettings,
    WhiskConfig,
    WhiskConfigError,
    find_whisk_config,
    load_whisk_config,
    SETTINGS,
    read_wskprops,
    reference,
    setting,
)

UUID = "23bc46b1-71f6-4ed5-8c54-816aa4f8c502"
KEY = "123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP"
AUTH = f"{UUID}:{KEY}"
OTHER_AUTH = f"{UUID[:-1]}9:{'k' * 64}"

ENV_NAMES = ["__OW_API_HOST", "__OW_API_KEY", "__OW_NAMESPACE", "WHISK_APIHOST", "WHISK_AUTH",
             "WHISK_NAMESPACE", "WSK_CONFIG_FILE"]


@pytest.fixture(autouse=True)
def clean_sources(monkeypatch, tmp_path):
    """No configuration anywhere: empty HOME, no OpenWhisk variables, dask keys unset."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    with dask.config.set({"whisk.apihost": None, "whisk.auth": None, "whisk.namespace": None,
                          "whisk.insecure": False}):
        yield home


def write_wskprops(path, **props):
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    return path


def test_nothing_configured_means_local_server():
    assert find_whisk_config() is None
    with pytest.raises(WhiskConfigError, match="No OpenWhisk configuration found"):
        load_whisk_config()


def test_explicit_arguments():
    config = load_whisk_config("http://127.0.0.1:3233/", AUTH, "guest")
    assert config == WhiskConfig("http://127.0.0.1:3233", AUTH, "guest")
    assert config.api_url == "http://127.0.0.1:3233/api/v1"
    assert config.namespace_url == "http://127.0.0.1:3233/api/v1/namespaces/guest"
    assert "apihost: arguments" in config.origin


def test_repr_and_str_hide_the_key():
    config = WhiskConfig("http://h:1", AUTH)
    for text in (repr(config), str(config), f"{config}", repr([config])):
        assert KEY not in text
        assert "<hidden>" in text
    assert pickle.loads(pickle.dumps(config)) == config


def test_apihost_normalisation():
    assert WhiskConfig("openwhisk.example.org", AUTH).apihost == "https://openwhisk.example.org"
    assert WhiskConfig(" http://h:3233/api/v1/ ", AUTH).apihost == "http://h:3233"
    assert WhiskConfig("https://h/prefix/", AUTH).api_url == "https://h/prefix/api/v1"
    with pytest.raises(WhiskConfigError, match="not a URL"):
        WhiskConfig("ftp://h", AUTH)
    with pytest.raises(WhiskConfigError, match="carries credentials") as info:
        WhiskConfig(f"https://{UUID}:{KEY}@h", AUTH)
    assert KEY not in str(info.value)


@pytest.mark.parametrize("bad", [KEY, f"{UUID}:{KEY}x", f"not-a-uuid:{KEY}", f"{UUID}:", f"{UUID}:{KEY[:-1]}!"])
def test_malformed_auth_is_rejected_without_echo(bad):
    with pytest.raises(WhiskConfigError, match="malformed") as info:
        find_whisk_config("http://h:1", bad)
    message = str(info.value)
    assert KEY[:20] not in message and bad not in message
    assert "<uuid>:<64-character key>" in message


def test_dask_config_beats_environment_and_wskprops(monkeypatch, clean_sources):
    monkeypatch.setenv("WHISK_APIHOST", "http://env:1")
    monkeypatch.setenv("WHISK_AUTH", OTHER_AUTH)
    write_wskprops(clean_sources / ".wskprops", APIHOST="props:2", AUTH=OTHER_AUTH)
    with dask.config.set({"whisk.apihost": "http://dask:3", "whisk.auth": AUTH,
                          "whisk.namespace": "team", "whisk.insecure": True}):
        config = load_whisk_config()
        assert (config.apihost, config.auth, config.namespace, config.insecure) == (
            "http://dask:3", AUTH, "team", True)
        # explicit arguments beat the dask config, field by field
        config = load_whisk_config(apihost="http://arg:4", insecure=False)
        assert (config.apihost, config.auth, config.insecure) == ("http://arg:4", AUTH, False)


def test_activation_environment_beats_wsk_variables(monkeypatch):
    monkeypatch.setenv("__OW_API_HOST", "http://inside:1")
    monkeypatch.setenv("__OW_API_KEY", AUTH)
    monkeypatch.setenv("__OW_NAMESPACE", "guest")
    monkeypatch.setenv("WHISK_APIHOST", "http://outside:2")
    monkeypatch.setenv("WHISK_AUTH", OTHER_AUTH)
    config = load_whisk_config()
    assert (config.apihost, config.auth, config.namespace) == ("http://inside:1", AUTH, "guest")


def test_wsk_variables_override_wskprops_field_by_field(monkeypatch, clean_sources):
    write_wskprops(clean_sources / ".wskprops", APIHOST="props.example:443", AUTH=AUTH,
                   NAMESPACE="ns1", APIVERSION="v1")
    config = load_whisk_config()
    assert (config.apihost, config.auth, config.namespace) == ("https://props.example:443", AUTH, "ns1")
    assert "~/.wskprops" in config.origin
    monkeypatch.setenv("WHISK_APIHOST", "http://env:9")
    monkeypatch.setenv("WHISK_NAMESPACE", "ns2")
    config = load_whisk_config()
    assert (config.apihost, config.auth, config.namespace) == ("http://env:9", AUTH, "ns2")


def test_wsk_config_file(monkeypatch, tmp_path, clean_sources):
    write_wskprops(clean_sources / ".wskprops", APIHOST="ignored:1", AUTH=OTHER_AUTH)
    props = tmp_path / "other.props"
    props.write_text(f"# comment\n\nAPIHOST = \"http://file:5\"\nAUTH={AUTH}\n")
    monkeypatch.setenv("WSK_CONFIG_FILE", str(props))
    config = load_whisk_config()
    assert (config.apihost, config.auth, config.namespace) == ("http://file:5", AUTH, "_")
    assert read_wskprops(props) == {"APIHOST": "http://file:5", "AUTH": AUTH}
    monkeypatch.setenv("WSK_CONFIG_FILE", str(tmp_path / "missing"))
    with pytest.raises(WhiskConfigError, match="WSK_CONFIG_FILE names"):
        find_whisk_config()


def test_partial_configuration_names_every_place(monkeypatch, clean_sources):
    monkeypatch.setenv("WHISK_APIHOST", "http://env:1")
    with pytest.raises(WhiskConfigError) as info:
        find_whisk_config()
    message = str(info.value)
    assert "API host in WHISK_APIHOST" in message and "no API key" in message
    for place in ("arguments", "whisk.*", "__OW_API_KEY", "WHISK_AUTH", "~/.wskprops",
                  "DASK_WHISK__AUTH"):
        assert place in message
    monkeypatch.delenv("WHISK_APIHOST")
    write_wskprops(clean_sources / ".wskprops", AUTH=AUTH)
    with pytest.raises(WhiskConfigError, match="API key in ~/.wskprops but no API host") as info:
        find_whisk_config()
    assert KEY not in str(info.value)


def test_namespace_alone_is_not_a_configuration(monkeypatch):
    monkeypatch.setenv("__OW_NAMESPACE", "guest")
    assert find_whisk_config() is None


def test_dask_environment_mapping(tmp_path):
    """DASK_WHISK__* variables reach the resolver through dask's own environment mapping."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    env.update(HOME=str(tmp_path), DASK_WHISK__APIHOST="http://127.0.0.1:3233",
               DASK_WHISK__AUTH=AUTH, DASK_WHISK__NAMESPACE="guest", DASK_WHISK__INSECURE="True",
               DASK_WHISK__MAX_IN_FLIGHT="7")
    code = ("import json; from dask_whisk.config import load_whisk_config, ClientSettings;"
            "c = load_whisk_config(); s = ClientSettings.from_dask_config();"
            "print(json.dumps([c.apihost, c.auth, c.namespace, c.insecure, s.max_in_flight]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) == ["http://127.0.0.1:3233", AUTH, "guest", True, 7]


def test_package_defaults_and_accessors():
    assert setting("store") == "local"
    assert setting("action") == "dask-whisk-worker"
    assert setting("store", "swift") == "swift"
    with dask.config.set({"whisk.store": "swift"}):
        assert setting("store") == "swift"
    settings = ClientSettings.from_dask_config()
    assert (settings.retry_attempts, settings.retry_max_seconds, settings.run_timeout,
            settings.max_in_flight) == (12, 120.0, 900.0, None)
    # no connection limit configured: half the open-files limit, within [16, 10,000]
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        for limit, expected in ((20, 16), (33, 16), (34, 17), (1000, 500), (4001, 2000)):
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
            assert ClientSettings.from_dask_config().connection_limit == expected, limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    with dask.config.set({"whisk.client.connection-limit": 50, "whisk.max-in-flight": 8}):
        settings = ClientSettings.from_dask_config(retry_attempts=3)
        assert (settings.connection_limit, settings.max_in_flight, settings.retry_attempts) == (50, 8, 3)
    with pytest.raises(WhiskConfigError, match="max-in-flight"):
        ClientSettings(max_in_flight=0)


def test_connection_limit_is_capped_at_ten_thousand(monkeypatch):
    # Open-files limits above 20,000 may be over this machine's hard limit: the module reads
    # them through resource.getrlimit, so that is what answers here. Unlimited reads as 65,536.
    import dask_whisk.config as config

    for soft, expected in ((19_998, 9_999), (20_002, 10_000), (40_000, 10_000)):
        monkeypatch.setattr(config.resource, "getrlimit", lambda _, soft=soft: (soft, soft))
        assert ClientSettings.from_dask_config().connection_limit == expected, soft
    unlimited = config.resource.RLIM_INFINITY
    monkeypatch.setattr(config.resource, "getrlimit", lambda _: (unlimited, unlimited))
    assert ClientSettings.from_dask_config().connection_limit == 10_000


def test_the_readme_configuration_reference_is_the_codes():
    """The README's table is what ``config.reference()`` makes from the defaults, and every
    ``whisk.*`` key the code reads is in it (a key added without a row fails here)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    begin, end = "<!-- config-reference:begin -->\n", "\n<!-- config-reference:end -->"
    assert begin in readme and end in readme, "the README has no configuration reference block"
    table = readme.split(begin, 1)[1].split(end, 1)[0]
    assert table == reference(), "README out of date: paste `python -c 'from dask_whisk.config " \
                                 "import reference; print(reference())'` between its markers"
    source = "".join(p.read_text() for p in (Path(__file__).parent.parent / "dask_whisk").rglob("*.py"))
    read = set(re.findall(r'config\.get\(\s*"whisk\.([a-z0-9.-]+)"', source)) - {"swift"}
    assert read and read <= set(SETTINGS), read - set(SETTINGS)


def test_swift_keys_from_dasks_environment_mapping_reach_the_store(tmp_path):
    """DASK_WHISK__SWIFT__WORKER_AUTH arrives in dask's config as 'worker_auth'; the Swift
    settings still see it (they used to look for 'worker-auth' only)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ST_", "OS_", "DASK_"))}
    env.update(HOME=str(tmp_path), DASK_WHISK__SWIFT__WORKER_AUTH="token",
               DASK_WHISK__SWIFT__STORAGE_URL="http://127.0.0.1:1/v1/AUTH_test",
               DASK_WHISK__SWIFT__TOKEN="tk", DASK_WHISK__SWIFT__SEGMENT_SIZE="4096")
    code = ("import json, dask_whisk; from dask_whisk.store.swift_settings import resolve_settings;"
            "s = resolve_settings(); print(json.dumps([s.worker_auth, s.storage_url, s.segment_size]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) == ["token", "http://127.0.0.1:1/v1/AUTH_test", 4096]
