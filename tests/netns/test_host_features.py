"""Kernel feature probes ask the kernel and leave nothing behind."""

import json

import pytest

from cni_backend.net import features
from tests.conftest import run

pytestmark = pytest.mark.netns


def test_probes_leave_nothing_and_are_cached_for_the_boot(leak_guard, tmp_path, monkeypatch):
    monkeypatch.setattr(features, "CACHE_DIR", str(tmp_path))
    features.forget()
    tables_before = run("nft", "list", "tables").stdout
    found = features.report()
    assert set(found) == set(features.PROBES)
    # what this machine's kernel is known to have and to lack (../shared/TESTING.md)
    assert found["nft_netdev_fwd"] and found["nft_bridge"] and found["ebtables_filter"]
    assert run("nft", "list", "tables").stdout == tables_before
    cached = json.loads((tmp_path / "features.json").read_text())
    assert cached["features"] == found and cached["boot_id"]
    features._memo.clear()
    assert features.report() == found  # from the cache, no probe


def test_a_missing_feature_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(features._memo, "nft_bridge", False)
    with pytest.raises(features.CNIError) as raised:
        features.require("nft_bridge", "anti-spoofing (macspoofchk)")
    assert raised.value.code == 106 and "CONFIG_NF_TABLES_BRIDGE" in str(raised.value)


def test_version_reports_the_probed_features_and_the_data_paths_they_give(leak_guard):
    import subprocess
    import sys
    from cni_backend import ipsec_tunnels
    done = subprocess.run([sys.executable, "-m", "cnm_shim.cli", "version", "--json"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    features.forget()
    assert found["kernel_features"] == features.report()
    expected = {"xfrm": "xfrm", "libipsec": "libipsec"}[ipsec_tunnels.probe_datapath()]
    assert found["data_paths"]["ipsec"].startswith(expected)
    assert found["data_paths"]["flat"].startswith("fast path")  # this machine has nft_netdev_fwd (above)
