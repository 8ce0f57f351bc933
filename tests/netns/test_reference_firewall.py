"""The reference `firewall` plug-in (Debian's containernetworking-plugins)
chained after our bridge. Alone it inserts its CNI-FORWARD chain first in
FORWARD and accepts everything the container sends there, ahead of our
isolation rules: the container then reaches another of our networks. With
`firewallChained` (what `-o firewall=true` renders) our jump is put back
above CNI-FORWARD and the container's ACCEPTs yield to CNI-FORWARD, so our
isolation decides first and the admin's CNI-ADMIN rules then apply. Run in a
namespace standing in for the host, with Docker's FORWARD DROP policy."""

import json
import os
import subprocess
import sys

import pytest

from cni_backend import ipsec_tunnels
from cni_backend.plugins import ipsec
from tests.conftest import CNIEnv, ns_exec, ping, run
from tests.netns.test_flat import rig  # noqa: F401  (a fixture: the LAN's router, the metadata bridge)
from tests.netns.test_ipsec import hosts as ipsec_hosts  # noqa: F401  (a fixture: two hosts, a key)

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(not os.access("/usr/lib/cni/firewall", os.X_OK),
                                 reason="containernetworking-plugins missing")]


def reference_firewall(command, host, netns, result, name, container_id, **settings):
    """Run the reference firewall plug-in as a runtime chains it after ours
    (`host`: the namespace standing in for the host; None: this one)."""
    config = {"cniVersion": "1.0.0", "name": name, "type": "firewall", "backend": "iptables",
              "prevResult": dict(result, cniVersion="1.0.0"), **settings}
    env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID=container_id, CNI_IFNAME="eth0",
               CNI_NETNS=f"/var/run/netns/{netns}", CNI_PATH="/usr/lib/cni")
    argv = (["ip", "netns", "exec", host] if host else []) + ["/usr/lib/cni/firewall"]
    done = subprocess.run(argv, input=json.dumps(config).encode(), env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_reference_firewall_after_our_bridge_opens_the_way_into_our_other_networks(tmp_path, make_netns):
    env = CNIEnv(tmp_path, daemon=False)
    host = make_netns()
    if ns_exec(host, "sysctl", "-w", "net.bridge.bridge-nf-call-iptables=1", check=False).returncode:
        pytest.skip("br_netfilter is not available in this kernel")
    ns_exec(host, "sysctl", "-w", "net.ipv4.ip_forward=1")
    ns_exec(host, "iptables", "-P", "FORWARD", "DROP")
    red = env.bridge_config(subnet="10.127.11.0/24", cniVersion="1.0.0")
    blue = env.bridge_config(subnet="10.127.12.0/24", cniVersion="1.0.0")
    a, b = make_netns(), make_netns()
    try:
        _, ra = env.exec("ADD", red, a, container_id="ca", host_netns=host)
        _, rb = env.exec("ADD", blue, b, container_id="cb", host_netns=host)
        target = rb["ips"][0]["address"].split("/")[0]
        ns_exec(a, "ip", "route", "add", "10.127.12.0/24", "via", "10.127.11.1")
        ns_exec(b, "ip", "route", "add", "10.127.11.0/24", "via", "10.127.12.1")  # the way back
        assert ping(a, "10.127.11.1") and not ping(a, target), "our isolation keeps red and blue apart"

        reference_firewall("ADD", host, a, ra, red["name"], "ca")
        assert "-A CNI-FORWARD -s 10.127.11.2/32 -j ACCEPT" in ns_exec(host, "iptables", "-S", "CNI-FORWARD").stdout
        forward = ns_exec(host, "iptables", "-S", "FORWARD").stdout.splitlines()
        assert forward[1].endswith("-j CNI-FORWARD"), forward  # first, ahead of ours
        assert ping(a, target), "the reference firewall's ACCEPT let red into blue"

        reference_firewall("DEL", host, a, ra, red["name"], "ca")
        saved = ns_exec(host, "iptables-save").stdout
        assert not [line for line in saved.splitlines() if line.startswith("-A CNI-FORWARD -s 10.127.11.2/32")]
        assert ra["ips"][0]["address"].split("/")[0] not in ns_exec(host, "iptables", "-S", "CNI-FORWARD").stdout, \
            "its DEL takes the container's rules"
        assert ":CNI-ADMIN" in saved and ":CNI-FORWARD" in saved, "and leaves its chains (the admin's) in place"
        assert not ping(a, target)
    finally:
        for config, netns, cid, result in ((red, a, "ca", None), (blue, b, "cb", None)):
            env.exec("DEL", config, netns, container_id=cid, host_netns=host)
        env.close()


OUTSIDE = "10.127.30.2"  # a namespace behind a veth of the host: the world outside


def repair_firewall(host):
    """What the shim runs after an ADD of a chain with firewall (hostnet.repair_firewall)."""
    ns_exec(host, sys.executable, "-c", "from cni_backend import hostnet; hostnet.repair_firewall()")


def derived_drift(host) -> str:
    return ns_exec(host, sys.executable, "-c",
                   "from cni_backend.net import iptables; print(iptables.derived_drift())").stdout.strip()


def forward_jumps(host) -> list:
    return [line.split()[-1] for line in ns_exec(host, "iptables", "-S", "FORWARD").stdout.splitlines()[1:]]


def test_with_firewall_chained_our_isolation_decides_first_and_cni_admin_applies(tmp_path, make_netns):
    env = CNIEnv(tmp_path, daemon=False)
    host, outside = make_netns(), make_netns()
    if ns_exec(host, "sysctl", "-w", "net.bridge.bridge-nf-call-iptables=1", check=False).returncode:
        pytest.skip("br_netfilter is not available in this kernel")
    ns_exec(host, "sysctl", "-w", "net.ipv4.ip_forward=1")
    ns_exec(host, "iptables", "-P", "FORWARD", "DROP")
    ns_exec(host, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", outside)
    ns_exec(host, "ip", "addr", "add", "10.127.30.1/24", "dev", "up0")
    ns_exec(host, "ip", "link", "set", "up0", "up")
    ns_exec(outside, "ip", "addr", "add", f"{OUTSIDE}/24", "dev", "eth0")
    ns_exec(outside, "ip", "link", "set", "eth0", "up")
    ns_exec(outside, "ip", "route", "add", "10.127.0.0/16", "via", "10.127.30.1")
    # the uplink: whatever our containers send out of their networks leaves by it
    ns_exec(host, "iptables", "-A", "FORWARD", "-i", "up0", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
            "-j", "ACCEPT")
    red = env.bridge_config(subnet="10.127.21.0/24", cniVersion="1.0.0", firewallChained=True)
    blue = env.bridge_config(subnet="10.127.22.0/24", cniVersion="1.0.0")
    green = env.bridge_config(subnet="10.127.23.0/24", cniVersion="1.0.0", internal=True, firewallChained=True)
    a, b, g = make_netns(), make_netns(), make_netns()
    added = []
    try:
        for config, netns, cid in ((red, a, "ca"), (blue, b, "cb"), (green, g, "cg")):
            code, result = env.exec("ADD", config, netns, container_id=cid, host_netns=host)
            assert code == 0, result
            added.append((config, netns, cid, result))
        ra, rg = added[0][3], added[2][3]
        ip_a, ip_b = (r["ips"][0]["address"].split("/")[0] for r in (ra, added[1][3]))
        for netns, subnet, gateway in ((a, "10.127.0.0/16", "10.127.21.1"), (b, "10.127.0.0/16", "10.127.22.1"),
                                       (g, "10.127.0.0/16", "10.127.23.1")):
            ns_exec(netns, "ip", "route", "add", subnet, "via", gateway)
        assert not ping(a, ip_b), "our isolation keeps red and blue apart"

        reference_firewall("ADD", host, a, ra, red["name"], "ca")
        reference_firewall("ADD", host, g, rg, green["name"], "cg")
        assert forward_jumps(host)[0] == "CNI-FORWARD", "the reference firewall put its jump first"
        repair_firewall(host)
        jumps = forward_jumps(host)
        assert jumps.index("RANCHER-CNI-FORWARD") < jumps.index("CNI-FORWARD"), jumps
        assert derived_drift(host) == "[]", "the planner accepts our jump above CNI-FORWARD"
        assert f"-A CNI-FORWARD -s {ip_a}/32 -j ACCEPT" in ns_exec(host, "iptables", "-S", "CNI-FORWARD").stdout

        assert ping(a, "10.127.21.1") and ping(a, OUTSIDE), "red reaches its gateway and the outside"
        assert not ping(a, ip_b), "red still does not reach blue"
        assert not ping(b, ip_a), "nor blue red"
        assert not ping(g, OUTSIDE) and not ping(g, ip_a), "the internal network stays closed"

        # a host outside claiming red's address (CNI-FORWARD's `-s IP -j ACCEPT` names no interface)
        ns_exec(host, "sysctl", "-w", "net.ipv4.conf.all.rp_filter=2", "net.ipv4.conf.up0.rp_filter=2")  # loose
        ns_exec(outside, "ip", "addr", "add", f"{ip_a}/32", "dev", "eth0")
        ns_exec(b, "iptables", "-A", "INPUT", "-s", ip_a, "-p", "icmp", "-j", "ACCEPT")
        ns_exec(outside, "ping", "-c", "2", "-W", "1", "-I", ip_a, ip_b, check=False)
        counted = ns_exec(b, "iptables", "-L", "INPUT", "-v", "-x", "-n").stdout.splitlines()[2].split()[0]
        assert counted == "0", "a packet claiming red's address from outside reached blue"
        ns_exec(outside, "ip", "addr", "del", f"{ip_a}/32", "dev", "eth0")

        # the admin's rule in CNI-ADMIN is honoured for our container (our ACCEPTs yield to CNI-FORWARD)
        ns_exec(host, "iptables", "-A", "CNI-ADMIN", "-d", OUTSIDE, "-j", "DROP")
        assert not ping(a, OUTSIDE), "the admin's DROP in CNI-ADMIN applies to red's container"
        ns_exec(host, "iptables", "-D", "CNI-ADMIN", "-d", OUTSIDE, "-j", "DROP")
        assert ping(a, OUTSIDE)

        # something puts CNI-FORWARD back first: doctor's drift check reports the move, repair undoes it
        ns_exec(host, "iptables", "-D", "FORWARD", "-m", "comment", "--comment", "CNI firewall plugin rules",
                "-j", "CNI-FORWARD")
        ns_exec(host, "iptables", "-I", "FORWARD", "1", "-m", "comment", "--comment", "CNI firewall plugin rules",
                "-j", "CNI-FORWARD")
        assert "RANCHER-CNI-FORWARD" in derived_drift(host)
        repair_firewall(host)
        assert derived_drift(host) == "[]" and not ping(a, ip_b)

        for config, netns, cid, result in reversed(added):
            if config is not blue:
                reference_firewall("DEL", host, netns, result, config["name"], cid)
            assert env.exec("DEL", config, netns, container_id=cid, host_netns=host)[0] == 0
        added.clear()
        saved = ns_exec(host, "iptables-save").stdout
        assert "RANCHER-CNI" not in saved and "rcni" not in saved, saved
        assert ip_a not in saved, "nothing of the container is left, in CNI-FORWARD either"
        assert ":CNI-ADMIN" in saved, "the reference firewall's chains stay, as it intends"
    finally:
        for config, netns, cid, result in added:
            env.exec("DEL", config, netns, container_id=cid, host_netns=host)
        env.close()


# -- the other backends: VXLAN, IPsec, flat --------------------------------------------

SAME_BRIDGE = "CNI firewall plugin rules (ingressPolicy: same-bridge)"


def docker_like_host(host, outside, routed=("10.127.0.0/16",)):
    """`host` as Docker leaves a host (FORWARD DROP, br_netfilter), with an
    uplink up0 to `outside` (OUTSIDE), which routes `routed` back via the host."""
    if ns_exec(host, "sysctl", "-w", "net.bridge.bridge-nf-call-iptables=1", check=False).returncode:
        pytest.skip("br_netfilter is not available in this kernel")
    ns_exec(host, "sysctl", "-w", "net.ipv4.ip_forward=1")
    ns_exec(host, "iptables", "-P", "FORWARD", "DROP")
    ns_exec(host, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", outside)
    ns_exec(host, "ip", "addr", "add", "10.127.30.1/24", "dev", "up0")
    ns_exec(host, "ip", "link", "set", "up0", "up")
    ns_exec(outside, "ip", "addr", "add", f"{OUTSIDE}/24", "dev", "eth0")
    ns_exec(outside, "ip", "link", "set", "eth0", "up")
    for subnet in routed:
        ns_exec(outside, "ip", "route", "add", subnet, "via", "10.127.30.1")
    ns_exec(host, "iptables", "-A", "FORWARD", "-i", "up0", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
            "-j", "ACCEPT")


def on_host(host, *argv, check=True):
    """A command in `host`, the namespace standing in for the host; None: this one."""
    return ns_exec(host, *argv, check=check) if host else run(*argv, check=check)


def address(result) -> str:
    return result["ips"][0]["address"].split("/")[0]


def spoofed_pings_counted(host, sender, claimed, target, via_iface="up0", sender_iface="eth0") -> int:
    """Pings `sender` sends claiming `claimed` to `target` (a namespace), as
    counted in `target`'s INPUT: 0 when the host dropped them."""
    on_host(host, "sysctl", "-w", "net.ipv4.conf.all.rp_filter=2", f"net.ipv4.conf.{via_iface}.rp_filter=2")  # loose
    ns_exec(sender, "ip", "addr", "add", f"{claimed}/32", "dev", sender_iface)
    ns_exec(target, "iptables", "-I", "INPUT", "-s", claimed, "-p", "icmp", "-j", "ACCEPT")
    try:
        ns_exec(sender, "ping", "-c", "2", "-W", "1", "-I", claimed, address_of(target), check=False)
        return int(ns_exec(target, "iptables", "-L", "INPUT", "-v", "-x", "-n").stdout.splitlines()[2].split()[0])
    finally:
        ns_exec(target, "iptables", "-D", "INPUT", "-s", claimed, "-p", "icmp", "-j", "ACCEPT")
        ns_exec(sender, "ip", "addr", "del", f"{claimed}/32", "dev", sender_iface)


def address_of(netns) -> str:
    return json.loads(ns_exec(netns, "ip", "-j", "-4", "addr", "show", "dev", "eth0").stdout)[0]["addr_info"][0]["local"]


def admin_drop_applies(host, container, target) -> bool:
    """The admin's DROP in CNI-ADMIN stops `container` reaching `target`, which it reaches without it."""
    assert ping(container, target)
    on_host(host, "iptables", "-A", "CNI-ADMIN", "-d", target, "-j", "DROP")
    try:
        return not ping(container, target)
    finally:
        on_host(host, "iptables", "-D", "CNI-ADMIN", "-d", target, "-j", "DROP")


def same_bridge_rules(host, bridge) -> list:
    return [line for line in ns_exec(host, "iptables-save", "-t", "filter").stdout.splitlines()
            if SAME_BRIDGE in line and f" {bridge} " in line + " "]


def nerdctl_like_network(env, host, netns):
    """A bridge network of the reference plug-ins, as nerdctl makes one: bridge + host-local, firewall with
    ingressPolicy=same-bridge. Its bridge is no bridge of ours: our isolation does not name it."""
    config = {"cniVersion": "1.0.0", "name": "nerd", "type": "bridge", "bridge": "rcnitnerd0", "isGateway": True,
              "isDefaultGateway": True, "ipMasq": False,
              "ipam": {"type": "host-local", "dataDir": str(env.state / "host-local"),
                       "ranges": [[{"subnet": "10.127.40.0/24"}]]}}
    code, result = env.exec("ADD", config, netns, container_id="cn", host_netns=host)
    assert code == 0, result
    reference_firewall("ADD", host, netns, result, "nerd", "cn", ingressPolicy="same-bridge")
    return config, result


def vxlan_config(env, peer, first: int, **extra) -> dict:
    config = {"cniVersion": "1.0.0", "name": "overlay", "type": "rancher-vxlan", "vni": 1042, "bridge": "rcnitvx0",
              "vtepDev": "underlay", "peers": [peer] if peer else [], "stateDir": str(env.state),
              "isGateway": True, "isDefaultGateway": True, "ipMasq": False,
              "ipam": {"type": "rancher-ipam", "dataDir": str(env.state),
                       "ranges": [[{"subnet": "10.42.0.0/16", "rangeStart": f"10.42.{first}.2",
                                    "rangeEnd": f"10.42.{first}.254"}]]}}
    config.update(extra)
    return config


def remove_vxlan_network(host, config):
    code = ("import json, sys; from cni_backend import vxlannet; from cni_backend.plugins import vxlan; "
            "vxlannet.remove(vxlan.load_network(json.loads(sys.argv[1])))")
    ns_exec(host, sys.executable, "-c", code, json.dumps(config))


def test_vxlan_with_the_firewall_and_same_bridge_keeps_its_subnet_open_and_its_isolation(tmp_path, make_netns):
    """Host A: a VXLAN network with the reference firewall chained (ingressPolicy=same-bridge), a
    rancher-bridge network with it chained (open), an internal VXLAN network with it, and a nerdctl-like
    network of the reference plug-ins (same-bridge); host B: the VXLAN network's other end."""
    host_a, host_b, outside = make_netns(), make_netns(), make_netns()
    docker_like_host(host_a, outside, routed=("10.127.0.0/16", "10.42.0.0/16"))
    ns_exec(host_a, "ip", "link", "add", "underlay", "type", "veth", "peer", "name", "underlay", "netns", host_b)
    for host, cidr in ((host_a, "10.99.0.1/24"), (host_b, "10.99.0.2/24")):
        ns_exec(host, "ip", "addr", "add", cidr, "dev", "underlay")
        ns_exec(host, "ip", "link", "set", "underlay", "mtu", "1500", "up")
    envs = []
    for n in range(2):
        (tmp_path / f"h{n}").mkdir()
        envs.append(CNIEnv(tmp_path / f"h{n}", daemon=False))
    env = envs[0]
    overlay = vxlan_config(env, "10.99.0.2", 1, firewallChained=True)
    remote = vxlan_config(envs[1], "10.99.0.1", 2)
    sealed = vxlan_config(env, None, 1, name="sealed", vni=1043, bridge="rcnitvx1", isDefaultGateway=False,
                          internal=True, firewallChained=True,
                          ipam={"type": "rancher-ipam", "dataDir": str(env.state),
                                "ranges": [[{"subnet": "10.44.0.0/24"}]]})
    blue = env.bridge_config(subnet="10.127.22.0/24", cniVersion="1.0.0", isDefaultGateway=True,
                             firewallChained=True)
    a, r, b, g, n = (make_netns() for _ in range(5))
    added, nerd = [], None
    try:
        for e, config, netns, cid, host, policy in (
                (env, overlay, a, "ca", host_a, "same-bridge"), (envs[1], remote, r, "cr", host_b, None),
                (env, blue, b, "cb", host_a, "open"), (env, sealed, g, "cg", host_a, "open")):
            code, result = e.exec("ADD", config, netns, container_id=cid, host_netns=host)
            assert code == 0, result
            added.append((e, config, netns, cid, host, result, policy))
            if policy:
                reference_firewall("ADD", host, netns, result, config["name"], cid, ingressPolicy=policy)
        nerd = nerdctl_like_network(env, host_a, n)
        ns_exec(g, "ip", "route", "add", "default", "via", "10.44.0.1")
        repair_firewall(host_a)
        ra, rr, rb, rg = (entry[5] for entry in added)
        ip_a, ip_r, ip_b, ip_g, ip_n = map(address, (ra, rr, rb, rg, nerd[1]))
        jumps = forward_jumps(host_a)
        assert jumps.index("RANCHER-CNI-FORWARD") < jumps.index("CNI-FORWARD"), jumps
        assert derived_drift(host_a) == "[]"

        assert ping(a, ip_r) and ping(r, ip_a), "the subnet stays open across the VTEP, both ways"
        assert ping(a, OUTSIDE), "and the way out"
        assert not ping(a, ip_b) and not ping(b, ip_a), "our isolation keeps the VXLAN and bridge networks apart"
        assert not ping(g, OUTSIDE) and not ping(g, ip_a) and not ping(a, ip_g), "the internal network stays closed"
        # same-bridge: the nerdctl-like bridge, which our isolation does not name, is kept apart from the
        # VXLAN network (both same-bridge), not from the bridge network (open)
        assert ping(b, ip_n), "open: our isolation leaves a foreign bridge reachable"
        assert not ping(a, ip_n) and not ping(n, ip_a), "same-bridge drops between the two same-bridge bridges"
        assert len(same_bridge_rules(host_a, "rcnitvx0")) == 2

        assert spoofed_pings_counted(host_a, outside, ip_a, b) == 0, \
            "a packet claiming the VXLAN container's address from outside reached the bridge network"
        assert admin_drop_applies(host_a, a, OUTSIDE), "the admin's CNI-ADMIN rule applies to the VXLAN container"

        for e, config, netns, cid, host, result, policy in reversed(added):
            if policy:
                reference_firewall("DEL", host, netns, result, config["name"], cid, ingressPolicy=policy)
            assert e.exec("DEL", config, netns, container_id=cid, host_netns=host)[0] == 0
        added.clear()
        assert same_bridge_rules(host_a, "rcnitvx0") == [], "our DEL took the VXLAN bridge's same-bridge rules"
        assert len(same_bridge_rules(host_a, "rcnitnerd0")) == 2, "and left the foreign bridge's"
        for config in (overlay, sealed):  # network rm: the VTEP guards go with the networks
            remove_vxlan_network(host_a, config)
        saved = ns_exec(host_a, "iptables-save").stdout
        assert "RANCHER-CNI" not in saved and "rcni-" not in saved, saved
        assert not [ip for ip in (ip_a, ip_b, ip_g) if ip in saved], saved
    finally:
        for e, config, netns, cid, host, result, policy in added:
            e.exec("DEL", config, netns, container_id=cid, host_netns=host)
        if nerd:
            env.exec("DEL", nerd[0], n, container_id="cn", host_netns=host_a)
        for e in envs:
            e.close()


@pytest.mark.skipif(not os.access(ipsec_tunnels.CHARON, os.X_OK) or not os.path.exists("/dev/net/tun"),
                    reason="strongSwan's charon or /dev/net/tun is missing (make deps)")
def test_ipsec_with_the_firewall_keeps_its_subnet_open_through_the_tunnel_and_its_isolation(ipsec_hosts,
                                                                                             make_netns):
    """Host A: an IPsec network with the reference firewall chained (same-bridge) and a rancher-bridge
    network; host B: the IPsec network's other end, through the tunnel."""
    from tests.netns.test_ipsec import ipsec_config, remove_network, wait_child
    (host_a, host_b), envs, psk = ipsec_hosts
    outside = make_netns()
    docker_like_host(host_a, outside, routed=("10.127.0.0/16", "10.43.0.0/16"))
    env = envs[0]
    secure = dict(ipsec_config(env, 0, psk), firewallChained=True)
    remote = ipsec_config(envs[1], 1, psk)
    blue = env.bridge_config(subnet="10.127.22.0/24", cniVersion="1.0.0", isDefaultGateway=True)
    a, r, b = make_netns(), make_netns(), make_netns()
    added = []
    try:
        for e, config, netns, cid, host, policy in ((envs[1], remote, r, "cr", host_b, None),  # B responds
                                                    (env, secure, a, "ca", host_a, "same-bridge"),
                                                    (env, blue, b, "cb", host_a, None)):
            code, result = e.exec("ADD", config, netns, container_id=cid, host_netns=host)
            assert code == 0, result
            added.append((e, config, netns, cid, host, result, policy))
            if policy:
                reference_firewall("ADD", host, netns, result, config["name"], cid, ingressPolicy=policy)
        repair_firewall(host_a)
        charon_a = ipsec_tunnels.Charon(str(env.state / "ipsec" / "charon"))
        wait_child(charon_a, ipsec.load_network(secure).connection("10.99.9.2"))
        rr, ra, rb = (entry[5] for entry in added)
        ip_a, ip_r, ip_b = map(address, (ra, rr, rb))
        ns_exec(a, "ip", "route", "add", "default", "via", "10.43.1.1")
        jumps = forward_jumps(host_a)
        assert jumps.index("RANCHER-CNI-FORWARD") < jumps.index("CNI-FORWARD"), jumps
        assert derived_drift(host_a) == "[]"

        assert ping(a, ip_r, count=3) and ping(r, ip_a), "the subnet stays open through the tunnel, both ways"
        assert ping(a, OUTSIDE), "and the way out"
        assert not ping(a, ip_b) and not ping(b, ip_a), "our isolation keeps the IPsec and bridge networks apart"
        assert len(same_bridge_rules(host_a, secure["bridge"])) == 2
        assert spoofed_pings_counted(host_a, outside, ip_a, b) == 0, \
            "a packet claiming the IPsec container's address from outside reached the bridge network"
        assert admin_drop_applies(host_a, a, OUTSIDE), "the admin's CNI-ADMIN rule applies to the IPsec container"

        for e, config, netns, cid, host, result, policy in reversed(added):
            if policy:
                reference_firewall("DEL", host, netns, result, config["name"], cid, ingressPolicy=policy)
            assert e.exec("DEL", config, netns, container_id=cid, host_netns=host)[0] == 0
        added.clear()
        assert same_bridge_rules(host_a, secure["bridge"]) == [], "our DEL took the IPsec bridge's same-bridge rules"
        for host, config in ((host_a, secure), (host_b, remote)):
            remove_network(host, config)
        saved = ns_exec(host_a, "iptables-save").stdout
        assert "RANCHER-CNI" not in saved and "rcni-" not in saved and "CNI-ISOLATION-STAGE" not in saved, saved
        assert not [ip for ip in (ip_a, ip_b) if ip in saved], saved
    finally:
        for e, config, netns, cid, host, result, policy in added:
            e.exec("DEL", config, netns, container_id=cid, host_netns=host)


def test_flat_with_the_firewall_stays_open_to_its_lan_reaches_its_metadata_and_drops_its_address_elsewhere(
        tmp_path, make_netns, rig):
    """rancher-flat with the reference firewall chained (fast path off, as -o firewall=true requires, so
    bridged frames pass FORWARD through br_netfilter), on this namespace as the host: the router's LAN, the
    metadata bridge with its service and another namespace on it (tests/netns/test_flat.py's rig), and a
    rancher-bridge network beside it."""
    from cni_backend import flatnet, hostnet
    from cni_backend.plugins.flat import load_network
    from tests.netns.test_flat import HOST_IP, MD_IP, LINK_IP, ROUTER, flat_config
    (tmp_path / "cni").mkdir()
    env = CNIEnv(tmp_path / "cni", daemon=False)
    config = flat_config(env, rig, fastPath=False, firewallChained=True)
    blue = env.bridge_config(subnet="10.127.22.0/24", cniVersion="1.0.0", isDefaultGateway=True)
    f, b = make_netns(), make_netns()
    sysctls = {key: run("sysctl", "-n", key).stdout.strip()
               for key in ("net.ipv4.conf.all.rp_filter", f"net.ipv4.conf.{rig['md_bridge']}.rp_filter")}
    added, firewalled = [], None
    try:
        for conf, netns, cid in ((config, f, "cf"), (blue, b, "cb")):
            code, result = env.exec("ADD", conf, netns, container_id=cid)
            assert code == 0, result
            added.append((conf, netns, cid, result))
        rf, rb = added[0][3], added[1][3]
        reference_firewall("ADD", None, f, rf, config["name"], "cf")
        firewalled = rf
        hostnet.repair_firewall()
        ip_f, ip_b = address(rf), address(rb)
        jumps = [line.split()[-1] for line in run("iptables", "-S", "FORWARD").stdout.splitlines()[1:]]
        assert jumps.index("RANCHER-CNI-FORWARD") < jumps.index("CNI-FORWARD"), jumps

        assert ping(rig["router"], ip_f), "the LAN still opens connections to the container (CNI-FORWARD would not)"
        assert ping(f, ROUTER), "and the container reaches the LAN"
        fetched = ns_exec(f, "wget", "-q", "-T", "3", "-t", "1", "-O", "-", f"http://{MD_IP}/", check=False)
        assert fetched.stdout == "metadata-ok\n", "the metadata service over the link: " + fetched.stderr
        ns_exec(f, "ip", "route", "add", "169.254.169.9/32", "via", LINK_IP)
        assert not ping(f, "169.254.169.9"), "nothing else on the metadata bridge"
        ns_exec(rig["router"], "ip", "route", "add", "10.127.22.0/24", "via", HOST_IP)
        assert not ping(rig["router"], ip_b), "the LAN does not open connections into a container bridge"
        assert spoofed_pings_counted(None, rig["router"], ip_f, b, via_iface="all", sender_iface="sw") == 0, \
            "a LAN host claiming the flat container's address reached the bridge network"
        # the metadata bridge's other namespace claiming the container's address, routed to the LAN: what
        # CNI-FORWARD's `-s IP -j ACCEPT` (no interface) would let through
        ns_exec(rig["router"], "iptables", "-I", "INPUT", "-s", ip_f, "-p", "icmp", "-j", "ACCEPT")
        spoof = spoofed_from_metadata_bridge(rig, ip_f)
        assert spoof == 0, "a packet claiming the flat container's address from the metadata bridge reached the LAN"
        assert admin_drop_applies(None, f, ROUTER), "the admin's CNI-ADMIN rule applies to the flat container"

        reference_firewall("DEL", None, f, rf, config["name"], "cf")
        firewalled = None
        for conf, netns, cid, result in reversed(added):
            assert env.exec("DEL", dict(conf, prevResult=result), netns, container_id=cid)[0] == 0
        added.clear()
        flatnet.remove(load_network(config))
        saved = run("iptables-save").stdout
        assert "RANCHER-CNI" not in saved and "rcni-" not in saved, saved
        assert ip_f not in saved and ip_b not in saved, saved
    finally:
        if firewalled:
            reference_firewall("DEL", None, f, firewalled, config["name"], "cf")
        for conf, netns, cid, result in added:
            env.exec("DEL", dict(conf, prevResult=result), netns, container_id=cid)
        if added:
            flatnet.remove(load_network(config))
        run("iptables", "-D", "FORWARD", "-m", "comment", "--comment", "CNI firewall plugin rules", "-j",
            "CNI-FORWARD", check=False)
        for chain in ("CNI-FORWARD", "CNI-ADMIN"):
            run("iptables", "-F", chain, check=False)
            run("iptables", "-X", chain, check=False)
        for key, value in sysctls.items():
            run("sysctl", "-w", f"{key}={value}")
        env.close()


def spoofed_from_metadata_bridge(rig, claimed) -> int:
    """Pings the metadata bridge's other namespace sends to the router claiming `claimed`, as the router's
    INPUT rule (inserted by the caller) counts them."""
    run("sysctl", "-w", "net.ipv4.conf.all.rp_filter=2", f"net.ipv4.conf.{rig['md_bridge']}.rp_filter=2")
    other = rig["other"]
    ns_exec(other, "ip", "addr", "add", f"{claimed}/32", "dev", "eth0")
    try:
        ns_exec(other, "ping", "-c", "2", "-W", "1", "-I", claimed, "192.168.77.1", check=False)
        return int(ns_exec(rig["router"], "iptables", "-L", "INPUT", "-v", "-x", "-n").stdout.splitlines()[2].split()[0])
    finally:
        ns_exec(other, "ip", "addr", "del", f"{claimed}/32", "dev", "eth0")


@pytest.mark.parametrize("chained, portmap", [(False, "rancher-portmap"), (True, "rancher-portmap"), (True, "portmap")],
                         ids=["alone", "firewall-chained", "firewall-chained-reference-portmap"])
def test_with_the_firewall_chained_a_published_port_is_still_reached_from_outside(tmp_path, make_netns, chained,
                                                                                   portmap):
    """A published port of a container whose network chains the reference firewall: its first packet,
    DNAT'ed, is NEW for CNI-FORWARD (which accepts only replies and what the container sends), so it must
    be accepted by our rule, not handed on to CNI-FORWARD and Docker's DROP policy; whichever portmap
    published it (the reference one adds no FORWARD rule of its own)."""
    host, outside = make_netns(), make_netns()
    docker_like_host(host, outside)
    env = CNIEnv(tmp_path, daemon=False)
    red = env.bridge_config(subnet="10.127.21.0/24", cniVersion="1.0.0", isDefaultGateway=True,
                            firewallChained=chained)
    ports = {"cniVersion": "1.0.0", "name": red["name"], "type": portmap, "snat": True,
             "runtimeConfig": {"portMappings": [{"hostPort": 18182, "containerPort": 80, "protocol": "tcp"}]}}
    a = make_netns()
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("published\n")
    server, added = None, None
    try:
        code, ra = env.exec("ADD", red, a, container_id="ca", host_netns=host)
        assert code == 0, ra
        added = ra
        if chained:
            reference_firewall("ADD", host, a, ra, red["name"], "ca")
        code, out = env.exec("ADD", dict(ports, prevResult=ra), a, container_id="ca", host_netns=host)
        assert code == 0, out
        repair_firewall(host)
        server = subprocess.Popen(["ip", "netns", "exec", a, "busybox", "httpd", "-f", "-p", "80", "-h", str(www)])
        fetched = ""
        for _ in range(20):
            fetched = ns_exec(outside, "wget", "-q", "-T", "2", "-t", "1", "-O", "-", "http://10.127.30.1:18182/",
                              check=False).stdout
            if fetched:
                break
        assert fetched == "published\n", "the published port was not reached from outside"
    finally:
        if server:
            server.kill()
            server.wait()
        if added:
            env.exec("DEL", dict(ports, prevResult=added), a, container_id="ca", host_netns=host)
            if chained:
                reference_firewall("DEL", host, a, added, red["name"], "ca")
            env.exec("DEL", red, a, container_id="ca", host_netns=host)
        env.close()
