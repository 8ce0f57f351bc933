"""Concurrent CreateNetwork calls that clash (the same cni.name, the same
`-o bridge=`): real processes, each with its own Flask app on one state
directory (as gunicorn's workers are), released together by a barrier; the
host-side work (the bridges) happens in a private network namespace
(tests/private_netns.py). Exactly one may succeed: the checks and the record
they check against are one critical section."""

import multiprocessing

from tests import private_netns
from tests.unit.shim_client import Client, app_in

COUNT = 6


def _create(root, network_id, generic, barrier, out):
    client = Client(app_in(root))
    barrier.wait()
    status, answer = client.post("/NetworkDriver.CreateNetwork", {
        "NetworkID": network_id, "Options": {"com.docker.network.generic": generic},
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.61.0.0/24", "Gateway": "10.61.0.1/24"}]})
    out.put((network_id, status, (answer or {}).get("Err", "")))


def _race(root, generic) -> list:
    """In the private netns: COUNT processes create networks with `generic`; their answers."""
    app_in(root)  # the state file exists before the race, as it does once the shim runs
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(COUNT), ctx.Queue()
    ids = [f"{n:02d}" + "a" * 62 for n in range(COUNT)]
    procs = [ctx.Process(target=_create, args=(root, i, generic, barrier, out)) for i in ids]
    for p in procs:
        p.start()
    got = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return sorted(got)


def _outcome(got):
    ok = [g for g in got if g[1] == 200]
    refused = [g for g in got if g[1] != 200]
    return ok, refused


def test_concurrent_create_networks_with_one_cni_name_make_exactly_one(tmp_path):
    got = private_netns.run(_race, str(tmp_path), {"cni.name": "racer"})
    ok, refused = _outcome(got)
    assert len(ok) == 1, got
    assert len(refused) == COUNT - 1
    assert all("CNI network name 'racer' clashes with network" in err for _, _, err in refused), got


def test_concurrent_create_networks_with_one_bridge_make_exactly_one(tmp_path):
    got = private_netns.run(_race, str(tmp_path), {"bridge": "rcnirace0"})
    ok, refused = _outcome(got)
    assert len(ok) == 1, got
    winner = ok[0][0][:12]
    assert all(f"bridge 'rcnirace0' is already used by network {winner}" in err for _, _, err in refused), got
