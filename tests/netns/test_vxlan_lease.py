"""One lease per host, kept alive (issue 20, item 2): a host that dies leaves
every other host within its TTL; a host cut off from etcd (its packets to
the etcd port dropped, or its agent stopped) for longer than its TTL loses
its keys, and once back registers again under a new lease, with no
duplicate and nothing lost; a wall clock set an hour forward or back changes
nothing. Every test ends with every host's flood list, FDB and neighbours
equal to what the registry says (the comparison of test_vxlan_watch).

The rig is test_vxlan_watch's: three hosts (namespaces) on a hub bridge that
also holds the etcd member, each with the network's VTEP and an agent
(`cnm-shim vxlan-agent`, ttl 5 s)."""

import json
import signal
import subprocess
import sys
import time
import urllib.parse

import pytest

from cni_backend import vxlan_registry
from tests.conftest import ns_exec
from tests.netns.test_vxlan import _until
from tests.netns.test_vxlan_watch import HUB, ROOT, VNI, rig  # noqa: F401 - rig is the fixture

pytestmark = pytest.mark.netns

TTL = 5

_LEASES = r"""
import base64, json, sys, urllib.request
from etcd3gw.utils import _encode, _increment_last_byte
prefix = sys.argv[2]
body = json.dumps({"key": _encode(prefix), "range_end": _encode(_increment_last_byte(prefix))}).encode()
reply = json.load(urllib.request.urlopen(sys.argv[1] + "/v3/kv/range", body, timeout=10))
print(json.dumps({base64.b64decode(kv["key"]).decode(): [kv.get("lease", "0"), kv.get("mod_revision"),
                                                         base64.b64decode(kv.get("value", "")).decode()]
                  for kv in reply.get("kvs", [])}))
"""

# The agent with its wall clock (time.time, time.time_ns: what Python's own
# clock readers, logging and the libraries it uses read) moved by an offset
# that SIGUSR1 moves an hour forward and SIGUSR2 two hours back. The monotonic
# clock is left alone, as a real jump of the wall clock leaves it.
_SHIFTED = r"""
import runpy, signal, sys, time
offset = [0.0]
real_time, real_time_ns = time.time, time.time_ns
time.time = lambda: real_time() + offset[0]
time.time_ns = lambda: real_time_ns() + int(offset[0] * 1e9)

def jump(by):
    def handler(*_):
        offset[0] += by
        print(f"wall clock jumped by {by:+.0f} s: now {time.ctime(time.time())}", file=sys.stderr, flush=True)
    return handler

signal.signal(signal.SIGUSR1, jump(3600))
signal.signal(signal.SIGUSR2, jump(-7200))
sys.argv = ["cnm-shim"] + sys.argv[1:]
runpy.run_module("cnm_shim.cli", run_name="__main__")
"""


def leases(rig, n: int) -> dict:
    """key -> [lease, mod revision, value] of host n's keys in etcd."""
    return json.loads(ns_exec(rig.hub, sys.executable, "-c", _LEASES, rig.etcd.endpoints[0],
                              f"{ROOT}{rig.vteps[n]}/").stdout)


def one_lease(rig, n: int) -> str:
    """The lease every key of host n is bound to: one, the same for all."""
    found = {lease for lease, _, _ in leases(rig, n).values()}
    assert len(found) == 1 and "0" not in found, f"host {n}'s keys are bound to leases {found}, not to one"
    return found.pop()


def no_duplicates(rig) -> None:
    """Each local container of each host is in the registry once, under its
    own host, and nothing else is: no endpoint under two keys, none missing."""
    registry = rig.registry()
    for n in range(len(rig.hosts)):
        local = vxlan_registry.local_endpoints(str(rig.states[n]), VNI)
        mine = {k: json.loads(v) for k, v in registry.items() if k.startswith(f"{ROOT}{rig.vteps[n]}/{VNI}/endpoints/")}
        assert sorted(e["ip"] for e in mine.values()) == sorted(local), f"host {n}: registry {sorted(mine)}, local {local}"
        assert all(local[e["ip"]] == e["mac"] for e in mine.values())
    macs = [json.loads(v)["mac"] for k, v in registry.items() if "/endpoints/" in k]
    assert len(macs) == len(set(macs)), "one MAC registered twice"


def partition(rig, n: int, cut: bool) -> None:
    """Host n's packets to and from the etcd client port dropped (cut), or let through again."""
    port = str(urllib.parse.urlsplit(rig.etcd.endpoints[0]).port)
    for chain, direction in (("OUTPUT", "--dport"), ("INPUT", "--sport")):
        ns_exec(rig.hosts[n], "iptables", "-I" if cut else "-D", chain, "-p", "tcp", "-s" if chain == "INPUT" else "-d",
                HUB, direction, port, "-j", "DROP")


def gone_from_others(rig, n: int, others) -> bool:
    registry = rig.registry()
    if any(key.startswith(f"{ROOT}{rig.vteps[n]}/") for key in registry):
        return False
    return all(rig.kernel(m) == rig.wanted(m, registry) for m in others)


def test_a_killed_host_leaves_every_other_host_within_its_ttl_and_all_its_keys_shared_one_lease(rig):
    for n in range(3):
        rig.add(n, 3)
        rig.start(n)
    rig.assert_converged(30, "the hosts did not converge at the start")
    for n in range(3):
        one_lease(rig, n)   # the VTEP and every endpoint of a host: one lease
    assert len({one_lease(rig, n) for n in range(3)}) == 3, "each host has a lease of its own"
    rig.agents[1].send_signal(signal.SIGKILL)
    rig.agents[1].wait()
    del rig.agents[1]
    _until(lambda: gone_from_others(rig, 1, (0, 2)), TTL + 10,
           "host 1 was still in the registry or on a host after its ttl: " + rig.report(0))
    assert rig.vteps[1] not in rig.kernel(0)[0] and rig.vteps[1] not in rig.kernel(2)[0]
    assert all(rig.kernel(m)[1] and all(dst != rig.vteps[1] for dst in rig.kernel(m)[1].values()) for m in (0, 2))


@pytest.mark.parametrize("how", ["dropped", "stopped"])
def test_a_host_cut_off_longer_than_its_ttl_comes_back_with_no_duplicate_and_nothing_lost(rig, how):
    """Host 2 is cut off from etcd: its packets to and from the etcd port
    dropped in its namespace (`dropped`), or its agent stopped (SIGSTOP:
    `stopped`). Meanwhile its containers change, and so do host 0's."""
    for n in range(3):
        rig.add(n, 3)
        rig.start(n)
    rig.assert_converged(30, "the hosts did not converge at the start")
    before = one_lease(rig, 2)
    if how == "dropped":
        partition(rig, 2, cut=True)
    else:
        rig.agents[2].send_signal(signal.SIGSTOP)
    try:
        _until(lambda: gone_from_others(rig, 2, (0, 1)), TTL + 15,
               "host 2's keys outlived its lease, or a host kept its entries: " + rig.report(0))
        rig.remove(2, ["c7"])          # host 2's first container goes, two come, while it is away
        rig.add(2, 2)
        rig.add(0, 2)                  # and host 0 gets two more
        _until(lambda: len([k for k in rig.registry() if k.startswith(f"{ROOT}{rig.vteps[0]}/")]) == 6, 20,
               "host 0 did not register its new containers")
        time.sleep(2)                  # host 2 keeps trying meanwhile
    finally:
        if how == "dropped":
            partition(rig, 2, cut=False)
        else:
            rig.agents[2].send_signal(signal.SIGCONT)
    rig.assert_converged(40, f"after host 2 came back ({how})")
    no_duplicates(rig)
    after = one_lease(rig, 2)
    assert after != before, "host 2 came back under its old lease, which had expired"
    assert "registering again under lease" in rig.log(2), rig.log(2)[-2000:]
    for n in (0, 1):
        assert rig.vteps[2] in rig.kernel(n)[0]


def test_an_agent_restarted_within_its_ttl_leaves_no_key_of_a_container_gone_meanwhile(rig):
    """Host 2's agent (ttl 60 s here) is killed and started again at once,
    after one of its containers went: the new agent deletes that container's
    key, left under the old lease (still alive), rather than leaving it to
    the other hosts for up to a minute."""
    from tests.netns.test_vxlan import _agent
    for n in range(3):
        rig.add(n, 3)
    rig.start(0)
    rig.start(1)
    rig.agents[2] = _agent(rig.hosts[2], rig.etcd.endpoints, rig.states[2], ttl=60)
    rig.assert_converged(30, "the hosts did not converge at the start")
    rig.agents[2].send_signal(signal.SIGKILL)
    rig.agents[2].wait()
    rig.remove(2, ["c7"])
    rig.agents[2] = _agent(rig.hosts[2], rig.etcd.endpoints, rig.states[2], ttl=60)
    rig.assert_converged(30, "host 2's restarted agent left a container gone meanwhile in the registry")
    no_duplicates(rig)
    one_lease(rig, 2)


def test_the_wall_clock_jumping_an_hour_forward_and_back_changes_nothing(rig):
    """Host 0's agent runs with its wall clock moved an hour forward, then two
    hours back, each for twice its TTL: its lease is the same throughout, none
    of its keys is written again, and no host's tables change."""
    for n in range(3):
        rig.add(n, 3)
        if n:
            rig.start(n)
    rig.agents[0] = subprocess.Popen(
        ["ip", "netns", "exec", rig.hosts[0], sys.executable, "-c", _SHIFTED, "vxlan-agent",
         "--etcd-endpoints", ",".join(rig.etcd.endpoints), "--insecure-etcd", "--vtep-dev", "underlay",
         "--state-dir", str(rig.states[0]), "--ttl", str(TTL), "--interval", "0.5"],
        stdout=subprocess.DEVNULL, stderr=open(rig.states[0] / "agent.log", "a"))
    rig.assert_converged(30, "the hosts did not converge at the start")
    keys, kernels = leases(rig, 0), [rig.kernel(n) for n in range(3)]
    lease = one_lease(rig, 0)
    for jump in (signal.SIGUSR1, signal.SIGUSR2):
        rig.agents[0].send_signal(jump)
        deadline = time.monotonic() + 2 * TTL + 2
        while time.monotonic() < deadline:
            assert leases(rig, 0) == keys, f"host 0's keys changed after {jump.name}: {rig.log(0)[-2000:]}"
            assert [rig.kernel(n) for n in range(3)] == kernels, f"a host's tables changed after {jump.name}"
            time.sleep(0.5)
    assert rig.log(0).count("wall clock jumped") == 2, rig.log(0)[-2000:]
    assert one_lease(rig, 0) == lease
    rig.assert_converged(5, "after the clock jumps")
    assert "registering again" not in rig.log(0), rig.log(0)[-2000:]
