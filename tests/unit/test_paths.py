"""Every default path of the CNI side comes from cni_backend/paths.py."""

from cni_backend import paths, trace, wire
from cni_backend.invoke import cache, conflist
from cni_backend.ipam import config
from cni_backend.net import features, iptables


def test_defaults_live_under_the_project_folders():
    assert paths.FIREWALL_LOCK == "/run/rancher-cni/firewall.lock"
    assert paths.DAEMON_SOCKET == "/run/rancher-cni/cni.sock"
    assert paths.TRACE_CONTROL == "/run/rancher-cni/trace"
    assert paths.STATE_DIR == "/var/lib/rancher-cni"


def test_modules_take_their_defaults_from_paths():
    assert (iptables.LOCK_PATH, wire.DEFAULT_SOCKET, trace.DEFAULT_CONTROL) == \
        (paths.FIREWALL_LOCK, paths.DAEMON_SOCKET, paths.TRACE_CONTROL)
    assert (config.DEFAULT_DATA_DIR, features.CACHE_DIR) == (paths.STATE_DIR, paths.RUN_DIR)
    assert (cache.DEFAULT_CACHE_DIR, conflist.DEFAULT_CONF_DIR) == ("/var/lib/cni", "/etc/cni/net.d")
