"""The IPsec tunnel layer (cni_backend/ipsec_tunnels.py) between two "hosts"
(namespaces joined by an underlay veth), each with its own charon, a bridge
and a container on one shared subnet: host A's containers in 10.77.0.0/26,
host B's in 10.77.0.64/26, both /24 in the containers (proxy ARP on the
bridges answers for the other host's half)."""

import os
import re
import shutil
import subprocess
import tempfile

import pytest

from cni_backend import ipsec_tunnels
from tests.conftest import ns_exec, ping

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not os.access(ipsec_tunnels.CHARON, os.X_OK),
                       reason="strongSwan's charon is not installed (make deps)"),
    pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun for kernel-libipsec"),
]

HOSTS = (  # underlay, bridge address, container address, own half, other half
    ("10.99.7.1", "10.77.0.1", "10.77.0.2", "10.77.0.0/26", "10.77.0.64/26"),
    ("10.99.7.2", "10.77.0.65", "10.77.0.66", "10.77.0.64/26", "10.77.0.0/26"),
)


def counter(host: str, chain: str, tag: str) -> int:
    """Packets counted by the rule commented `tag` in the host's filter table."""
    for line in ns_exec(host, "iptables", "-w", "-t", "filter", "-L", chain, "-v", "-x", "-n").stdout.splitlines():
        if f"/* {tag} */" in line:
            return int(line.split()[0])
    raise AssertionError(f"no counter {tag} in {chain}")


def make_host(host: str, container: str, bridge_ip: str, container_ip: str) -> None:
    ns_exec(host, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    ns_exec(host, "ip", "link", "add", "br0", "type", "bridge")
    ns_exec(host, "ip", "addr", "add", f"{bridge_ip}/24", "dev", "br0")
    ns_exec(host, "ip", "link", "set", "br0", "up")
    ns_exec(host, "sysctl", "-qw", "net.ipv4.conf.br0.proxy_arp=1")
    ns_exec(host, "ip", "link", "add", "veth0", "type", "veth", "peer", "name", "eth0", "netns", container)
    ns_exec(host, "ip", "link", "set", "veth0", "master", "br0", "up")
    ns_exec(container, "ip", "addr", "add", f"{container_ip}/24", "dev", "eth0")
    ns_exec(container, "ip", "link", "set", "eth0", "up")
    ns_exec(container, "ip", "route", "add", "default", "via", bridge_ip)


@pytest.fixture
def charons(make_netns):
    started = []
    state = tempfile.mkdtemp(prefix="ipsec-", dir="/run/rancher-cni" if os.path.isdir("/run/rancher-cni") else None)
    yield started, state
    for charon in started:
        charon.stop()
    shutil.rmtree(state, ignore_errors=True)


def two_hosts(make_netns, started, state, psk_b=None):
    """Host A and B joined by an underlay, a container on each, a charon on
    each with the tunnel loaded (B's key from `psk_b` if given)."""
    host_a, host_b = make_netns(), make_netns()
    ns_exec(host_a, "ip", "link", "add", "underlay", "type", "veth", "peer", "name", "underlay", "netns", host_b)
    containers = []
    for host, (underlay, bridge_ip, container_ip, _, _) in zip((host_a, host_b), HOSTS):
        ns_exec(host, "ip", "addr", "add", f"{underlay}/24", "dev", "underlay")
        ns_exec(host, "ip", "link", "set", "underlay", "up")
        container = make_netns()
        make_host(host, container, bridge_ip, container_ip)
        containers.append(container)
        # what crosses the underlay: ESP in UDP 4500 counted, container addresses in clear counted
        for rule in (["OUTPUT", "-o", "underlay", "-p", "udp", "--dport", "4500", "-m", "comment", "--comment", "natt-out"],
                     ["INPUT", "-i", "underlay", "-p", "udp", "--dport", "4500", "-m", "comment", "--comment", "natt-in"],
                     ["FORWARD", "-o", "underlay", "-m", "comment", "--comment", "clear-out"],
                     ["FORWARD", "-i", "underlay", "-m", "comment", "--comment", "clear-in"]):
            ns_exec(host, "iptables", "-w", "-A", *rule)
    psk = write_psk(os.path.join(state, "psk"))
    for n, host in enumerate((host_a, host_b)):
        charon = ipsec_tunnels.Charon(os.path.join(state, f"host{n}"), datapath="libipsec", netns=host)
        started.append(charon)
        charon.start()
    for n in (1, 0):  # the responder first: the initiator (A, the lower address) finds it ready
        local, remote = HOSTS[n], HOSTS[1 - n]
        tunnel = ipsec_tunnels.Tunnel.from_config(
            name="net1", local_address=local[0], remote_address=remote[0],
            local_subnets=[local[3]], remote_subnets=[local[4]], psk_file=psk_b if n == 1 and psk_b else psk)
        assert tunnel.initiator == (n == 0)
        started[n].load(tunnel)
    return (host_a, host_b), containers


def write_psk(path: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, os.urandom(24).hex().encode())
    os.close(fd)
    return path


def test_containers_on_two_hosts_talk_through_an_esp_in_udp_tunnel(charons, make_netns):
    started, state = charons
    (host_a, host_b), (container_a, container_b) = two_hosts(make_netns, started, state)
    for charon in started:
        sas = charon.wait_installed("net1")
        assert sas["udp_encap"] == {"net1": True}, "ESP is encapsulated in UDP (encap=yes) though there is no NAT"
    listed = subprocess.run(["swanctl", "--list-sas", "--uri", f"unix://{started[0].vici_socket}"],
                            capture_output=True, text=True, check=True).stdout
    assert re.search(r"net1: #\d+, reqid \d+, INSTALLED, TUNNEL-in-UDP, ESP:AES_CBC-128/HMAC_SHA2_256_128", listed), listed
    assert re.search(r"local +10\.77\.0\.0/26\n +remote +10\.77\.0\.64/26", listed), listed
    assert listed.count("ESTABLISHED") == 1, f"one IKE_SA between the two hosts, not one each: {listed}"

    assert ping(container_a, HOSTS[1][2], count=3), "host A's container reaches host B's through the tunnel"
    assert ping(container_b, HOSTS[0][2], count=3), "and back"
    routes = ns_exec(host_a, "ip", "route", "show", "table", "220").stdout
    assert "10.77.0.64/26 via" in routes or "10.77.0.64/26 dev ipsec0" in routes, routes
    for host in (host_a, host_b):
        assert counter(host, "OUTPUT", "natt-out") > 0 and counter(host, "INPUT", "natt-in") > 0, \
            "the underlay carries ESP in UDP 4500 both ways"
        assert counter(host, "FORWARD", "clear-out") == 0 and counter(host, "FORWARD", "clear-in") == 0, \
            "no container packet crosses the underlay in clear"

    # unloading a tunnel takes its SAs and routes away; stopping charon its TUN device
    started[0].unload("net1")
    assert "net1" not in started[0].sas()
    assert not ping(container_a, HOSTS[1][2]), "with the tunnel gone, no traffic in clear either"
    for charon in started:
        charon.stop()
    for host in (host_a, host_b):
        assert ns_exec(host, "ip", "link", "show", "ipsec0", check=False).returncode != 0, "charon removed ipsec0"


def test_a_host_with_the_wrong_key_gets_no_tunnel_and_no_traffic(charons, make_netns):
    started, state = charons
    wrong = write_psk(os.path.join(state, "wrong-psk"))
    (host_a, _), (container_a, _) = two_hosts(make_netns, started, state, psk_b=wrong)
    with pytest.raises(ipsec_tunnels.CNIError) as e:
        started[0].wait_installed("net1", timeout=8)
    assert "AUTHENTICATION_FAILED" in e.value.details, e.value.details
    assert not ping(container_a, HOSTS[1][2]), "no tunnel, and nothing in clear either"
    assert counter(host_a, "FORWARD", "clear-out") == 0
    for name in ("psk", "wrong-psk"):
        key = open(os.path.join(state, name)).read()
        for charon in started:
            assert key not in open(charon.log_file).read(), "the key is not in charon's log"
