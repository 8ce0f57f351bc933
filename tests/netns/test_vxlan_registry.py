"""The VXLAN registry under attack, on the kernel (issue 15, item 5): two
hosts (namespaces running the plug-ins and `cnm-shim vxlan-agent`) on an
underlay veth, a real etcd, and an attacker who can write to it. What each
host programs is read back from the kernel (`bridge fdb`, `ip neigh`,
`iptables-save`), and VXLAN packets are sent to the UDP port by hand."""

import contextlib
import ipaddress
import json
import struct
import subprocess
import sys

import pytest

from tests.conftest import CNIEnv, ns_exec, ping, vxlan_guard
from tests.etcd_cluster import EtcdCluster
from tests.netns.test_vxlan import _agent, _until, vxlan_config
from tests.packets import capture, ipv4_from

pytestmark = pytest.mark.netns

VNI = 1042
A_VTEP, B_VTEP, ROGUE = "10.99.0.1", "10.99.0.2", "10.99.0.3"
HOSTS = "/rancher-cni/vxlan/hosts"

_PUT = r"""
import json, sys, urllib.parse
from etcd3gw.client import Etcd3Client
url = urllib.parse.urlsplit(sys.argv[1])
client = Etcd3Client(host=url.hostname, port=url.port, protocol=url.scheme, api_path="/v3/")
for key, value in json.loads(sys.argv[2]).items():
    client.put(key, value)
"""

_SEND = r"""
import socket, struct, sys
source, target, vni, frame, count = sys.argv[1:]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((source, 0))
for _ in range(int(count)):
    sock.sendto(struct.pack("!BBHI", 0x08, 0, 0, int(vni) << 8) + bytes.fromhex(frame), (target, 4789))
"""


def attacker_writes(host: str, endpoint: str, entries: dict) -> None:
    """Keys written straight into etcd, as anyone with write access could."""
    ns_exec(host, sys.executable, "-c", _PUT, endpoint, json.dumps(entries))


class TwoHosts:
    def __init__(self, tmp_path, make_netns):
        self.a, self.b = make_netns(), make_netns()
        ns_exec(self.a, "ip", "link", "add", "underlay", "type", "veth", "peer", "name", "underlay", "netns", self.b)
        for host, address in ((self.a, A_VTEP), (self.b, B_VTEP)):
            ns_exec(host, "ip", "addr", "add", f"{address}/24", "dev", "underlay")
            ns_exec(host, "ip", "link", "set", "underlay", "up")
        ns_exec(self.a, "ip", "link", "set", "lo", "up")
        self.etcd = EtcdCluster(netns=self.a, address=A_VTEP)
        self.agents, self.attached = {}, []
        for n, host in enumerate((self.a, self.b)):
            (tmp_path / f"h{n}").mkdir()
            env = CNIEnv(tmp_path / f"h{n}", daemon=False)
            config = vxlan_config(env, peer=None, first=n + 1)
            config.update(peers=[], etcdEndpoints=self.etcd.endpoints, stateDir=str(env.state))
            container = make_netns()
            code, result = env.exec("ADD", config, container, container_id=f"c{n}", host_netns=host)
            assert code == 0, result
            self.attached.append((env, config, container, host, f"c{n}", result))
            self.agents[host] = _agent(host, self.etcd.endpoints, env.state, ttl=3)
        (_, _, self.container_a, _, _, ra), (_, _, self.container_b, _, _, rb) = self.attached
        self.ip_a, self.mac_a = ra["ips"][0]["address"].split("/")[0], ra["interfaces"][2]["mac"]
        self.ip_b, self.mac_b = rb["ips"][0]["address"].split("/")[0], rb["interfaces"][2]["mac"]
        self.log_a = self.attached[0][0].state / "agent.log"

    def fdb_a(self) -> str:
        return ns_exec(self.a, "bridge", "fdb", "show", "dev", f"vtep{VNI}").stdout

    def neigh_a(self) -> dict:
        return {n["dst"]: n.get("lladdr") for n in
                json.loads(ns_exec(self.a, "ip", "-j", "neigh", "show", "dev", f"vtep{VNI}").stdout)}

    def guard_a(self) -> list:
        return [line for line in ns_exec(self.a, "iptables-save", "-c", "-t", "filter").stdout.splitlines()
                if "--dport 4789" in line]

    def close(self):
        for agent in self.agents.values():
            agent.terminate()
            agent.wait()
        self.etcd.close()
        for env, config, container, host, container_id, result in self.attached:
            code, _ = env.exec("DEL", dict(config, prevResult=result), container, container_id=container_id,
                               host_netns=host)
            assert code == 0 and env.allocations() == []


@contextlib.contextmanager
def two_hosts(tmp_path, make_netns):
    try:
        rig = TwoHosts(tmp_path, make_netns)
    except RuntimeError as exc:  # no etcd
        pytest.skip(str(exc))
    try:
        _until(lambda: f"{rig.mac_b} dst {B_VTEP}" in rig.fdb_a(), 20, "host A never learned B's container")
        yield rig
    finally:
        rig.close()


def test_poisoned_registry_keys_are_skipped_and_the_honest_host_is_still_programmed(tmp_path, make_netns):
    with two_hosts(tmp_path, make_netns) as rig:
        def endpoint(host, ip, mac, vtep=None):
            return {f"{HOSTS}/{host}/{VNI}/endpoints/{ip}": json.dumps({"ip": ip, "mac": mac, "vtep": vtep or host})}
        poison = {
            f"{HOSTS}/{ROGUE}/{VNI}/vtep": json.dumps({"no": "vtep"}),              # KeyError every round, before
            **endpoint(ROGUE, "10.42.0.1", "02:00:00:00:00:66"),                   # the gateway's address
            **endpoint(ROGUE, "8.8.8.8", "02:00:00:00:00:67"),                     # off the subnet
            **endpoint(ROGUE, "10.42.7.7", "ff:ff:ff:ff:ff:ff"),                   # a broadcast MAC
            **endpoint(ROGUE, rig.ip_b, "02:00:00:00:00:68"),                      # B's container's address
            **endpoint(ROGUE, "10.42.7.8", rig.mac_b),                             # B's container's MAC
            **endpoint(B_VTEP, "10.42.7.9", "02:00:00:00:00:69", vtep=ROGUE),      # a VTEP not its key's host
            # the previous layout, read by the previous agent
            f"/rancher-cni/vxlan/{VNI}/vteps/{ROGUE}": json.dumps({"no": "vtep"}),
            f"/rancher-cni/vxlan/{VNI}/endpoints/10.42.0.1": json.dumps(
                {"ip": "10.42.0.1", "mac": "ff:ff:ff:ff:ff:ff", "vtep": ROGUE}),
        }
        attacker_writes(rig.a, rig.etcd.endpoints[0], poison)
        new_layout = [k for k in poison if k.startswith(HOSTS)]
        # the agent says, once per key, what it skipped and why: then the round is done
        _until(lambda: all(f"skipping registry key {k}:" in rig.log_a.read_text() for k in new_layout), 20,
               "host A's agent did not report every poisoned key: " + rig.log_a.read_text()[-3000:])
        log = rig.log_a.read_text()
        assert "is the gateway of 10.42.0.0/16" in log and "outside the network's subnets" in log
        assert "multicast or broadcast" in log and f"already registered by host {B_VTEP}" in log
        assert "KeyError" not in log
        # what the kernel holds: B's container behind B's VTEP, nothing of the attacker's
        neigh, fdb = rig.neigh_a(), rig.fdb_a()
        assert neigh == {rig.ip_b: rig.mac_b}
        assert f"{rig.mac_b} dst {B_VTEP}" in fdb and ROGUE not in fdb and "ff:ff:ff:ff:ff:ff" not in fdb
        assert ping(rig.container_a, rig.ip_b), "A's container still reaches B's"


def _inner_frame(dst_mac: str, dst_ip: str, src_ip: str) -> str:
    """An Ethernet frame carrying an ICMP echo request (checksums right)."""
    def checksum(data: bytes) -> int:
        data += b"\0" * (len(data) % 2)
        total = sum(struct.unpack(f"!{len(data) // 2}H", data))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        return ~total & 0xFFFF
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x4242, 1) + b"rcnit-vxlan-guard"
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0,
                         ipaddress.IPv4Address(src_ip).packed, ipaddress.IPv4Address(dst_ip).packed)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    ethernet = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex("020000000909") + b"\x08\x00"
    return (ethernet + header + icmp).hex()


def _counter(lines: list, target: str) -> int:
    """Packets counted by the guard's ACCEPT (of the peers, whether one rule
    per peer or the set's) or its DROP."""
    counts = [int(line.split("]")[0].lstrip("[").split(":")[0]) for line in lines if line.endswith(f"-j {target}")]
    if not counts:
        raise AssertionError(f"no {target} rule: {lines}")
    return sum(counts)


def test_vxlan_from_a_non_peer_address_is_dropped_and_from_a_peer_it_passes(tmp_path, make_netns, guard_path):
    with two_hosts(tmp_path, make_netns) as rig:
        ns_exec(rig.b, "ip", "addr", "add", f"{ROGUE}/24", "dev", "underlay")  # a host that is no peer
        _until(lambda: vxlan_guard(rig.a, VNI) == ({B_VTEP}, True), 10, "no guard on host A")
        guard = rig.guard_a()
        assert [line.rsplit(" ", 1)[-1] for line in guard] == ["ACCEPT", "DROP"]
        assert all(f"-m comment --comment rcni-" in line and "-vtep" in line for line in guard)
        assert ("--match-set" in guard[0]) == (guard_path == "ipset")
        inner = _inner_frame(rig.mac_a, rig.ip_a, "10.42.9.9")
        for source, decapsulated in ((ROGUE, False), (B_VTEP, True)):
            dropped_before, accepted_before = _counter(rig.guard_a(), "DROP"), _counter(rig.guard_a(), "ACCEPT")
            with capture(rig.container_a, "eth0", seconds=3) as frames:
                ns_exec(rig.b, sys.executable, "-c", _SEND, source, A_VTEP, str(VNI), inner, "3")
            arrived = ipv4_from(frames, "10.42.9.9")
            if decapsulated:
                assert arrived, "VXLAN from the registered peer reaches the container"
                assert _counter(rig.guard_a(), "ACCEPT") >= accepted_before + 3
            else:
                assert arrived == [], "VXLAN from an address no host registered was decapsulated"
                assert _counter(rig.guard_a(), "DROP") == dropped_before + 3
        assert ping(rig.container_a, rig.ip_b), "the peers' own traffic passes"

        # peers come and go: B's lease runs out, its address leaves the guard; it comes back
        rig.agents[rig.b].kill()
        rig.agents[rig.b].wait()
        _until(lambda: vxlan_guard(rig.a, VNI) == (set(), True), 15, "B stayed in A's guard")
        with capture(rig.container_a, "eth0", seconds=3) as frames:
            ns_exec(rig.b, sys.executable, "-c", _SEND, B_VTEP, A_VTEP, str(VNI), inner, "3")
        assert ipv4_from(frames, "10.42.9.9") == [], "VXLAN from a host that left was decapsulated"
        rig.agents[rig.b] = _agent(rig.b, rig.etcd.endpoints, rig.attached[1][0].state, ttl=3)
        _until(lambda: vxlan_guard(rig.a, VNI) == ({B_VTEP}, True), 15, "B did not come back")

        # the guard goes with the network: its rules and its set
        rig.agents[rig.a].terminate()
        rig.agents[rig.a].wait()
        ns_exec(rig.a, sys.executable, "-c", "from cni_backend import vxlannet; vxlannet.remove(vxlannet.VxlanNetwork("
                f"bridge='vxbr{VNI}', vni={VNI}, port=4789, vtep_dev='underlay', peers=()))")
        assert rig.guard_a() == [] and "-vtep " not in ns_exec(rig.a, "iptables-save").stdout
        assert "rcni" not in ns_exec(rig.a, sys.executable, "-c", "from tests.conftest import ipsets; print(ipsets())").stdout


def test_a_plain_http_etcd_is_refused_by_the_agent_without_insecure_etcd(tmp_path, make_netns):
    host = make_netns()
    done = subprocess.run(["ip", "netns", "exec", host, sys.executable, "-m", "cnm_shim.cli", "vxlan-agent",
                           "--etcd-endpoints", "http://127.0.0.1:9", "--state-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "etcd endpoint http://127.0.0.1:9 is plain http: refused" in done.stderr
    assert "--insecure-etcd" in done.stderr
