"""A network's removal takes only what is its own (issue 15, item 6), driven
through the Docker side's real calls (the Flask app, the CNI executables) on
the real kernel: rules are read back with iptables-save, addresses from the
IPAM store, bridges with ip link."""

import pytest

from cni_backend import install
from cni_backend.net import tags
from cnm_shim.app import create_app
from tests.conftest import ipam_rows, run, unique

pytestmark = pytest.mark.netns

NET_A, NET_B, NET_C = "a1" * 32, "b2" * 32, "c4" * 32
EP, EP_C = "e3" * 32, "f5" * 32


@pytest.fixture
def shim(tmp_path, leak_guard):
    install.write_executables(str(tmp_path / "bin"))
    app = create_app({"state_dir": str(tmp_path / "state"), "run_dir": str(tmp_path / "run"),
                      "ipam_data_dir": str(tmp_path / "ipam"), "cni_conf_dir": str(tmp_path / "net.d"),
                      "cni_path": (str(tmp_path / "bin"),)})
    client = app.test_client()

    def post(call, body):
        answer = client.post(f"/{call}", json=body)
        return answer.status_code, answer.get_json()

    post.ipam_dir = tmp_path / "ipam"
    post.state = app.extensions["rancher"].state
    made = []
    post.made = made
    yield post
    for network_id in made:  # whatever a failed assertion left
        for endpoint in (EP, EP_C):
            post("NetworkDriver.DeleteEndpoint", {"NetworkID": network_id, "EndpointID": endpoint})
        post("NetworkDriver.DeleteNetwork", {"NetworkID": network_id})


def create(shim, network_id, subnet, **options):
    body = {"NetworkID": network_id, "Options": {"com.docker.network.generic": options},
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": subnet, "Gateway": subnet.replace("0/24", "1/24")}]}
    status, answer = shim("NetworkDriver.CreateNetwork", body)
    if status == 200:
        shim.made.append(network_id)
    return status, answer


def attach(shim, network_id, endpoint, address):
    assert shim("NetworkDriver.CreateEndpoint", {"NetworkID": network_id, "EndpointID": endpoint,
                                                 "Interface": {"Address": address}})[0] == 200
    status, answer = shim("NetworkDriver.Join", {"NetworkID": network_id, "EndpointID": endpoint, "SandboxKey": ""})
    assert status == 200, answer


def rules_of(cni_name):
    prefix = tags.network_prefix(cni_name)
    return sorted(line for tool in ("iptables-save", "ip6tables-save")
                  for line in run(tool).stdout.splitlines() if prefix in line)


def test_removing_foo_leaves_the_rules_and_addresses_of_foo_ports(shim):
    """Network foo keeps its published ports under foo-ports; a second network
    named foo-ports lost its rules and addresses when foo was removed."""
    foo, ok = unique("foo"), (200, {})
    # a bystander: its container keeps our chains in use, as on any busy host
    assert create(shim, NET_C, "10.193.0.0/24") == ok
    attach(shim, NET_C, EP_C, "10.193.0.5/24")
    assert create(shim, NET_A, "10.195.0.0/24", **{"cni.name": f"{foo}-ports"}) == ok
    attach(shim, NET_A, EP, "10.195.0.5/24")
    ports = {"com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostPort": 18395}]}
    status, answer = shim("NetworkDriver.ProgramExternalConnectivity", {"NetworkID": NET_A, "EndpointID": EP,
                                                                       "Options": ports})
    assert status == 200, answer
    rules = rules_of(f"{foo}-ports")
    addresses = [row for row in ipam_rows(shim.ipam_dir, "network, ip") if row[0] == f"{foo}-ports"]
    assert rules and addresses == [(f"{foo}-ports", "10.195.0.5")]

    status, answer = create(shim, NET_B, "10.194.0.0/24", **{"cni.name": foo})
    deleted = shim("NetworkDriver.DeleteNetwork", {"NetworkID": NET_B})  # removed, had it been made
    assert rules_of(f"{foo}-ports") == rules, "foo's removal took foo-ports' rules"
    assert [row for row in ipam_rows(shim.ipam_dir, "network, ip") if row[0] == f"{foo}-ports"] == addresses
    assert status == 400 and f"CNI network name '{foo}' clashes with network {NET_A[:12]}" in answer["Err"], answer
    assert "-o cni.name=NAME" in answer["Err"] and deleted == ok
    assert shim("NetworkDriver.RevokeExternalConnectivity", {"NetworkID": NET_A, "EndpointID": EP}) == ok
    assert shim("NetworkDriver.DeleteEndpoint", {"NetworkID": NET_A, "EndpointID": EP}) == ok
    assert shim("NetworkDriver.DeleteNetwork", {"NetworkID": NET_A}) == ok
    assert rules_of(f"{foo}-ports") == []
    assert shim("NetworkDriver.DeleteEndpoint", {"NetworkID": NET_C, "EndpointID": EP_C}) == ok
    assert shim("NetworkDriver.DeleteNetwork", {"NetworkID": NET_C}) == ok
    assert ipam_rows(shim.ipam_dir, "network") == []


def test_foo_ports_is_refused_while_foo_exists(shim):
    foo = unique("foo")
    assert create(shim, NET_A, "10.195.0.0/24", **{"cni.name": foo}) == (200, {})
    status, answer = create(shim, NET_B, "10.194.0.0/24", **{"cni.name": f"{foo}-ports"})
    assert status == 400 and f"clashes with network {NET_A[:12]} ('{foo}-ports')" in answer["Err"], answer
    assert shim("NetworkDriver.DeleteNetwork", {"NetworkID": NET_A}) == (200, {})


@pytest.fixture
def stand_in_bridge():
    """A bridge that exists before the network, as docker0 does."""
    name = unique("br")
    run("ip", "link", "add", name, "type", "bridge")
    yield name
    run("ip", "link", "del", name, check=False)


def test_an_existing_bridge_is_refused_unless_shared_and_then_left_in_place(shim, stand_in_bridge):
    status, answer = create(shim, NET_A, "10.195.0.0/24", bridge=stand_in_bridge)
    assert status == 400 and "add -o bridge.shared=true" in answer["Err"], answer
    assert create(shim, NET_A, "10.195.0.0/24", bridge=stand_in_bridge, **{"bridge.shared": "true"}) == (200, {})
    assert shim("NetworkDriver.DeleteNetwork", {"NetworkID": NET_A}) == (200, {})
    assert run("ip", "link", "show", stand_in_bridge, check=False).returncode == 0, "a shared bridge stays"


def test_docker0_is_refused_unless_shared(shim):
    status, answer = create(shim, NET_A, "10.195.0.0/24", bridge="docker0")
    assert status == 400 and "docker0" in answer["Err"] and "bridge.shared=true" in answer["Err"], answer


@pytest.mark.parametrize("shared", ["false", "true"])
def test_a_link_that_is_no_bridge_is_refused(shim, shared):
    """eth0 or lo: the stand-in is lo, which every namespace has."""
    status, answer = create(shim, NET_A, "10.195.0.0/24", bridge="lo", **{"bridge.shared": shared})
    assert status == 400 and "names an existing device, not a bridge" in answer["Err"], answer


def test_vxlan_never_takes_an_existing_bridge(shim, stand_in_bridge):
    """A VXLAN network deletes its bridge with itself: given docker0, it
    deleted docker0 at network rm."""
    status, answer = create(shim, NET_A, "10.195.0.0/24", backend="vxlan", bridge=stand_in_bridge, vni="4242")
    assert status == 400 and "name one that does not exist" in answer["Err"], answer
    if status == 200:
        shim("NetworkDriver.DeleteNetwork", {"NetworkID": NET_A})
    assert run("ip", "link", "show", stand_in_bridge, check=False).returncode == 0


def test_a_clash_made_before_names_were_checked_is_left_alone_at_removal(shim):
    """Two networks foo-ports and foo from an older version, both in the
    state: removing foo takes nothing of foo-ports (its own leftovers under
    the shared name stay, for cnm-shim doctor)."""
    foo, ok = unique("foo"), (200, {})
    assert create(shim, NET_C, "10.193.0.0/24") == ok  # the bystander, as above
    attach(shim, NET_C, EP_C, "10.193.0.5/24")
    assert create(shim, NET_A, "10.195.0.0/24", **{"cni.name": f"{foo}-ports"}) == ok
    attach(shim, NET_A, EP, "10.195.0.5/24")
    assert create(shim, NET_B, "10.194.0.0/24") == ok
    older = dict(shim.state.get("network", NET_B))
    older["cni_name"] = older["conflist"]["name"] = foo
    shim.state.put("network", NET_B, older)
    rules = rules_of(f"{foo}-ports")
    assert rules
    assert shim("NetworkDriver.DeleteNetwork", {"NetworkID": NET_B}) == ok
    assert rules_of(f"{foo}-ports") == rules
    assert [row[0] for row in ipam_rows(shim.ipam_dir, "network")].count(f"{foo}-ports") == 1
    for network_id, endpoint in ((NET_A, EP), (NET_C, EP_C)):
        assert shim("NetworkDriver.DeleteEndpoint", {"NetworkID": network_id, "EndpointID": endpoint}) == ok
        assert shim("NetworkDriver.DeleteNetwork", {"NetworkID": network_id}) == ok
    assert ipam_rows(shim.ipam_dir, "network") == []


def test_removing_a_network_whose_container_still_publishes_ports_leaves_nothing(shim):
    """DeleteNetwork with an endpoint still joined and publishing (calls
    Docker lost): the bridge's DEL ran while the port's rule still held our
    chain, and the isolation chain could not go (EBUSY); nothing was removed."""
    ok = (200, {})
    name = unique("net")
    assert create(shim, NET_A, "10.195.0.0/24", **{"cni.name": name}) == ok
    attach(shim, NET_A, EP, "10.195.0.5/24")
    ports = {"com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostPort": 18396}]}
    assert shim("NetworkDriver.ProgramExternalConnectivity", {"NetworkID": NET_A, "EndpointID": EP,
                                                              "Options": ports}) == ok
    assert shim("NetworkDriver.DeleteNetwork", {"NetworkID": NET_A}) == ok
    shim.made.remove(NET_A)
    saved = run("iptables-save").stdout
    assert "rcni" not in saved and "RANCHER-CNI" not in saved, saved
    assert ipam_rows(shim.ipam_dir, "network") == []
