"""An agent's lease is renewed by a thread of its own (cni_backend/etcd_lease.py
`_keep_alive`): an agent whose loop is busy or stalled for longer than its
TTL (a full resync on a starved CPU) keeps its keys, and a host whose agent
is gone (here: its keep-alive stopped) still loses them within the TTL."""

import time

import pytest

from cni_backend import vxlan_registry
from cni_backend.ipam.etcd_store import client_for

pytestmark = pytest.mark.etcd

VNI, HOST, TTL = 1042, "10.99.0.7", 3


def _keys(etcd, prefix) -> list:
    return sorted(meta["key"].decode() for _, meta in client_for(etcd.endpoints[0]).get_prefix(prefix))


def test_an_agent_stalled_longer_than_its_ttl_keeps_its_keys_until_its_keep_alive_stops(etcd, tmp_path, agents):
    prefix = "/test/keepalive"
    vxlan_registry.record_endpoint(str(tmp_path), VNI, "c1-eth0", ["10.42.7.2/16"], "02:42:0a:2a:07:02")
    agent = agents[HOST] = vxlan_registry.Agent(lambda: client_for(etcd.endpoints[0]), prefix, VNI, HOST,
                                                str(tmp_path), ttl=TTL)
    agent.register()
    mine = _keys(etcd, prefix)
    assert mine == [f"{prefix}/vxlan/hosts/{HOST}/{VNI}/endpoints/10.42.7.2", f"{prefix}/vxlan/hosts/{HOST}/{VNI}/vtep"]
    # the agent's loop does nothing for three TTLs: its keep-alive renews the lease meanwhile
    time.sleep(3 * TTL)
    assert _keys(etcd, prefix) == mine, "the host's keys expired while its agent was busy"
    assert agent.leases == 1
    # the agent gone (its process dead takes the thread with it): the keys go within the TTL
    agent.stop_keep_alive()
    deadline = time.monotonic() + 3 * TTL
    while _keys(etcd, prefix):
        assert time.monotonic() < deadline, "the keys outlived the lease once nothing renewed it"
        time.sleep(0.2)
