"""rancher-vxlan across two hosts (namespaces that run the plug-ins
themselves) joined by an underlay veth: one subnet spans both."""

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import CNIEnv, ns_exec, ping, vxlan_guard
from tests.etcd_cluster import EtcdCluster

pytestmark = pytest.mark.netns


def vxlan_config(env, peer, first: int) -> dict:
    return {"cniVersion": "1.0.0", "name": "overlay", "type": "rancher-vxlan", "vni": 1042,
            "vtepDev": "underlay", "peers": [peer] if peer else [], "stateDir": str(env.state),
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
    assert vxlan_guard(host_a, 1042) == ({"10.99.0.2"}, True), "only the static peer may send VXLAN to host A"
    # a full-size packet crosses without fragmentation (DF set)
    assert ns_exec(a, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1422", ip_b, check=False).returncode == 0
    for env, config, container, host, container_id, result in attached:
        code, _ = env.exec("DEL", dict(config, prevResult=result), container, container_id=container_id,
                           host_netns=host)
        assert code == 0 and env.allocations() == []


def _agent(host: str, endpoints: list, state_dir, ttl: int):
    return subprocess.Popen(["ip", "netns", "exec", host, sys.executable, "-m", "cnm_shim.cli", "vxlan-agent",
                             "--etcd-endpoints", ",".join(endpoints), "--insecure-etcd", "--vtep-dev", "underlay",
                             "--state-dir", str(state_dir), "--ttl", str(ttl), "--interval", "0.5"],
                            stdout=subprocess.DEVNULL, stderr=open(state_dir / "agent.log", "a"))


def _until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_etcd_registry_programs_remote_endpoints_and_forgets_dead_hosts(tmp_path, make_netns):
    host_a, host_b = make_netns(), make_netns()
    ns_exec(host_a, "ip", "link", "add", "underlay", "type", "veth", "peer", "name", "underlay", "netns", host_b)
    for host, address in ((host_a, "10.99.0.1/24"), (host_b, "10.99.0.2/24")):
        ns_exec(host, "ip", "addr", "add", address, "dev", "underlay")
        ns_exec(host, "ip", "link", "set", "underlay", "up")
    ns_exec(host_a, "ip", "link", "set", "lo", "up")
    try:
        etcd = EtcdCluster(netns=host_a, address="10.99.0.1")
    except RuntimeError as exc:
        pytest.skip(str(exc))
    agents, attached = {}, []
    try:
        for n, host in enumerate((host_a, host_b)):
            (tmp_path / f"h{n}").mkdir()
            env = CNIEnv(tmp_path / f"h{n}", daemon=False)
            config = vxlan_config(env, peer=None, first=n + 1)
            config.update(peers=[], etcdEndpoints=etcd.endpoints, stateDir=str(env.state))
            container = make_netns()
            code, result = env.exec("ADD", config, container, container_id=f"c{n}", host_netns=host)
            assert code == 0, result
            attached.append((env, config, container, host, f"c{n}", result))
            agents[host] = _agent(host, etcd.endpoints, env.state, ttl=3)
        (_, _, a, _, _, ra), (_, _, b, _, _, rb) = attached
        mac_b = rb["interfaces"][2]["mac"]
        ip_b = rb["ips"][0]["address"].split("/")[0]

        def fdb_a():
            return ns_exec(host_a, "bridge", "fdb", "show", "dev", "vtep1042").stdout

        _until(lambda: f"{mac_b} dst 10.99.0.2" in fdb_a(), 15, "host A never learned B's container from etcd")
        assert "00:00:00:00:00:00 dst 10.99.0.2" in fdb_a(), "B's VTEP gets A's broadcasts"
        assert ip_b in ns_exec(host_a, "ip", "neigh", "show", "dev", "vtep1042").stdout
        assert ping(a, ip_b), "over VXLAN with no static peer at all"

        agents[host_b].kill()  # host B dies: its lease runs out
        agents[host_b].wait()
        _until(lambda: "10.99.0.2" not in fdb_a(), 15, "B's entries outlived its lease")
        agents[host_b] = _agent(host_b, etcd.endpoints, attached[1][0].state, ttl=3)  # B comes back
        _until(lambda: f"{mac_b} dst 10.99.0.2" in fdb_a(), 15, "B did not register again after its restart")
        assert ping(a, ip_b)
    finally:
        for agent in agents.values():
            agent.terminate()
            agent.wait()
        etcd.close()
    for env, config, container, host, container_id, result in attached:
        code, _ = env.exec("DEL", dict(config, prevResult=result), container, container_id=container_id,
                           host_netns=host)
        assert code == 0 and env.allocations() == []
