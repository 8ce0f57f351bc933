"""`cnm-shim options --json` and `cnm-shim version` (cnm_shim/about.py)."""

import json
import subprocess
import sys

import pytest

from cni_backend import version as cni_version
from cnm_shim import about, backends
from cnm_shim.options import default_text


def cli(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnm_shim.cli", *argv], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("backend", list(backends.REGISTRY))
def test_options_json_lists_every_option_of_the_registry_with_its_default_and_help(backend):
    done = cli("options", backend, "--json")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    entry = backends.get(backend)
    assert found["backend"] == backend and found["driver"] == entry.driver
    assert [o["name"] for o in found["options"]] == [o.name for o in entry.options]
    for shown, option in zip(found["options"], entry.options):
        assert shown["help"] == option.help and shown["help"]
        assert shown["default_text"] == default_text(option, entry.required)
        assert shown["required"] == (option.name in entry.required)
        if not shown["required"] and isinstance(option.default, (bool, int, str)):
            assert shown["default"] == option.default


def test_options_json_without_a_backend_lists_them_all_and_plain_text_is_unchanged():
    found = json.loads(cli("options", "--json").stdout)
    assert [b["backend"] for b in found] == list(backends.REGISTRY)
    plain = cli("options", "flat")
    assert plain.returncode == 0 and "parent" in plain.stdout and "required" in plain.stdout


def test_version_parts_name_our_version_the_cni_versions_and_the_optional_packages(monkeypatch):
    """The kernel part is probed in tests/netns/test_host_features.py (root, sandbox)."""
    monkeypatch.setattr(about, "kernel_features", lambda: None)
    found = about.report()
    assert found["version"] == about.our_version() and found["version"][0].isdigit()
    assert found["cni_versions"] == list(cni_version.SUPPORTED_VERSIONS)
    assert found["optional_packages"]["matplotlib"]["present"] is True  # the test extra has it
    assert found["kernel_features"] is None and set(found["data_paths"]) == {"flat", "ipsec"}
    text = about.text(found)
    assert text.startswith(f"cnm-shim {found['version']} ") and "1.1.0" in text and "matplotlib" in text
    assert "not probed (needs root)" in text
    json.dumps(found)


ALL = {"nft_netdev_fwd": True, "nft_bridge": True, "ebtables_filter": True, "esp_xfrm": True}


@pytest.mark.parametrize("kernel, tun, flat, ipsec", [
    (ALL, True, "fast path", "xfrm"),
    (dict(ALL, esp_xfrm=False), True, "fast path", "libipsec"),
    (dict(ALL, esp_xfrm=False), False, "fast path", "unavailable"),
    (dict(ALL, nft_netdev_fwd=False), True, "bridge path only", "xfrm"),
    (dict(ALL, nft_bridge=False), True, "unavailable", "xfrm"),
    (None, True, "unknown", "unknown"),
])
def test_data_paths_follow_the_probed_features(kernel, tun, flat, ipsec):
    found = about.data_paths(kernel, tun)
    assert found["flat"].startswith(flat) and found["ipsec"].startswith(ipsec)
