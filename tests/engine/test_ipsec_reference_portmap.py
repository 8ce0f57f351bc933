"""`-o portmap=reference` on a rancher-ipsec network: Docker's `-p` published
through the reference `portmap` plug-in (Debian's containernetworking-plugins
in /usr/lib/cni), with the "other host" of test_docker_ipsec.py (a namespace
running the rancher-ipsec plug-in with its own charon) across an underlay
veth. The published port answers a router namespace, the host's 127.0.0.1
and the other host's workload through the tunnel at this host's gateway
address; rancher-portmap's route_localnet guard covers the network's ri-
bridge; rm and network rm leave no rule, no guard, no route_localnet=1.
Traffic only to the test's own containers and namespaces."""

import json
import os
import time

import pytest

from cni_backend import ipsec_tunnels
from tests.conftest import ns_exec, run
from tests.engine.helpers import address, container
from tests.engine.test_conflist_portmap import dnat_through_portmap, portmap_base_chains, portmap_rules  # noqa: F401
from tests.engine.test_docker_ipsec import attach_on_other_host, ipsec_network, other_host  # noqa: F401
from tests.engine.test_published_ports import WEB, settings
from tests.engine.test_reference_portmap import from_router, route_localnet
from tests.netns.test_edge_attacks import loopback_service  # noqa: F401
from tests.rigs import router_with_uplink, wait_for_http

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(not os.access("/usr/lib/cni/portmap", os.X_OK), reason="containernetworking-plugins missing"),
    pytest.mark.skipif(not os.access(ipsec_tunnels.CHARON, os.X_OK),
                       reason="strongSwan's charon is not installed (make deps)"),
    pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun for kernel-libipsec"),
]
ROUTER, HOST = "10.164.0.1", "10.164.0.2"  # from_router's
GATEWAY = "10.45.1.1"  # this host's block's first address (ipsec_network's --ip-range)


def localnet_guards(bridge: str) -> list:
    """[packets, rule] of each guard on `bridge` in the raw table, wherever it
    sits (RANCHER-CNI-LOCALNET itself or an attachment's chain jumped to from it)."""
    guards = []
    for line in run("iptables-save", "-c", "-t", "raw").stdout.splitlines():
        counters, _, rule = line.partition(" ")
        if line.startswith("[") and f"-d 127.0.0.0/8 -i {bridge} " in rule and rule.endswith("-j DROP"):
            guards.append([int(counters.strip("[]").split(":")[0]), rule])
    return guards


def test_on_rancher_ipsec_the_port_answers_through_the_tunnel_the_guard_covers_the_bridge_and_nothing_is_left(
        docker, other_host, make_netns, loopback_service, portmap_base_chains):  # noqa: F811
    router, _ = router_with_uplink(make_netns, f"{ROUTER}/24", f"{HOST}/24")
    net = ipsec_network(docker, other_host["psk"], "-o", "portmap=reference")
    assert json.loads(docker("network", "inspect", net).stdout)[0]["Options"]["portmap"] == "reference"
    bridge = "ri-" + json.loads(docker("network", "inspect", net).stdout)[0]["Id"][:12]
    web = container(docker, net, "-p", "18240:80", command=WEB)
    hostname = settings(docker, web, net)["Config"]["Hostname"]

    assert from_router(router, 18240).strip() == hostname, "reached from another namespace"
    assert wait_for_http("http://127.0.0.1:18240/").strip() == hostname, "and from the host's 127.0.0.1"
    assert dnat_through_portmap(address(docker, web, net)) == [18240], "the reference portmap's CNI-DN-* chain"
    assert "--dport 18240 " not in "".join(r for r in run("iptables-save", "-t", "nat").stdout.splitlines()
                                           if "RANCHER-CNI-HOSTPORT" in r), "not rancher-portmap"
    assert len(localnet_guards(bridge)) == 1 and route_localnet(bridge) == "1", "route_localnet only behind the guard"

    workload, _ = attach_on_other_host(other_host, make_netns)
    deadline = time.monotonic() + 40  # the first IKE exchange, then the CHILD_SA
    while (done := ns_exec(workload, "curl", "-s", "--max-time", "3", f"http://{GATEWAY}:18240/",
                           check=False)).returncode != 0:
        assert time.monotonic() < deadline, f"the other host's workload never reached {GATEWAY}:18240: {done.stderr}"
        time.sleep(0.5)
    assert done.stdout.strip() == hostname, "the other host's workload, through the tunnel and the reference portmap"
    # what comes out of the tunnel arrives on kernel-libipsec's ipsec0, not on the bridge: route_localnet stays
    # off there, so an inner packet to 127.0.0.0/8 would be a martian even past charon's policies (which carry
    # only the blocks of the subnet)
    assert route_localnet("ipsec0") == "0" and route_localnet("all") == "0"

    # a container of the network routing 127.0.0.1 to its gateway: the guard on ri-* drops it (CVE-2020-8558)
    attacker = container(docker, net, "--cap-add", "NET_ADMIN", "--sysctl", "net.ipv4.conf.all.route_localnet=1",
                         "--sysctl", "net.ipv4.conf.eth0.route_localnet=1")
    asked = docker("exec", attacker, "sh", "-c", f"ip addr flush dev lo && ip route add 127.0.0.1/32 via {GATEWAY} "
                   f"dev eth0 && echo -e 'GET / HTTP/1.0\\r\\n' | nc -w 3 127.0.0.1 {loopback_service}", check=False)
    assert "loopback-only" not in asked.stdout, "a container reached a service bound to the host's 127.0.0.1"
    assert asked.returncode != 0, asked.stderr
    assert localnet_guards(bridge)[0][0] > 0, "the probe met the guard on the ipsec network's bridge"

    for name in (web, attacker):
        docker("rm", "-f", name)
        docker.made["containers"].remove(name)
    assert portmap_rules() == [], "no CNI-DN-* chain, no CNI-HOSTPORT-DNAT jump left"
    assert localnet_guards(bridge) == [] and route_localnet(bridge) == "0", "route_localnet off with the last guard"
    docker("network", "rm", net)
    docker.made["networks"].remove(net)
    assert portmap_rules() == [] and localnet_guards(bridge) == []
    assert not [r for r in run("iptables-save").stdout.splitlines() if "CNI-DN-" in r or bridge in r]
