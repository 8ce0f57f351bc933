"""An internal network (`docker network create --internal`, the conflist's
"internal": true), by packets: its containers reach each other but nothing
outside their subnet, nothing outside reaches them, and no rule masquerades
them. The "outside" is a namespace this test makes, routed through the host."""

import pytest

from cni_backend.net import tags
from tests.conftest import CNIEnv, ns_exec, ping, run, unique, write_sysctls

pytestmark = pytest.mark.netns

SUBNET, GATEWAY = "10.197.0.0/24", "10.197.0.1"
OUTSIDE_HOST, OUTSIDE = "10.196.0.1", "10.196.0.2"  # the host's end and the outside namespace's


@pytest.fixture
def outside(make_netns):
    """A namespace beyond the host: a veth to it, the host at OUTSIDE_HOST,
    its default route back through the host. Forwarding on, as on any host
    whose other networks need it."""
    netns, host_end = make_netns(), unique("o")
    run("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", netns)
    run("ip", "addr", "add", f"{OUTSIDE_HOST}/24", "dev", host_end)
    run("ip", "link", "set", host_end, "up")
    ns_exec(netns, "ip", "addr", "add", f"{OUTSIDE}/24", "dev", "eth0")
    ns_exec(netns, "ip", "link", "set", "eth0", "up")
    ns_exec(netns, "ip", "route", "add", "default", "via", OUTSIDE_HOST)
    write_sysctls({"/proc/sys/net/ipv4/ip_forward": "1"})
    yield netns
    run("ip", "link", "del", host_end, check=False)


def network_rules(name: str, table: str) -> list:
    prefix = tags.network_prefix(name)
    return [line for line in run("iptables-save", "-t", table).stdout.splitlines() if prefix in line]


def test_internal_network_reaches_its_peer_but_not_outside_and_is_not_masqueraded(cni_daemon_env, make_netns,
                                                                                  outside):
    env = cni_daemon_env
    config = env.bridge_config(subnet=SUBNET, internal=True)
    a, b = make_netns(), make_netns()
    code, result_a = env.exec("ADD", config, a, container_id="ca")
    assert code == 0, result_a
    code, result_b = env.exec("ADD", config, b, container_id="cb")
    assert code == 0, result_b
    try:
        assert ns_exec(a, "ip", "route", "show", "default").stdout.strip() == "", "no way out is offered"
        assert ping(a, result_b["ips"][0]["address"].split("/")[0]), "the peer on the same network"
        assert ping(a, GATEWAY), "the gateway address on the host, as on Docker's internal networks"
        # a container that makes its own way out (CAP_NET_ADMIN) still gets nowhere
        ns_exec(a, "ip", "route", "add", "10.196.0.0/24", "via", GATEWAY)
        assert not ping(a, OUTSIDE), "a packet left the internal network's subnet"
        # nor does anything from outside get in
        ns_exec(outside, "ip", "route", "add", SUBNET, "via", OUTSIDE_HOST)
        assert not ping(outside, result_a["ips"][0]["address"].split("/")[0]), "a packet entered from outside"
        assert [line for line in network_rules(config["name"], "nat") if "MASQUERADE" in line] == []
        drops = [line for line in network_rules(config["name"], "filter") if line.endswith("-j DROP")]
        assert len(drops) == 4, drops  # the pair, for each container
        assert env.exec("CHECK", dict(config, prevResult=result_a), a, container_id="ca") == (0, None)
    finally:
        for netns, cid, result in ((a, "ca", result_a), (b, "cb", result_b)):
            assert env.exec("DEL", dict(config, prevResult=result), netns, container_id=cid)[0] == 0
    assert network_rules(config["name"], "filter") == []


def test_the_same_network_not_internal_does_reach_outside(cni_daemon_env, make_netns, outside):
    """The control: the route and the outside namespace work, so what stops
    the packets above is the network being internal."""
    env = cni_daemon_env
    config = env.bridge_config(subnet=SUBNET)
    a = make_netns()
    code, result = env.exec("ADD", config, a, container_id="ca")
    assert code == 0, result
    try:
        ns_exec(a, "ip", "route", "add", "10.196.0.0/24", "via", GATEWAY)
        assert ping(a, OUTSIDE)
    finally:
        assert env.exec("DEL", dict(config, prevResult=result), a, container_id="ca")[0] == 0


@pytest.mark.parametrize("extra", [{"ipMasq": True}, {"isDefaultGateway": True}])
def test_internal_with_a_way_out_is_refused(cni_daemon_env, make_netns, extra):
    env = cni_daemon_env
    netns = make_netns()
    code, error = env.exec("ADD", env.bridge_config(subnet=SUBNET, internal=True, **extra), netns)
    assert code != 0 and error["code"] == 7 and "'internal' network has no way out" in error["msg"], error
    assert env.allocations() == [] and "eth0" not in ns_exec(netns, "ip", "-o", "link").stdout


def test_internal_vxlan_network_does_not_route_out_of_its_subnet(tmp_path, make_netns):
    """rancher-vxlan takes the bridge plug-in's rules: a host (a namespace
    running the plug-in) with an underlay to another host, which routes the
    subnet back; the container's packet to that host is dropped."""
    host, beyond = make_netns(), make_netns()
    ns_exec(host, "ip", "link", "add", "underlay", "type", "veth", "peer", "name", "underlay", "netns", beyond)
    for netns, address in ((host, "10.99.0.1/24"), (beyond, "10.99.0.2/24")):
        ns_exec(netns, "ip", "addr", "add", address, "dev", "underlay")
        ns_exec(netns, "ip", "link", "set", "underlay", "up")
    ns_exec(beyond, "ip", "route", "add", "10.42.0.0/16", "via", "10.99.0.1")
    env = CNIEnv(tmp_path, daemon=False)
    config = {"cniVersion": "1.0.0", "name": "overlay", "type": "rancher-vxlan", "vni": 1042, "vtepDev": "underlay",
              "isGateway": True, "internal": True, "stateDir": str(env.state),
              "ipam": {"type": "rancher-ipam", "dataDir": str(env.state),
                       "ranges": [[{"subnet": "10.42.0.0/16", "gateway": "10.42.0.1"}]]}}
    container = make_netns()
    code, result = env.exec("ADD", config, container, host_netns=host)
    assert code == 0, result
    try:
        assert ns_exec(container, "ip", "route", "show", "default").stdout.strip() == ""
        ns_exec(container, "ip", "route", "add", "10.99.0.0/24", "via", "10.42.0.1")
        assert not ping(container, "10.99.0.2"), "a packet left the internal network's subnet"
        saved = ns_exec(host, "iptables-save").stdout
        assert "MASQUERADE" not in saved
        assert "! -d 10.42.0.0/16 -i vxbr1042 ! -o vxbr1042" in saved, saved
    finally:
        code, _ = env.exec("DEL", dict(config, prevResult=result), container, host_netns=host)
        assert code == 0 and env.allocations() == []
