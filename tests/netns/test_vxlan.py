"""rancher-vxlan across two hosts (namespaces that run the plug-ins
themselves) joined by an underlay veth: one subnet spans both."""

import json

import pytest

from tests.conftest import CNIEnv, ns_exec, ping

pytestmark = pytest.mark.netns


def vxlan_config(env, peer: str, first: int) -> dict:
    return {"cniVersion": "1.0.0", "name": "overlay", "type": "rancher-vxlan", "vni": 1042,
            "vtepDev": "underlay", "peers": [peer],
            "ipam": {"type": "rancher-ipam", "dataDir": str(env.state),
                     "ranges": [[{"subnet": "10.42.0.0/16", "rangeStart": f"10.42.{first}.2",
                                  "rangeEnd": f"10.42.{first}.254"}]]}}


def test_containers_on_two_hosts_share_one_subnet(tmp_path, make_netns):
    host_a, host_b = make_netns(), make_netns()
    ns_exec(host_a, "ip", "link", "add", "underlay", "type", "veth", "peer", "name", "underlay", "netns", host_b)
    for host, address in ((host_a, "10.99.0.1/24"), (host_b, "10.99.0.2/24")):
        ns_exec(host, "ip", "addr", "add", address, "dev", "underlay")
        ns_exec(host, "ip", "link", "set", "underlay", "mtu", "1500", "up")
    attached = []
    for n, (host, peer) in enumerate(((host_a, "10.99.0.2"), (host_b, "10.99.0.1"))):
        (tmp_path / f"h{n}").mkdir()
        env = CNIEnv(tmp_path / f"h{n}", daemon=False)
        config = vxlan_config(env, peer, first=n + 1)
        container = make_netns()
        code, result = env.exec("ADD", config, container, container_id=f"c{n}", host_netns=host)
        assert code == 0, result
        attached.append((env, config, container, host, f"c{n}", result))
    (_, _, a, host_a, _, ra), (_, _, b, _, _, rb) = attached
    ip_b = rb["ips"][0]["address"].split("/")[0]
    assert ping(a, ip_b), "a container reaches the other host's container over VXLAN"
    vtep = json.loads(ns_exec(host_a, "ip", "-j", "-d", "link", "show", "vtep1042").stdout)[0]
    assert vtep["linkinfo"]["info_data"]["port"] == 4789 and vtep["linkinfo"]["info_data"]["learning"] is False
    assert json.loads(ns_exec(a, "ip", "-j", "link", "show", "eth0").stdout)[0]["mtu"] == 1450
    fdb = ns_exec(host_a, "bridge", "fdb", "show", "dev", "vtep1042").stdout
    assert "00:00:00:00:00:00 dst 10.99.0.2" in fdb
    # a full-size packet crosses without fragmentation (DF set)
    assert ns_exec(a, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1422", ip_b, check=False).returncode == 0
    for env, config, container, host, container_id, result in attached:
        code, _ = env.exec("DEL", dict(config, prevResult=result), container, container_id=container_id,
                           host_netns=host)
        assert code == 0 and env.allocations() == []
