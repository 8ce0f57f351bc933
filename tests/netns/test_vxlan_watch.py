"""The VXLAN agent driven by an etcd watch (issue 20): whatever happens to the
stream (its revision compacted while the agent was stalled, its member
killed, a burst of changes), every host ends with exactly what the registry
says: flood list, FDB and neighbours read from each host's kernel and
compared with the keys read from etcd.

Three hosts (namespaces) on a hub namespace's bridge, which also holds the
etcd members; each host has the network's bridge and VTEP
(`vxlannet.ensure`, as the plug-in makes them) and runs `cnm-shim
vxlan-agent`. Containers are the record files the plug-in writes
(`vxlan_registry.record_endpoint`): the agent reads nothing else."""

import base64
import json
import os
import shutil
import signal
import sys
import time

import pytest

from cni_backend import vxlan_registry
from tests.conftest import ns_exec, vxlan_guard
from tests.etcd_cluster import EtcdCluster
from tests.netns.test_vxlan import _agent, _until

pytestmark = pytest.mark.netns

VNI = 1042
HUB = "10.98.0.254"
ROOT = "/rancher-cni/vxlan/hosts/"

_ENSURE = r"""
import ipaddress, sys
from cni_backend import vxlannet
vxlannet.ensure(vxlannet.VxlanNetwork(bridge="vxbr1042", vni=1042, port=4789, vtep_dev="underlay", peers=(),
                state_dir=sys.argv[1], registry=True,
                subnets=((ipaddress.ip_network("10.42.0.0/16"), ipaddress.ip_address("10.42.0.1")),)))
"""

_READ = r"""
import base64, json, sys, urllib.request
from etcd3gw.utils import _encode, _increment_last_byte
prefix = sys.argv[2]
body = json.dumps({"key": _encode(prefix), "range_end": _encode(_increment_last_byte(prefix))}).encode()
reply = json.load(urllib.request.urlopen(sys.argv[1] + "/v3/kv/range", body, timeout=10))
print(json.dumps({base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
                  for kv in reply.get("kvs", [])}))
"""

_JUNK = r"""
import base64, json, sys, urllib.request
b64 = lambda text: base64.b64encode(text.encode()).decode()
for batch in range(int(sys.argv[3])):
    ops = [{"request_put": {"key": b64(f"{sys.argv[2]}{batch}-{i}"), "value": b64("x" * 900)}} for i in range(100)]
    urllib.request.urlopen(sys.argv[1] + "/v3/kv/txn", json.dumps({"success": ops}).encode(), timeout=60).read()
"""

_CALL = r"""
import json, sys, urllib.request
print(urllib.request.urlopen(sys.argv[1] + sys.argv[2], sys.argv[3].encode(), timeout=60).read().decode())
"""


class Hosts:
    def __init__(self, tmp_path, make_netns, members: int = 1, count: int = 3):
        self.hub = make_netns()
        ns_exec(self.hub, "ip", "link", "add", "hubbr", "type", "bridge")
        ns_exec(self.hub, "ip", "addr", "add", f"{HUB}/24", "dev", "hubbr")
        ns_exec(self.hub, "ip", "link", "set", "hubbr", "up")
        ns_exec(self.hub, "ip", "link", "set", "lo", "up")
        self.hosts, self.vteps, self.states, self.agents = [], [], [], {}
        for n in range(count):
            host = make_netns()
            ns_exec(self.hub, "ip", "link", "add", f"h{n}", "type", "veth", "peer", "name", "underlay", "netns", host)
            ns_exec(self.hub, "ip", "link", "set", f"h{n}", "master", "hubbr", "up")
            ns_exec(host, "ip", "addr", "add", f"10.98.0.{n + 1}/24", "dev", "underlay")
            ns_exec(host, "ip", "link", "set", "underlay", "up")
            state = tmp_path / f"h{n}"
            state.mkdir()
            ns_exec(host, sys.executable, "-c", _ENSURE, str(state))
            self.hosts.append(host)
            self.vteps.append(f"10.98.0.{n + 1}")
            self.states.append(state)
        self.etcd = EtcdCluster(members=members, netns=self.hub, address=HUB)
        self.serial = 0

    def start(self, n: int, endpoints=None) -> None:
        self.agents[n] = _agent(self.hosts[n], endpoints or self.etcd.endpoints, self.states[n], ttl=5)

    def log(self, n: int) -> str:
        return (self.states[n] / "agent.log").read_text()

    def add(self, n: int, count: int) -> list:
        """`count` containers on host n, as the plug-in records them."""
        names = []
        for _ in range(count):
            self.serial += 1
            k = self.serial
            ip, mac = f"10.42.{n + 1}.{k % 250 + 2}", f"02:42:00:{n:02x}:{k >> 8 & 0xff:02x}:{k & 0xff:02x}"
            vxlan_registry.record_endpoint(str(self.states[n]), VNI, f"c{k}", [f"{ip}/16"], mac)
            names.append(f"c{k}")
        return names

    def remove(self, n: int, names) -> None:
        for name in names:
            vxlan_registry.forget_endpoint(str(self.states[n]), VNI, name)

    def etcd_call(self, path: str, body: dict, member: int = 0) -> dict:
        return json.loads(ns_exec(self.hub, sys.executable, "-c", _CALL, self.etcd.endpoints[member], path,
                                  json.dumps(body)).stdout)

    def slow_watchers(self) -> float:
        text = ns_exec(self.hub, sys.executable, "-c", "import sys, urllib.request; print(urllib.request.urlopen("
                       "sys.argv[1] + '/metrics', timeout=10).read().decode())", self.etcd.endpoints[0]).stdout
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("etcd_debugging_mvcc_slow_watcher_total"))

    def registry(self, member: int = 0) -> dict:
        return json.loads(ns_exec(self.hub, sys.executable, "-c", _READ, self.etcd.endpoints[member], ROOT).stdout)

    def wanted(self, n: int, registry: dict) -> tuple:
        """(flood, fdb, neighbours) host n must hold: every other host's VTEP
        and endpoints in `registry` (all honest here)."""
        flood, fdb, neigh = set(), {}, {}
        for key, value in registry.items():
            host, vni, *rest = key[len(ROOT):].split("/")
            if host == self.vteps[n] or vni != str(VNI):
                continue
            if rest == ["vtep"]:
                flood.add(host)
            else:
                entry = json.loads(value)
                fdb[entry["mac"]], neigh[entry["ip"]] = host, entry["mac"]
        return flood, fdb, neigh

    def kernel(self, n: int) -> tuple:
        host, flood, fdb = self.hosts[n], set(), {}
        for entry in json.loads(ns_exec(host, "bridge", "-j", "fdb", "show", "dev", f"vtep{VNI}").stdout):
            if entry.get("dst") and entry["mac"] == "00:00:00:00:00:00":
                flood.add(entry["dst"])
            elif entry.get("dst"):
                fdb[entry["mac"]] = entry["dst"]
        neigh = {e["dst"]: e.get("lladdr") for e in
                 json.loads(ns_exec(host, "ip", "-j", "neigh", "show", "dev", f"vtep{VNI}").stdout)
                 if "PERMANENT" in e.get("state", [])}
        return flood, fdb, neigh

    def local_keys(self) -> int:
        return sum(len(vxlan_registry.local_endpoints(str(s), VNI)) + 1 for s in self.states)

    def converged(self, member: int = 0) -> bool:
        registry = self.registry(member)
        if sum(1 for k in registry if f"/{VNI}/" in k) != self.local_keys():
            return False   # the agents have not registered every record yet
        return all(self.kernel(n) == self.wanted(n, registry) for n in range(len(self.hosts)) if n in self.agents)

    def assert_converged(self, timeout: float, what: str, member: int = 0) -> None:
        _until(lambda: self.converged(member), timeout, what + ": " + self.report(member))

    def report(self, member: int) -> str:
        registry = self.registry(member)
        lines = []
        for n in range(len(self.hosts)):
            got, wanted = self.kernel(n), self.wanted(n, registry)
            lines.append(f"host {n}: flood {sorted(got[0])} (wanted {sorted(wanted[0])}), fdb {len(got[1])}/"
                         f"{len(wanted[1])}, neigh {len(got[2])}/{len(wanted[2])}; log: {self.log(n)[-600:]}")
        return "\n".join(lines)

    def close(self) -> None:
        for agent in self.agents.values():
            if agent.poll() is None:
                agent.send_signal(signal.SIGCONT)
                agent.terminate()
            agent.wait()
        self.etcd.close()


@pytest.fixture
def rig(tmp_path, make_netns, request):
    members = getattr(request, "param", 1)
    try:
        hosts = Hosts(tmp_path, make_netns, members=members)
    except RuntimeError as exc:  # no etcd
        pytest.skip(str(exc))
    try:
        yield hosts
    finally:
        hosts.close()


def test_a_burst_of_500_endpoint_changes_ends_with_every_host_equal_to_the_registry(rig):
    for n in range(3):
        rig.add(n, 2)
        rig.start(n)
    rig.assert_converged(30, "the hosts did not converge at the start")
    added = {1: rig.add(1, 200), 2: rig.add(2, 200)}        # 400 new containers at once
    rig.remove(1, added[1][:50])                             # and 100 gone again
    rig.remove(2, added[2][:50])
    rig.assert_converged(60, "after a burst of 500 changes")
    assert len(rig.kernel(0)[1]) == 2 * (2 + 150)


def test_a_watch_whose_revision_was_compacted_resyncs_and_ends_equal_to_the_registry(rig):
    """Host 0's agent is stopped (SIGSTOP: a stalled process) while the
    registry changes and etcd compacts: its watch is far behind a compacted
    revision when it wakes up."""
    for n in range(3):
        rig.add(n, 3)
        rig.start(n)
    rig.assert_converged(30, "the hosts did not converge at the start")
    rig.agents[0].send_signal(signal.SIGSTOP)
    gone = rig.add(1, 5)[:2]
    rig.remove(1, gone)
    rig.remove(2, [f"c{k}" for k in range(7, 10)])          # host 2's first three
    rig.add(2, 4)
    _until(lambda: sum(1 for k in rig.registry() if f"/{VNI}/" in k) == rig.local_keys(), 60,
           "hosts 1 and 2 did not register their changes")
    # about 30 MB of events on the watched prefix (another VNI: never
    # programmed), far more than the socket buffers, the gateway's and gRPC's
    # windows and etcd's queue hold, so etcd takes host 0's stalled watcher off
    # its synced list; more after that, so what etcd keeps for that watcher
    # ends before the revision compacted below
    ns_exec(rig.hub, sys.executable, "-c", _JUNK, rig.etcd.endpoints[0], f"{ROOT}10.98.0.77/4242/endpoints/", "200")
    assert rig.slow_watchers() > 0, "the stalled watch never fell behind"
    ns_exec(rig.hub, sys.executable, "-c", _JUNK, rig.etcd.endpoints[0], f"{ROOT}10.98.0.77/4242/endpoints/x/", "20")
    revision = int(rig.etcd_call("/v3/kv/range", {"key": _b64("/")})["header"]["revision"])
    rig.etcd_call("/v3/kv/compaction", {"revision": revision, "physical": True})
    rig.agents[0].send_signal(signal.SIGCONT)
    rig.assert_converged(60, "host 0 after its watch was compacted")
    assert "compacted" in rig.log(0), rig.log(0)[-2000:]


@pytest.mark.parametrize("rig", [3], indirect=True)
def test_the_watched_member_killed_mid_stream_the_agent_moves_on_and_ends_equal_to_the_registry(rig):
    for n in range(3):
        rig.add(n, 3)
        rig.start(n)   # every agent starts on member m0 (the first endpoint)
    rig.assert_converged(30, "the hosts did not converge at the start")
    rig.etcd.stop("m0")
    rig.add(1, 10)
    rig.remove(2, [f"c{k}" for k in range(7, 10)])
    rig.add(2, 5)
    rig.assert_converged(60, "after member m0 was killed", member=1)
    assert "watch ended" in rig.log(0), rig.log(0)[-2000:]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_a_host_whose_lease_expires_leaves_every_other_host_within_its_ttl(rig):
    for n in range(3):
        rig.add(n, 3)
        rig.start(n)
    rig.assert_converged(30, "the hosts did not converge at the start")
    rig.agents[2].kill()   # host 2 dies: no more renewals; its keys go with its lease (ttl 5 s)
    rig.agents[2].wait()
    del rig.agents[2]
    _until(lambda: not any(k.startswith(f"{ROOT}{rig.vteps[2]}/") for k in rig.registry()), 20,
           "host 2's keys outlived its lease")
    registry = rig.registry()
    _until(lambda: all(rig.kernel(n) == rig.wanted(n, registry) for n in (0, 1)), 10,
           "hosts 0 and 1 kept host 2's entries: " + rig.report(0))
    assert rig.vteps[2] not in rig.kernel(0)[0] and len(rig.kernel(0)[1]) == 3


_ARRIVE = r"""
import base64, json, sys, time, urllib.request
b64 = lambda text: base64.b64encode(text.encode()).decode()
for vtep in sys.argv[3].split(","):
    body = {"key": b64(f"{sys.argv[2]}{vtep}/1042/vtep"), "value": b64(json.dumps({"vtep": vtep}))}
    urllib.request.urlopen(sys.argv[1] + "/v3/kv/put", json.dumps(body).encode(), timeout=10).read()
    time.sleep(float(sys.argv[4]))
"""

_COUNTING = """#!/bin/sh
echo "$(basename "$0")" >> {log}
exec {real} "$@"
"""


def _guard_peers(host: str) -> set:
    """The addresses host `host` accepts the VNI's VXLAN from (nothing without the DROP of the rest)."""
    peers, drops_the_rest = vxlan_guard(host, VNI)
    return peers if drops_the_rest else set()


def test_hosts_arriving_one_by_one_enter_the_udp_guard_with_few_or_no_iptables_execs(rig, tmp_path, monkeypatch,
                                                                                    guard_path):
    """40 hosts register one after the other (as when a cluster starts): host
    0's agent lets them into its UDP guard and ends with its guard and flood
    list exactly the registry's hosts; 15 leave at once and the guard
    follows. With the guard's peers in an ipset, the arrivals cost no
    iptables exec at all (netlink element adds); with one rule per peer
    (no ipset), a few iptables-restores, not one per arrival (each a restore
    under the host's firewall lock). iptables-restore is counted by a
    wrapper on PATH."""
    log = tmp_path / "restores"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("iptables-restore", "iptables"):
        (bin_dir / tool).write_text(_COUNTING.format(log=log, real=shutil.which(tool)))
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    rig.add(0, 1)
    rig.start(0)
    _until(lambda: f"{ROOT}{rig.vteps[0]}/{VNI}/vtep" in rig.registry() and rig.kernel(0) == rig.wanted(0, rig.registry())
           and log.exists(), 30, "host 0's agent did not start")
    log.write_text("")
    arriving = [f"10.98.1.{i}" for i in range(1, 41)]
    ns_exec(rig.hub, sys.executable, "-c", _ARRIVE, rig.etcd.endpoints[0], ROOT, ",".join(arriving), "0.1")

    def settled() -> bool:
        registry = rig.registry()
        peers = rig.wanted(0, registry)[0]
        return peers == set(arriving) and rig.kernel(0) == rig.wanted(0, registry) and _guard_peers(rig.hosts[0]) == peers
    _until(settled, 30, "host 0's guard and flood list did not become the registry's hosts")
    restores = log.read_text().split().count("iptables-restore")
    if guard_path == "ipset":
        assert restores == 0, f"{restores} iptables-restores for {len(arriving)} hosts arriving"
    else:
        assert 1 <= restores <= len(arriving) // 4, f"{restores} guard rewrites for {len(arriving)} hosts arriving"

    for vtep in arriving[:15]:   # 15 hosts leave at once
        rig.etcd_call("/v3/kv/deleterange", {"key": _b64(f"{ROOT}{vtep}/{VNI}/vtep")})
    _until(lambda: _guard_peers(rig.hosts[0]) == set(arriving[15:]) and rig.kernel(0)[0] == set(arriving[15:]), 30,
           "the guard did not follow the hosts that left")
    if guard_path == "ipset":
        assert log.read_text().split().count("iptables-restore") == 0, "leaving hosts cost an iptables exec"


def test_the_firewall_lock_held_elsewhere_does_not_cost_the_agent_its_lease(rig, guard_path):
    """Someone else holds the host's firewall lock for longer than the
    agent's lease TTL (5 s) while hosts arrive: the agent keeps renewing its
    lease (its keys stay in etcd, no "was gone" in its log). With one rule
    per peer it programs none of the newcomers while their guard rules cannot
    be written, and once the lock is free its guard and tables are exactly
    the registry's; with the ipset, whose elements need no lock, the
    newcomers are let in and programmed while the lock is still held."""
    from cni_backend import locks
    rig.add(0, 1)
    rig.start(0)
    _until(lambda: f"{ROOT}{rig.vteps[0]}/{VNI}/vtep" in rig.registry() and rig.kernel(0) == rig.wanted(0, rig.registry()),
           30, "host 0's agent did not start")
    arriving = [f"10.98.2.{i}" for i in range(1, 4)]
    # the lock of host 0's namespace, whose rules its agent changes
    lock = ns_exec(rig.hosts[0], sys.executable, "-c",
                   "from cni_backend.net import iptables; print(iptables.lock_path())").stdout.strip()
    with locks.held(lock):
        ns_exec(rig.hub, sys.executable, "-c", _ARRIVE, rig.etcd.endpoints[0], ROOT, ",".join(arriving), "0")
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            assert f"{ROOT}{rig.vteps[0]}/{VNI}/vtep" in rig.registry(), "host 0's lease ran out: " + rig.log(0)[-800:]
            if guard_path == "rules":
                assert rig.kernel(0)[0] == set(), "a newcomer was programmed before the guard let it in"
            time.sleep(0.5)
        if guard_path == "ipset":
            assert _guard_peers(rig.hosts[0]) == set(arriving), "the ipset's elements waited for the firewall lock"
            assert rig.kernel(0) == rig.wanted(0, rig.registry())
    assert "was gone" not in rig.log(0)
    _until(lambda: _guard_peers(rig.hosts[0]) == set(arriving) and rig.kernel(0) == rig.wanted(0, rig.registry()),
           30, "host 0 did not catch up once the lock was free")
