"""Why `-o firewall` is refused on our backends (options.refuse_firewall):
the reference `firewall` plug-in (Debian's containernetworking-plugins)
chained after our bridge inserts its CNI-FORWARD chain first in FORWARD and
accepts everything the container sends there, ahead of our isolation rules:
the container then reaches another of our networks. Run in a namespace
standing in for the host, with Docker's FORWARD DROP policy."""

import json
import os
import subprocess

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
