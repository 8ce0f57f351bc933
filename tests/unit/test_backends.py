"""The backend registry (cnm_shim/backends/): every entry complete and
consistent with the CNI side, `cnm-shim options` generated from it, the user
guide's option tables in line with it, and a backend added by one entry alone
reaching CreateNetwork and DeleteNetwork."""

import configparser
import pathlib
import re

import pytest

from cni_backend.plugins import PLUGINS
from cnm_shim import app as app_module, backends, cli, docker_sync, options, render
from cnm_shim.app import create_app

ROOT = pathlib.Path(__file__).resolve().parents[2]
IPAM = {"type": "rancher-ipam", "ranges": [[{"subnet": "10.70.0.0/24"}]], "exclude": [], "dataDir": "/tmp/x"}
REQUIRED_VALUES = {"parent": "eth9", "ipsec.psk_file": "/etc/rancher-cni/ipsec.psk", "cni.conflist": "mynet"}
# the backends that render a conflist of their own (not rancher-conflist's: the user's, as it is)
RENDERING = [entry for entry in backends.REGISTRY.values() if not entry.takes_conflist]
# what a backend needs besides its required options to render: ipsec, this
# host's block of the subnet and someone to talk to
IPAM_OF = {"ipsec": dict(IPAM, ranges=[[{"subnet": "10.70.0.0/16", "gateway": "10.70.1.1",
                                          "rangeStart": "10.70.1.0", "rangeEnd": "10.70.1.255"}]])}
OTHER_VALUES = {"ipsec": {"peers": ["10.96.0.2"], "ipsec.psk_file": "/etc/rancher-cni/ipsec.psk"}}


def parsed_defaults(entry) -> dict:
    values = options.parse(entry.driver, entry.name, {k: REQUIRED_VALUES[k] for k in entry.required})
    return dict(values, **OTHER_VALUES.get(entry.name, {}))


@pytest.mark.parametrize("entry", backends.REGISTRY.values(), ids=lambda e: e.name)
def test_each_backend_is_named_once_and_served_by_its_own_driver(entry):
    assert backends.get(entry.name) is entry
    assert backends.DRIVERS[entry.driver] == entry.name
    assert app_module.DRIVERS is backends.DRIVERS
    assert entry.driver in docker_sync.DEFAULT_DRIVERS
    assert re.fullmatch(r"r[a-z]-", entry.bridge_prefix) or entry.takes_conflist


def test_backends_do_not_share_a_bridge_prefix():
    prefixes = [entry.bridge_prefix for entry in RENDERING]
    assert len(set(prefixes)) == len(prefixes)


@pytest.mark.parametrize("entry", RENDERING, ids=lambda e: e.name)
def test_each_backends_cni_executable_exists_on_the_cni_side(entry):
    scripts = configparser.ConfigParser()
    scripts.read(ROOT / "setup.cfg")
    console = dict(line.split(" = ") for line in scripts["options.entry_points"]["console_scripts"].strip().splitlines())
    assert entry.cni_type in PLUGINS
    assert console[entry.cni_type].startswith("cni_backend.front:")


@pytest.mark.parametrize("entry", backends.REGISTRY.values(), ids=lambda e: e.name)
def test_each_backends_options_are_unique_documented_and_their_defaults_parse(entry):
    names = [o.name for o in entry.options]
    assert len(set(names)) == len(names)
    if not entry.takes_conflist:
        assert {"bridge", "mtu", "cni.export", "cni.name"} <= set(names)  # CreateNetwork reads these
    assert set(entry.required) <= set(names)
    assert {key for key, _ in entry.unique} <= set(names)
    assert all(o.help for o in entry.options)
    assert set(parsed_defaults(entry)) == set(names)


@pytest.mark.parametrize("entry", RENDERING, ids=lambda e: e.name)
def test_each_backends_renderer_runs_its_cni_executable(entry):
    ipam = IPAM_OF.get(entry.name, IPAM)
    plugin = entry.render("rx-test", parsed_defaults(entry), ipam)
    conf = render.conflist("rancher-test", plugin)
    assert conf["plugins"][0]["type"] == entry.cni_type
    assert conf["plugins"][0]["bridge"] == "rx-test" and conf["plugins"][0]["ipam"] == ipam


def test_an_unknown_backend_is_refused_naming_the_known_ones():
    with pytest.raises(backends.DriverError, match="bridge, flat, vxlan, ipsec, conflist"):
        backends.get("wireguard")
    with pytest.raises(backends.DriverError, match="is not one of: bridge, flat, vxlan, ipsec, conflist"):
        options.choose_backend("rancher-bridge", "bridge", {"backend": "wireguard"})


@pytest.mark.parametrize("entry", backends.REGISTRY.values(), ids=lambda e: e.name)
def test_cnm_shim_options_prints_every_option_with_its_default_and_help(entry, capsys):
    assert cli.main(["options", entry.name]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{entry.driver} ")
    for option in entry.options:
        line = next(line for line in out.splitlines() if line.split()[:1] == [option.name])
        assert options.default_text(option, entry.required) in line and option.help in line


def test_cnm_shim_options_without_a_backend_prints_them_all_and_refuses_an_unknown_one(capsys):
    assert cli.main(["options"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")] == list(backends.DRIVERS)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["options", "wireguard"])
    assert exit_.value.code == 2
    assert "invalid choice: 'wireguard'" in capsys.readouterr().err


def _guide_table(driver: str) -> dict:
    """The user guide's option table in the section of `driver`: option -> default text."""
    guide = (ROOT / "docs/user-guide.md").read_text()
    section = guide.split(f"## Docker: the `{driver}` driver", 1)[1].split("\n## ", 1)[0]
    table = section.split("| option | default | meaning |", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 3:
            for name in re.findall(r"`([^`]+)`", cells[0]):
                rows[name] = cells[1]
    return rows


@pytest.mark.parametrize("entry", backends.REGISTRY.values(), ids=lambda e: e.name)
def test_the_user_guide_lists_exactly_the_registrys_options_with_their_defaults(entry):
    table = _guide_table(entry.driver)
    assert sorted(table) == sorted(o.name for o in entry.options)
    for option in entry.options:
        written = table[option.name]
        if written and option.default not in (None, [], ()):  # "" = "as for rancher-bridge"
            assert options.default_text(option, entry.required) in written, option.name
        if option.name in entry.required:
            assert written == "required"


# -- a backend added by one entry ------------------------------------------------

class RecordingHost(backends.HostSide):
    def __init__(self):
        self.calls = []

    def create(self, net, undo):
        self.calls.append(("create", net.bridge))
        net.bridge_created = True

    def remove(self, net):
        self.calls.append(("remove", net.bridge))


def test_a_backend_added_to_the_registry_alone_is_created_and_removed_through_its_entry(tmp_path, monkeypatch):
    host = RecordingHost()
    fake = backends.Backend(name="fake", driver="rancher-fake", options=(options.BRIDGE, options.MTU,
                            options.CNI_EXPORT, options.CNI_NAME), render=lambda bridge, opts, ipam: {
                                "type": "rancher-fake", "bridge": bridge, "ipam": ipam},
                            bridge_prefix="rz-", cni_type="rancher-fake", host=host)
    monkeypatch.setitem(backends.REGISTRY, "fake", fake)
    monkeypatch.setitem(backends.DRIVERS, "rancher-fake", "fake")
    app = create_app({"state_dir": str(tmp_path / "state"), "run_dir": str(tmp_path / "run"),
                      "ipam_data_dir": str(tmp_path / "ipam"), "cni_conf_dir": str(tmp_path / "net.d")})
    client = app.test_client()
    network = "f" * 64
    answer = client.post("/NetworkDriver.CreateNetwork", json={
        "NetworkID": network, "IPv4Data": [{"Pool": "10.71.0.0/24", "Gateway": "10.71.0.1/24"}],
        "Options": {"com.docker.network.generic": {"backend": "fake"}}})
    assert answer.status_code == 200, answer.get_json()
    net = app.extensions["rancher"].state.get("network", network)
    assert (net["backend"], net["driver"]) == ("fake", "rancher-fake")
    assert net["conflist"]["plugins"][0]["type"] == "rancher-fake"
    assert client.post("/NetworkDriver.DeleteNetwork", json={"NetworkID": network}).status_code == 200
    assert host.calls == [("create", "rz-" + network[:12]), ("remove", "rz-" + network[:12])]
