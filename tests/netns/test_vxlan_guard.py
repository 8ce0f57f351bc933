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
