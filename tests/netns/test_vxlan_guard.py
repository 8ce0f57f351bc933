"""The VXLAN UDP guard (cni_backend/net/vxlan_guard.py) on its own, in a
namespace: moving between the ipset path and the per-peer rules (an earlier
version's rules, a kernel without ipset) leaves exactly the wanted peers and
nothing of the other path; remove is idempotent and leaves no set. Packets
through both paths: tests/netns/test_vxlan_registry.py."""

import json
import sys

import pytest

from tests.conftest import ns_exec, vxlan_guard

pytestmark = pytest.mark.netns

VNI = 1042

_STEP = r'''
import json, subprocess, sys
from cni_backend.net import features, vxlan_guard
from tests.conftest import ipsets
step, path, peers = sys.argv[1], sys.argv[2], [p for p in sys.argv[3].split(",") if p]
features._memo["ipset"] = path == "ipset"
if step == "ensure":
    changed = vxlan_guard.ensure(1042, 4789, peers)
elif step == "update":
    changed = vxlan_guard.update(1042, 4789, [p for p in sys.argv[4].split(",") if p], peers)
elif step == "remove":
    changed = vxlan_guard.remove(1042)
rules = [l for l in subprocess.run(["iptables", "-w", "-S", "INPUT"], capture_output=True, text=True).stdout.splitlines()
         if "-vtep" in l]
print(json.dumps({"changed": changed, "rules": rules, "sets": ipsets()}))
'''


def _step(netns: str, step: str, path: str, peers=(), old=()) -> dict:
    return json.loads(ns_exec(netns, sys.executable, "-c", _STEP, step, path, ",".join(peers), ",".join(old)).stdout)


def test_the_guard_moves_between_its_paths_and_leaves_nothing_when_removed(make_netns):
    host = make_netns()
    a, b, c, d = "10.99.0.2", "10.99.0.3", "10.99.0.4", "10.99.0.5"
    done = _step(host, "ensure", "rules", [a, b])
    assert vxlan_guard(host, VNI) == ({a, b}, True) and len(done["rules"]) == 3 and done["sets"] == []

    # the ipset path takes over the per-peer rules: one ACCEPT on the set, then the DROP
    done = _step(host, "ensure", "ipset", [a, b, c])
    assert done["changed"] and vxlan_guard(host, VNI) == ({a, b, c}, True)
    assert len(done["rules"]) == 2 and "--match-set rcni-vtep-1042 src" in done["rules"][0]
    assert done["sets"] == ["rcni-vtep-1042"]
    assert _step(host, "ensure", "ipset", [a, b, c])["changed"] is False
    done = _step(host, "update", "ipset", [b, c, d], old=[a, b, c])
    assert done["changed"] and vxlan_guard(host, VNI) == ({b, c, d}, True) and len(done["rules"]) == 2
    # ensure makes the elements right without a new rule
    assert _step(host, "ensure", "ipset", [d])["changed"] and vxlan_guard(host, VNI) == ({d}, True)

    # and back to one rule per peer (the feature gone): the set goes with its rule
    done = _step(host, "ensure", "rules", [b])
    assert vxlan_guard(host, VNI) == ({b}, True) and len(done["rules"]) == 2 and done["sets"] == []

    _step(host, "ensure", "ipset", [a])
    for _ in range(2):
        done = _step(host, "remove", "ipset")
        assert done["rules"] == [] and done["sets"] == []


def test_a_bad_address_or_vni_reaches_neither_netlink_nor_the_rules(make_netns):
    host = make_netns()
    _step(host, "ensure", "ipset", ["10.99.0.2"])
    for bad in ("10.99.0.3 -j ACCEPT", "fd00::1", "10.99.0.300"):
        failed = ns_exec(host, sys.executable, "-c", _STEP, "update", "ipset", bad, "10.99.0.2", check=False)
        assert failed.returncode != 0 and "ValueError" in failed.stderr
    assert vxlan_guard(host, VNI) == ({"10.99.0.2"}, True)
    _step(host, "remove", "ipset")


_LISTINGS = r'''
import json, shlex, subprocess, sys
from cni_backend.net import features, iptables, tools, vxlan_guard
features._memo["ipset"] = sys.argv[1] == "ipset"
listed, present = [], vxlan_guard.present
vxlan_guard.present = lambda vni: listed.append(vni) or present(vni)

def ensure():
    before = len(listed)
    vxlan_guard.ensure(1042, 4789, ["10.99.0.2"])
    return len(listed) - before

def ours():   # a restore of ours that carries what the listings found (an attachment's)
    with iptables.host_lock(), iptables.keeping_listings(1):
        tools.run(["iptables-restore", "-w", "--noflush"], "*filter\n:RCNI-T-SCRATCH - [0:0]\n-A RCNI-T-SCRATCH -j RETURN\nCOMMIT\n")

def foreign(*argv):
    subprocess.run(["iptables", "-w", *argv], check=True)

steps = {"first (makes it)": ensure(), "again (finds it)": ensure(), "once more": ensure()}
ours()
steps["after our restore"] = ensure()
drop = [l for l in present(1042) if l.endswith("-j DROP")][0]
foreign("-D", *shlex.split(drop)[1:])
steps["after the DROP was deleted by hand"] = ensure()
steps["DROP back"] = any(l.endswith("-j DROP") for l in present(1042))
steps["again after that (finds it)"] = ensure()
steps["once more after that"] = ensure()
foreign("-A", "FORWARD", "-s", "10.1.2.3/32", "-j", "ACCEPT")
steps["after an unrelated rule of someone else"] = ensure()
print(json.dumps(steps))
'''


@pytest.mark.parametrize("path", ["ipset", "rules"])
def test_the_guard_is_listed_again_only_after_a_commit_not_ours(make_netns, path):
    """Every ADD ensures its network's guard. While no one commits but our
    attachments' restores, what the last listing found in place still is,
    and it is not listed again; any other commit, to any rule (the guard's
    own making too), makes the next one list, and put right what is missing."""
    host = make_netns()
    steps = json.loads(ns_exec(host, sys.executable, "-c", _LISTINGS, path).stdout)
    assert steps == {"first (makes it)": 1, "again (finds it)": 1, "once more": 0, "after our restore": 0,
                     "after the DROP was deleted by hand": 1, "DROP back": True, "again after that (finds it)": 1,
                     "once more after that": 0, "after an unrelated rule of someone else": 1}, steps
    assert vxlan_guard(host, VNI) == ({"10.99.0.2"}, True)
    _step(host, "remove", path)
