"""rancher-ipsec with etcd (cni_backend/ipsec_registry.py): two hosts
(namespaces running the real executable) whose network names no key file and
no peers. The key is made in etcd by the first host and taken by the second;
the peers come from the hosts' registrations (`cnm-shim ipsec-registry`), and
a host whose lease runs out loses its tunnel on the other."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from cni_backend import ipsec_registry, ipsec_tunnels
from cni_backend.plugins import ipsec
from tests.conftest import ns_exec, ping
from tests.etcd_cluster import EtcdCluster
from tests.netns.test_ipsec import UNDERLAY, hosts, remove_network, wait_child  # noqa: F401 (fixture)

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not os.access(ipsec_tunnels.CHARON, os.X_OK),
                       reason="strongSwan's charon is not installed (make deps)"),
    pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun for kernel-libipsec"),
]

SUBNET = "10.45.0.0/16"


def etcd_config(env, n: int, endpoints: list) -> dict:
    return {"cniVersion": "1.0.0", "name": "secure-etcd", "type": "rancher-ipsec", "bridge": "rcnitipsbr",
            "isGateway": True, "peers": [], "underlay": UNDERLAY[n], "stateDir": str(env.state),
            "ipam": {"type": "rancher-ipam", "dataDir": str(env.state), "etcdEndpoints": endpoints,
                     "insecureEtcd": True,
                     "ranges": [[{"subnet": SUBNET, "gateway": f"10.45.{n + 1}.1",
                                  "rangeStart": f"10.45.{n + 1}.2", "rangeEnd": f"10.45.{n + 1}.254"}]]}}


def registry(host: str, endpoints: list, state_dir, ttl: int = 3) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", host, sys.executable, "-m", "cnm_shim.cli", "ipsec-registry",
                             "--etcd-endpoints", ",".join(endpoints), "--insecure-etcd", "--state-dir", str(state_dir),
                             "--ttl", str(ttl), "--interval", "0.5"],
                            stdout=subprocess.DEVNULL, stderr=open(state_dir / "registry.log", "a"))


def ipsec_agent(host: str, state_dir) -> subprocess.Popen:
    """The agent `cnm-shim serve` runs beside the registry: it initiates again
    a connection the peer refused because it had not loaded ours yet."""
    return subprocess.Popen(["ip", "netns", "exec", host, sys.executable, "-m", "cnm_shim.cli", "ipsec-agent",
                             "--state-dir", str(state_dir), "--interval", "0.5"],
                            stdout=subprocess.DEVNULL, stderr=open(state_dir / "agent.log", "a"))


def until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_two_hosts_take_key_and_peers_from_etcd_and_a_host_that_leaves_loses_its_tunnel(hosts, make_netns):
    (host_a, host_b), envs, _ = hosts
    ns_exec(host_a, "ip", "link", "set", "lo", "up")
    try:
        etcd = EtcdCluster(netns=host_a, address=UNDERLAY[0])
    except RuntimeError as exc:
        pytest.skip(str(exc))
    agents, attached = {}, []
    try:
        for n, host in reversed(list(enumerate((host_a, host_b)))):  # B (the responder) first
            config = etcd_config(envs[n], n, etcd.endpoints)
            container = make_netns()
            code, result = envs[n].exec("ADD", config, container, container_id=f"c{n}", host_netns=host)
            assert code == 0, result
            attached.insert(0, (envs[n], config, container, host, f"c{n}", result))
        # one key, made by B, taken by A, kept at 0600 on both
        keys = [ipsec_registry.key_file(str(env.state), SUBNET) for env in envs]
        assert open(keys[0], "rb").read() == open(keys[1], "rb").read()
        assert all(stat.S_IMODE(os.stat(k).st_mode) == 0o600 for k in keys)
        key = open(keys[0]).read().strip()
        assert all(key not in json.dumps(result) for *_, result in attached)

        # the moment of a set_peers on B between its guard letting A in and
        # its charon loading A, held: B registered, then frozen before it
        # learns of A, its guard opened to A by hand. A (the initiator) learns
        # of B and starts the IKE_SA, which B refuses (NO_PROPOSAL_CHOSEN);
        # A's agent starts it again once B, thawed, has loaded A
        agents[host_b] = registry(host_b, etcd.endpoints, envs[1].state, ttl=10)
        until(lambda: "lease" in (envs[1].state / "registry.log").read_text(), 30, "B's registry took no lease")
        time.sleep(1.5)  # three rounds: B's entry is written
        agents[host_b].send_signal(signal.SIGSTOP)
        let_a_in = ("INPUT", "1", "-s", UNDERLAY[0], "-p", "udp", "-j", "ACCEPT")
        ns_exec(host_b, "iptables", "-w", "-I", *let_a_in)
        agents[host_a] = registry(host_a, etcd.endpoints, envs[0].state)
        for n, host in enumerate((host_a, host_b)):
            agents[f"agent-{host}"] = ipsec_agent(host, envs[n].state)
        charon_a = ipsec_tunnels.Charon(str(envs[0].state / "ipsec" / "charon"))
        until(lambda: "NO_PROPOSAL_CHOSEN" in open(charon_a.log_file).read(), 30, "B did not refuse A")
        ns_exec(host_b, "iptables", "-w", "-D", let_a_in[0], *let_a_in[2:])
        agents[host_b].send_signal(signal.SIGCONT)
        wait_child(charon_a, ipsec.load_network(attached[0][1]).connection(UNDERLAY[1]), timeout=30)
        assert "initiated it again" in (envs[0].state / "agent.log").read_text()
        (_, _, a, _, _, ra), (_, _, b, _, _, rb) = attached
        ip_a, ip_b = (r["ips"][0]["address"].split("/")[0] for r in (ra, rb))
        assert ping(a, ip_b, count=3), "a container reaches the other host's container, peers from etcd"
        assert ping(b, ip_a), "and back"
        assert "10.45.2.0/24" in ns_exec(host_a, "ip", "route", "show", "table", "220").stdout
        for env in envs:
            assert key not in (env.state / "registry.log").read_text()

        # B leaves: its agent dies, its lease runs out, A unloads its connection
        agents[host_b].kill()
        agents[host_b].wait()
        until(lambda: charon_a.sas() == {}, 30, "B's IKE_SA outlived its lease on A")
        assert "10.45.2.0/24" not in ns_exec(host_a, "ip", "route", "show", "table", "220").stdout
        record = json.loads(next((envs[0].state / "ipsec" / "networks").glob("*.json")).read_text())
        assert record["peers"] == [] and record["registry"] is True
        assert not ping(a, ip_b, count=1), "nothing to B once its tunnel is gone"

        # a further ADD on A keeps the registry's peers (none now) and does not start a tunnel of its own
        agents[host_b] = registry(host_b, etcd.endpoints, envs[1].state)  # B comes back
        wait_child(charon_a, ipsec.load_network(attached[0][1]).connection(UNDERLAY[1]), timeout=60)
        second = make_netns()
        code, result = envs[0].exec("ADD", attached[0][1], second, container_id="c2", host_netns=host_a)
        assert code == 0, result
        attached.append((envs[0], attached[0][1], second, host_a, "c2", result))
        assert ping(second, ip_b, count=3), "an ADD keeps the peers the registry set"
    finally:
        for agent in agents.values():
            agent.send_signal(signal.SIGCONT)  # a frozen process would not take SIGTERM
            agent.terminate()
            agent.wait()
        for env, config, container, host, container_id, result in attached:
            env.exec("DEL", dict(config, prevResult=result), container, container_id=container_id, host_netns=host)
        for n, host in enumerate((host_a, host_b)):
            if any(item[0] is envs[n] for item in attached):
                remove_network(host, etcd_config(envs[n], n, etcd.endpoints))
        etcd.close()
    for n, key in enumerate(keys):
        assert not os.path.exists(key), "the local copy of the key goes with the host's last network using it"
