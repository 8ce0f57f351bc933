"""Every default path of the CNI side comes from cni_backend/paths.py."""

from cni_backend import paths, trace, wire
from cni_backend.invoke import cache, conflist
from cni_backend.ipam import config
from cni_backend.net import features, iptables


def test_defaults_live_under_the_project_folders():
    assert paths.FIREWALL_DIR == "/run/rancher-cni/firewall"
    assert paths.DAEMON_SOCKET == "/run/rancher-cni/cni.sock"
    assert paths.TRACE_CONTROL == "/run/rancher-cni/trace"
    assert paths.STATE_DIR == "/var/lib/rancher-cni"


def test_modules_take_their_defaults_from_paths():
    assert (iptables._RECORDS, wire.DEFAULT_SOCKET, trace.DEFAULT_CONTROL) == \
        (paths.FIREWALL_DIR, paths.DAEMON_SOCKET, paths.TRACE_CONTROL)
    assert (config.DEFAULT_DATA_DIR, features.CACHE_DIR) == (paths.STATE_DIR, paths.RUN_DIR)
    assert (cache.DEFAULT_CACHE_DIR, conflist.DEFAULT_CONF_DIR) == ("/var/lib/cni", "/etc/cni/net.d")


# -- the Docker side (cnm_shim/paths.py) ----------------------------------------

def _defaults(monkeypatch, *argv):
    """The defaults `cnm-shim ARGV` runs with when the environment sets none."""
    from cnm_shim import cli
    for name in ("CNI_PATH", "RANCHER_CNI_SOCKET"):
        monkeypatch.delenv(name, raising=False)
    return vars(cli.build_parser().parse_args(list(argv)))


def test_docker_side_defaults_are_the_documented_folders():
    from cnm_shim import paths as cnm_paths
    assert (cnm_paths.STATE_DIR, cnm_paths.RUN_DIR, cnm_paths.PLUGIN_DIR) == \
        ("/var/lib/rancher-cnm", "/run/rancher-cnm", "/run/docker/plugins")
    assert (cnm_paths.IPAM_DATA_DIR, cnm_paths.CNI_CONF_DIR, cnm_paths.CNI_SOCKET) == \
        (paths.STATE_DIR, paths.CNI_CONF_DIR, paths.DAEMON_SOCKET)
    assert cnm_paths.CNI_PATH == ("/opt/cni/bin", "/usr/lib/cni") and cnm_paths.CNI_BIN_DIR == paths.CNI_BIN_DIR


def test_every_command_takes_its_default_paths_from_one_place(monkeypatch):
    from cnm_shim import paths as cnm_paths
    from cnm_shim.translate import Settings
    serve = _defaults(monkeypatch, "serve")
    doctor = _defaults(monkeypatch, "doctor")
    expected = {"state_dir": cnm_paths.STATE_DIR, "run_dir": cnm_paths.RUN_DIR, "ipam_data_dir": cnm_paths.IPAM_DATA_DIR,
                "cni_path": "/opt/cni/bin:/usr/lib/cni"}
    assert {key: serve[key] for key in expected} == expected == {key: doctor[key] for key in expected}
    assert (serve["plugin_dir"], serve["cni_conf_dir"], serve["cni_socket"]) == \
        (cnm_paths.PLUGIN_DIR, cnm_paths.CNI_CONF_DIR, cnm_paths.CNI_SOCKET)
    assert _defaults(monkeypatch, "cni-server")["socket"] == cnm_paths.CNI_SOCKET
    assert _defaults(monkeypatch, "status")["state_dir"] == cnm_paths.STATE_DIR
    assert _defaults(monkeypatch, "vxlan-agent")["state_dir"] == cnm_paths.IPAM_DATA_DIR
    assert _defaults(monkeypatch, "install-cni")["dir"] == cnm_paths.CNI_BIN_DIR
    compare = _defaults(monkeypatch, "compare")
    assert (compare["cni_path"], compare["cni_conf_dir"], compare["cni_socket"]) == \
        (cnm_paths.CNI_BIN_DIR, cnm_paths.CNI_CONF_DIR, cnm_paths.CNI_SOCKET)
    settings = Settings()
    assert (settings.state_dir, settings.run_dir, settings.ipam_data_dir, settings.cni_path, settings.cni_conf_dir) == \
        (cnm_paths.STATE_DIR, cnm_paths.RUN_DIR, cnm_paths.IPAM_DATA_DIR, cnm_paths.CNI_PATH, cnm_paths.CNI_CONF_DIR)


def test_the_environment_still_overrides_the_defaults(monkeypatch):
    from cnm_shim import cli
    monkeypatch.setenv("CNI_PATH", "/x/bin:/y/bin")
    monkeypatch.setenv("RANCHER_CNI_SOCKET", "/tmp/other.sock")
    serve = vars(cli.build_parser().parse_args(["serve"]))
    assert (serve["cni_path"], serve["cni_socket"]) == ("/x/bin:/y/bin", "/tmp/other.sock")
