"""The flat bridge is the host's uplink: once a flat network takes over the
parent, the host's addresses and its default route live on the flat bridge,
and every other network's traffic to the LAN and beyond leaves through it.

One namespace stands in for a Docker host (FORWARD policy DROP, br_netfilter,
docker0 with Docker's forward and masquerade rules, a container on it); its
uplink is a veth to a router namespace (the LAN's switch, an address beyond
the router, a TCP service). The host gets a flat network on that uplink, with
the metadata link to docker0, and a rancher-bridge network (ipMasq) with a
container; a second rancher-bridge network holds a container that must stay
isolated from the first. Some tests add a rancher-bridge network without
masquerading, whose subnet the router routes back via the host (IPv4, and
IPv6 with an IPv6 uplink).

Docker's semantics, which the flat network keeps: a container on a bridge
network reaches whatever the host's uplink reaches, masqueraded as the host;
flat containers are hosts of the LAN (like macvlan ones), so a bridge container
reaches them as it reaches any LAN host, as the host's address (as itself
when the network does not masquerade: the replies the host routes in from
the flat bridge are tracked, only what the bridge switches is not). Nothing from
the LAN, flat containers included, is routed into a container bridge, ours or
Docker's, and our container bridges stay isolated from each other and from
Docker's."""

import re
import subprocess
import sys
import time

import pytest

from cni_backend import flatnet
from cni_backend.plugins.flat import load_network
from tests.conftest import CNIEnv, ns_exec, ping
from tests.packets import capture, ipv4_from, ipv6_from

pytestmark = pytest.mark.netns

SUBNET, ROUTER, HOST_IP, LINK_IP = "192.168.77.0/24", "192.168.77.1", "192.168.77.10", "192.168.77.2"
BEYOND = "198.51.100.1"               # on the router, reached through the host's default route
DOCKER_SUBNET, DOCKER_GW, DOCKER_IP = "172.17.0.0/16", "172.17.0.1", "172.17.0.2"
# The host NIC's MAC, above any random one: a bridge that only inherited it
# from the uplink would take a lower port's (the metadata link's veth) instead.
UPLINK_MAC = "fe:ff:ff:ff:ff:fe"


def _host_like_docker(make_netns) -> str:
    """A namespace with the firewall and docker0 a Docker host has."""
    host = make_netns()
    if ns_exec(host, "sysctl", "-w", "net.bridge.bridge-nf-call-iptables=1", check=False).returncode:
        pytest.skip("br_netfilter is not available in this kernel")
    for rule in (["-P", "FORWARD", "DROP"],
                 ["-A", "FORWARD", "-o", "docker0", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
                  "-j", "ACCEPT"],
                 ["-A", "FORWARD", "-i", "docker0", "!", "-o", "docker0", "-j", "ACCEPT"],
                 ["-A", "FORWARD", "-i", "docker0", "-o", "docker0", "-j", "ACCEPT"],
                 ["-t", "nat", "-A", "POSTROUTING", "-s", DOCKER_SUBNET, "!", "-o", "docker0", "-j", "MASQUERADE"]):
        ns_exec(host, "iptables", "-w", *rule)
    ns_exec(host, "sysctl", "-w", "net.ipv4.ip_forward=1")
    ns_exec(host, "ip", "link", "add", "docker0", "type", "bridge")
    ns_exec(host, "ip", "addr", "add", f"{DOCKER_GW}/16", "dev", "docker0")
    ns_exec(host, "ip", "link", "set", "docker0", "up")
    return host


def _docker_container(make_netns, host: str) -> str:
    netns = make_netns()
    ns_exec(host, "ip", "link", "add", "vethd0", "type", "veth", "peer", "name", "eth0", "netns", netns)
    ns_exec(host, "ip", "link", "set", "vethd0", "master", "docker0", "up")
    ns_exec(netns, "ip", "addr", "add", f"{DOCKER_IP}/16", "dev", "eth0")
    ns_exec(netns, "ip", "link", "set", "eth0", "up")
    ns_exec(netns, "ip", "route", "add", "default", "via", DOCKER_GW)
    return netns


def _router(make_netns, host: str) -> str:
    """The LAN: a switch with the router's address; the host's uplink on it
    with the host's address and default route; BEYOND on the router."""
    router = make_netns()
    ns_exec(host, "ip", "link", "add", "uplink", "address", UPLINK_MAC, "type", "veth", "peer", "name", "wan0",
            "netns", router)
    for argv in (("ip", "link", "add", "sw", "type", "bridge"), ("ip", "link", "set", "wan0", "master", "sw", "up"),
                 ("ip", "addr", "add", f"{ROUTER}/24", "dev", "sw"), ("ip", "link", "set", "sw", "up"),
                 ("ip", "addr", "add", f"{BEYOND}/32", "dev", "lo"), ("ip", "link", "set", "lo", "up")):
        ns_exec(router, *argv)
    ns_exec(host, "ip", "addr", "add", f"{HOST_IP}/24", "dev", "uplink")
    ns_exec(host, "ip", "link", "set", "uplink", "up")
    ns_exec(host, "ip", "route", "add", "default", "via", ROUTER)
    return router


@pytest.fixture
def lan(request, tmp_path, make_netns):
    """The host, its LAN, docker0 with a container, a flat network with a
    container (with the metadata link to docker0, unless the test's
    parameter says False), and two rancher-bridge networks with a container each."""
    env = CNIEnv(tmp_path, daemon=False)  # the plug-ins run inside `host` themselves
    host = _host_like_docker(make_netns)
    router = _router(make_netns, host)
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("lan-ok\n")
    server = subprocess.Popen(["ip", "netns", "exec", router, "busybox", "httpd", "-f", "-p", "80", "-h", str(www)])
    flat = {"cniVersion": "1.0.0", "name": "lan", "type": "rancher-flat", "bridge": "rf-lan", "parent": "uplink",
            "stateDir": str(env.state),
            "ipam": {"type": "rancher-ipam", "dataDir": str(env.state),
                     "ranges": [[{"subnet": SUBNET, "rangeStart": "192.168.77.100", "rangeEnd": "192.168.77.150",
                                  "gateway": ROUTER}]]}}
    if getattr(request, "param", True):
        flat["metadata"] = {"linkIP": LINK_IP, "bridge": "docker0"}
    nets = {"flat": flat,
            "web": env.bridge_config(name="web", subnet="10.123.0.0/24", ipMasq=True, isDefaultGateway=True),
            "db": env.bridge_config(name="db", subnet="10.124.0.0/24", ipMasq=True, isDefaultGateway=True)}
    rig = {"host": host, "router": router, "docker": _docker_container(make_netns, host), "env": env,
           "flat_config": flat}
    attached = []
    try:
        for name, config in nets.items():
            netns = make_netns()
            code, result = env.exec("ADD", config, netns, container_id=name, host_netns=host)
            assert code == 0, result
            attached.append((config, netns, name, result))
            rig[name] = netns
            rig[f"{name}_ip"] = result["ips"][0]["address"].split("/")[0]
        assert ns_exec(host, "ip", "route", "show", "default").stdout.split()[:5] == \
            ["default", "via", ROUTER, "dev", "rf-lan"], "the host's default route moved to the flat bridge"
        yield rig
    finally:
        server.kill()
        server.wait()
        for config, netns, name, result in attached:
            env.exec("DEL", dict(config, prevResult=result), netns, container_id=name, host_netns=host)


ROUTED_SUBNET = "10.125.0.0/24"


@pytest.fixture
def routed(lan, make_netns):
    """`lan` and a rancher-bridge network without masquerading whose subnet
    the LAN's router routes back via the host, with a container."""
    env, host, router = lan["env"], lan["host"], lan["router"]
    config = env.bridge_config(name="routed", subnet=ROUTED_SUBNET, ipMasq=False, isDefaultGateway=True)
    netns = make_netns()
    code, result = env.exec("ADD", config, netns, container_id="routed", host_netns=host)
    assert code == 0, result
    try:
        ns_exec(router, "ip", "route", "add", ROUTED_SUBNET, "via", HOST_IP)
        yield dict(lan, routed=netns, routed_ip=result["ips"][0]["address"].split("/")[0])
    finally:
        env.exec("DEL", dict(config, prevResult=result), netns, container_id="routed", host_netns=host)


def fetch(netns: str, address: str) -> bool:
    done = ns_exec(netns, "wget", "-q", "-T", "3", "-t", "1", "-O", "-", f"http://{address}/", check=False)
    return done.stdout == "lan-ok\n"


def test_bridge_containers_reach_the_lan_and_beyond_through_the_flat_bridge(lan):
    web = lan["web"]
    assert ping(web, ROUTER), "a bridge container could not reach the LAN through the flat bridge"
    assert ping(web, BEYOND) and fetch(web, BEYOND), "a bridge container lost the host's default route"


@pytest.mark.parametrize("lan", [True, False], indirect=True, ids=["metadata-link", "no-metadata-link"])
def test_dockers_default_bridge_still_reaches_the_lan(lan):
    """With the metadata link, flat's rules name docker0; without, docker0 is
    not named at all, and the replies from the LAN must still come back."""
    docker = lan["docker"]
    assert ping(docker, ROUTER), "a docker0 container could not reach the LAN through the flat bridge"
    assert ping(docker, BEYOND) and fetch(docker, BEYOND), "a docker0 container lost the host's default route"


def test_a_routed_bridge_network_reaches_the_lan_and_beyond_as_itself(routed):
    """Without masquerading, the replies come back from the LAN to the
    container's own address, routed by the host in from the flat bridge: they
    must be tracked (the flat bridge's NOTRACK is for what it only switches),
    or they are neither RELATED nor ESTABLISHED and FORWARD drops them."""
    container, router, ip = routed["routed"], routed["router"], routed["routed_ip"]
    with capture(router, "sw", seconds=3) as frames:
        reached = ping(container, ROUTER)
    assert reached, "a routed bridge container got no reply from the LAN's router"
    pings_from_host = [f for f in ipv4_from(frames, HOST_IP) if f[23] == 1]  # ICMP: the host's IGMP reports are its own
    assert ipv4_from(frames, ip) and not pings_from_host, "the routed network was masqueraded"
    assert ping(container, BEYOND) and fetch(container, BEYOND), "a routed bridge container reached nothing beyond"
    # and the LAN may still not open connections into it
    assert not ping(router, ip), "the LAN opened a connection into a routed bridge network"


def _wait_for_dad(netns: str, ifname: str) -> None:
    """The bridge's IPv6 gateway address is usable once duplicate address
    detection is done (the kernel's, about a second)."""
    deadline = time.monotonic() + 10
    while ns_exec(netns, "ip", "-6", "addr", "show", "dev", ifname, "tentative").stdout.strip():
        assert time.monotonic() < deadline, f"{ifname}'s IPv6 address stayed tentative"
        time.sleep(0.1)


ROUTED6_SUBNET, HOST_IP6, ROUTER_IP6, BEYOND6 = "fd7d::/64", "fd77::10", "fd77::1", "2001:db8:100::1"


def test_a_routed_ipv6_bridge_network_reaches_the_lan_and_beyond_as_itself(lan, make_netns):
    """IPv6 as IPv4 (the old raw rule had its ip6tables twin): the host gets
    an IPv6 address and default route on the flat bridge, Docker's IPv6
    FORWARD policy DROP and br_netfilter for IPv6; the router routes the
    network's IPv6 subnet back via the host."""
    host, router, env = lan["host"], lan["router"], lan["env"]
    ns_exec(host, "sysctl", "-w", "net.bridge.bridge-nf-call-ip6tables=1")
    ns_exec(host, "ip6tables", "-w", "-P", "FORWARD", "DROP")
    ns_exec(router, "ip", "-6", "addr", "add", f"{ROUTER_IP6}/64", "dev", "sw", "nodad")
    ns_exec(router, "ip", "-6", "addr", "add", f"{BEYOND6}/128", "dev", "lo")
    ns_exec(router, "ip", "-6", "route", "add", ROUTED6_SUBNET, "via", HOST_IP6)
    ns_exec(host, "ip", "-6", "addr", "add", f"{HOST_IP6}/64", "dev", "rf-lan", "nodad")
    ns_exec(host, "ip", "-6", "route", "add", "default", "via", ROUTER_IP6)
    assert ping(host, ROUTER_IP6, count=2) and ping(router, HOST_IP6, count=2)  # neighbours known both ways
    config = env.bridge_config(name="routed6", subnet=ROUTED_SUBNET, ipMasq=False, isDefaultGateway=True)
    config["ipam"]["ranges"].append([{"subnet": ROUTED6_SUBNET}])
    netns = make_netns()
    code, result = env.exec("ADD", config, netns, container_id="routed6", host_netns=host)
    assert code == 0, result
    try:
        ip6 = next(ip["address"].split("/")[0] for ip in result["ips"] if ":" in ip["address"])
        if "default" not in ns_exec(netns, "ip", "-6", "route").stdout:
            gateway = next(ip["gateway"] for ip in result["ips"] if ":" in ip["address"])
            ns_exec(netns, "ip", "-6", "route", "add", "default", "via", gateway)
        _wait_for_dad(host, config["bridge"])
        with capture(router, "sw", seconds=3) as frames:
            reached = ping(netns, ROUTER_IP6)
        assert reached, "a routed IPv6 bridge container got no reply from the LAN's router"
        assert ipv6_from(frames, ip6), "the routed IPv6 network was masqueraded"
        assert ping(netns, BEYOND6) and fetch(netns, f"[{BEYOND6}]"), \
            "a routed IPv6 bridge container reached nothing beyond"
        assert not ping(router, ip6), "the LAN opened a connection into a routed IPv6 bridge network"
    finally:
        env.exec("DEL", dict(config, prevResult=result), netns, container_id="routed6", host_netns=host)


LEGACY_NOTRACK = ["PREROUTING", "-i", "rf-lan", "-m", "addrtype", "!", "--dst-type", "LOCAL",
                  "-m", "comment", "--comment", "rancher-flat rf-lan", "-j", "NOTRACK"]


def _untracked_on_the_flat_bridge(host: str) -> int:
    listing = ns_exec(host, "nft", "list", "ruleset").stdout
    match = re.search(r'iifname "rf-lan" .*counter packets (\d+) .* notrack', listing)
    assert match, listing
    return int(match.group(1))


def test_an_upgraded_host_loses_the_old_raw_rule_and_the_bridge_still_switches_untracked(routed, make_netns):
    """A host of the previous version has the raw NOTRACK rule that caught
    routed replies, and not today's notrack table (both came in one commit,
    40b662a): the next ADD on the flat network writes the table and removes
    the rule (both families); what the flat bridge switches, flat container
    to flat container here (the fast path leaves that to the bridge), still
    skips connection tracking."""
    host, env, config = routed["host"], routed["env"], routed["flat_config"]
    for tool in ("iptables", "ip6tables"):
        ns_exec(host, tool, "-w", "-t", "raw", "-A", *LEGACY_NOTRACK)
    ns_exec(host, "nft", "delete", "table", "inet", flatnet._notrack_table(load_network(config)))
    assert not ping(routed["routed"], ROUTER), "with the old rule back, the routed replies should be dropped"
    netns = make_netns()
    code, result = env.exec("ADD", config, netns, container_id="flat2", host_netns=host)
    assert code == 0, result
    try:
        for tool in ("iptables-save", "ip6tables-save"):
            assert "NOTRACK" not in ns_exec(host, tool, "-t", "raw").stdout, f"{tool}: the old rule stayed"
        assert ping(routed["routed"], ROUTER), "after the upgrade a routed bridge container still got no reply"
        before = _untracked_on_the_flat_bridge(host)
        assert ping(routed["flat"], result["ips"][0]["address"].split("/")[0], count=3)
        assert _untracked_on_the_flat_bridge(host) >= before + 6, "bridged flat traffic was tracked"
    finally:
        env.exec("DEL", dict(config, prevResult=result), netns, container_id="flat2", host_netns=host)


def test_a_bridge_container_reaches_a_flat_container_as_any_lan_host_as_the_host(lan):
    """Flat containers are LAN hosts: reached like the router, masqueraded."""
    with capture(lan["flat"], "eth0", seconds=3) as frames:
        reached = ping(lan["web"], lan["flat_ip"])
    assert reached
    assert ipv4_from(frames, HOST_IP) and not ipv4_from(frames, lan["web_ip"])


def test_the_host_keeps_its_uplinks_mac_and_its_flat_containers_reach_it(lan):
    """The host's address moved onto the flat bridge keeps the MAC the LAN
    knows, whatever ports join the bridge later (the metadata link's veth
    first); the fast path sends the flat containers' frames for that MAC to
    the host, not out of the uplink."""
    host, router, flat = lan["host"], lan["router"], lan["flat"]
    assert ns_exec(host, "cat", "/sys/class/net/rf-lan/address").stdout.strip() == UPLINK_MAC
    assert ping(router, HOST_IP)
    assert UPLINK_MAC in ns_exec(router, "ip", "neigh", "show", HOST_IP).stdout
    assert ping(flat, HOST_IP), "a flat container could not reach the host"


def test_isolation_holds_between_container_bridges_and_from_the_lan(lan):
    host, router, flat, web, db, docker = (lan[k] for k in ("host", "router", "flat", "web", "db", "docker"))
    assert ping(flat, ROUTER) and ping(router, lan["flat_ip"]), "the flat network itself must work"
    assert not ping(web, lan["db_ip"]) and not ping(db, lan["web_ip"]), "two of our bridges reached each other"
    assert not ping(web, DOCKER_IP), "a bridge container reached docker0"
    assert not ping(docker, lan["web_ip"]), "a docker0 container reached a bridge container"
    # the LAN, flat containers included, routes to the container subnets through the host: dropped
    for lan_host in (router, flat):
        ns_exec(lan_host, "ip", "route", "add", "10.123.0.0/24", "via", HOST_IP)
        ns_exec(lan_host, "ip", "route", "add", DOCKER_SUBNET, "via", HOST_IP)
        assert not ping(lan_host, lan["web_ip"]), f"{lan_host} on the LAN was routed into a bridge network"
        assert not ping(lan_host, DOCKER_IP), f"{lan_host} on the LAN was routed into docker0"
    assert "169.254.169.250" in ns_exec(flat, "ip", "route").stdout  # the metadata link is on
    assert ns_exec(host, "iptables", "-S", "FORWARD").stdout.splitlines()[0] == "-P FORWARD DROP"


def test_the_kernel_holds_the_rules_as_planned(lan):
    """iptables-save prints the isolation rules exactly as the planner writes
    them: nothing to change (else every ADD would take the slow path)."""
    drift = ns_exec(lan["host"], sys.executable, "-c",
                    "from cni_backend.net import iptables; print(iptables.derived_drift())").stdout
    assert drift.strip() == "[]"
