"""Docker sets the FORWARD policy to DROP; our rules must let the network work
anyway. Run in a namespace standing in for the host, so the test can set that
policy without touching the machine's own firewall."""

import pytest

from tests.conftest import CNIEnv, ns_exec, ping

pytestmark = pytest.mark.netns


def test_traffic_passes_forward_drop_only_through_our_rules(tmp_path, make_netns):
    env = CNIEnv(tmp_path, daemon=False)  # the plug-ins run inside `host` themselves
    host = make_netns()
    if ns_exec(host, "sysctl", "-w", "net.bridge.bridge-nf-call-iptables=1", check=False).returncode:
        pytest.skip("br_netfilter is not available in this kernel")
    ns_exec(host, "iptables", "-P", "FORWARD", "DROP")
    config = env.bridge_config()
    a, b = make_netns(), make_netns()
    _, ra = env.exec("ADD", config, a, container_id="ca", host_netns=host)
    code, rb = env.exec("ADD", config, b, container_id="cb", host_netns=host)
    assert code == 0, rb
    target = rb["ips"][0]["address"].split("/")[0]
    assert ping(a, target)

    saved = ns_exec(host, "iptables", "-S", "RANCHER-CNI-FORWARD").stdout
    ns_exec(host, "iptables", "-F", "RANCHER-CNI-FORWARD")
    assert not ping(a, target), "without our rules the DROP policy must cut the bridge off"
    for rule in saved.splitlines()[1:]:
        ns_exec(host, "iptables", *rule.split())

    for netns, cid, result in ((a, "ca", ra), (b, "cb", rb)):
        assert env.exec("DEL", dict(config, prevResult=result), netns, container_id=cid, host_netns=host)[0] == 0
    assert "RANCHER-CNI" not in ns_exec(host, "iptables-save").stdout
    assert env.allocations() == []
