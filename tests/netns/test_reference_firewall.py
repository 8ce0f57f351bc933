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

from tests.conftest import CNIEnv, ns_exec, ping

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(not os.access("/usr/lib/cni/firewall", os.X_OK),
                                 reason="containernetworking-plugins missing")]


def reference_firewall(command, host, netns, result, name, container_id):
    config = {"cniVersion": "1.0.0", "name": name, "type": "firewall", "backend": "iptables",
              "prevResult": dict(result, cniVersion="1.0.0")}
    env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID=container_id, CNI_IFNAME="eth0",
               CNI_NETNS=f"/var/run/netns/{netns}", CNI_PATH="/usr/lib/cni")
    done = subprocess.run(["ip", "netns", "exec", host, "/usr/lib/cni/firewall"], input=json.dumps(config).encode(),
                          env=env, capture_output=True, timeout=60)
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
