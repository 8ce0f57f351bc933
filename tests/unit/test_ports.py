"""Published ports as Docker means them (issue 15, item 3): cnm_shim/ports.py
and the translation of com.docker.network.portmap into CNI portMappings.

Each test runs in a private network namespace (tests/private_netns.py), so
the allocator's real host check (binding the port) sees only the listeners
the test opens. The translation tests drive the real Flask app and its state
file; only the CNI runtime caller is a recorder, since what is under test is
what the shim asks CNI to publish, not the portmap plug-in (tests/netns)."""

import json
import multiprocessing
import os
import socket
import sqlite3
import threading

import pytest

from cnm_shim import ports
from cnm_shim.errors import DriverError
from tests import private_netns
from tests.unit.shim_client import Client, app_in

NET = "a" * 64
EP1, EP2, EP3 = "1" * 64, "2" * 64, "3" * 64
RESULT = {"cniVersion": "1.0.0", "interfaces": [{"name": "veth1"}, {"name": "eth0", "sandbox": "/x"}],
          "ips": [{"address": "10.60.0.5/24", "gateway": "10.60.0.1", "interface": 1}]}


@pytest.fixture(scope="module", autouse=True)
def private_namespaces():
    reason = private_netns.available()
    if reason:
        pytest.skip(reason)


def entry(host_port, end=0, port=80, proto=6, host_ip=""):
    return {"Proto": proto, "IP": "", "Port": port, "HostIP": host_ip, "HostPort": host_port, "HostPortEnd": end}


class Recorder:
    """The CNI runtime caller: records the portMappings each ADD asks for."""

    def __init__(self, fail_add=False):
        self.added, self.deleted, self.fail_add = [], [], fail_add

    def add(self, conf, raw, att, prev_result=None):
        if self.fail_add:
            from cni_backend.errors import CNIError, PLUGIN_FAILED
            raise CNIError(PLUGIN_FAILED, "rancher-portmap failed")
        self.added.append(att.capability_args.get("portMappings"))
        return RESULT

    def delete(self, conf, raw, att):
        self.deleted.append((att.capability_args or {}).get("portMappings"))


class Shim(Client):
    """The real app on `root`, a bridge network made by CreateNetwork (in the
    private namespace) and endpoints joined (their CNI result recorded)."""

    def __init__(self, root: str, endpoints=(EP1, EP2, EP3)):
        from cnm_shim.state import ENDPOINT, State
        self.app = app_in(root)
        super().__init__(self.app)
        self.services = self.app.extensions["rancher"]
        self.cni = self.services.translator.cni = Recorder()
        if self.services.state.get("network", NET) is None:
            self.ok("/NetworkDriver.CreateNetwork", {"NetworkID": NET, "Options": {"com.docker.network.generic": {
                "bridge": "rcnitpt0"}}, "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.60.0.0/24",
                                                      "Gateway": "10.60.0.1/24"}]})
        for n, ep in enumerate(endpoints):
            key = State.endpoint_key(NET, ep)
            if self.services.state.get(ENDPOINT, key) is None:
                self.ok("/NetworkDriver.CreateEndpoint", {"NetworkID": NET, "EndpointID": ep,
                                                          "Interface": {"Address": f"10.60.0.{5 + n}/24"}})
                record = self.services.state.get(ENDPOINT, key)  # as a Join leaves it
                self.services.state.put(ENDPOINT, key, dict(record, result=RESULT, src_name="rc" + ep[:12]))

    def publish(self, ep, *entries):
        return self.post("/NetworkDriver.ProgramExternalConnectivity",
                         {"NetworkID": NET, "EndpointID": ep, "Options": {"com.docker.network.portmap": list(entries)}})

    def oper_info(self, ep):
        return self.ok("/NetworkDriver.EndpointOperInfo", {"NetworkID": NET, "EndpointID": ep})["Value"]


def in_netns(fn):
    """The test body runs in a private network namespace."""
    def test(tmp_path):
        private_netns.run(fn, str(tmp_path))
    test.__name__, test.__doc__ = fn.__name__, fn.__doc__
    return test


# -- the translation: what the shim asks CNI to publish ------------------------------

@in_netns
def test_a_host_port_range_publishes_one_port_of_it_not_one_per_port(root):
    """-p 8000-8003:80 was 8000->80, 8001->81, 8002->82, 8003->83: container
    ports nobody published."""
    shim = Shim(root)
    assert shim.publish(EP1, entry(8000, 8003)) == (200, {})
    assert shim.cni.added == [[{"hostPort": 8000, "containerPort": 80, "protocol": "tcp"}]]
    assert shim.oper_info(EP1)["com.docker.network.portmap"] == [entry(8000, 8000)]


@in_netns
def test_the_whole_port_range_is_one_mapping_not_65535(root):
    """1-65535 gave 65,535 mappings and a 4 MB config."""
    shim = Shim(root)
    assert shim.publish(EP1, entry(1, 65535, port=443)) == (200, {})
    (mappings,) = shim.cni.added
    assert len(mappings) == 1 and mappings[0]["containerPort"] == 443
    assert len(json.dumps(shim.services.state.all("endpoint"))) < 10_000


@pytest.mark.parametrize("proto,name", [(6, "tcp"), (17, "udp")])
def test_host_port_zero_publishes_an_ephemeral_port(tmp_path, proto, name):
    """-p 80 and -P (HostPort 0) published nothing, silently."""
    def body(root):
        shim = Shim(root)
        assert shim.publish(EP1, entry(0, proto=proto)) == (200, {})
        (mappings,) = shim.cni.added
        low, high = ports.ephemeral_range()
        assert len(mappings) == 1 and low <= mappings[0]["hostPort"] <= high
        assert mappings[0]["protocol"] == name and mappings[0]["containerPort"] == 80
        assert shim.oper_info(EP1)["com.docker.network.portmap"][0]["HostPort"] == mappings[0]["hostPort"]
    private_netns.run(body, str(tmp_path))


@in_netns
def test_a_port_a_host_process_has_bound_is_refused(root):
    """-p 22:80 DNATed new SSH connections to the container. A listener on the
    host (TCP, on one address) or a bound UDP socket keeps its port."""
    shim = Shim(root)
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp.bind(("0.0.0.0", 0))
        held_tcp, held_udp = tcp.getsockname()[1], udp.getsockname()[1]
        status, answer = shim.publish(EP1, entry(held_tcp))
        assert status == 400 and answer["Err"] == (f"Bind for 0.0.0.0:{held_tcp} failed: port is already in use by "
                                                  "a process on the host (tcp)"), answer
        status, answer = shim.publish(EP1, entry(held_udp, proto=17))
        assert status == 400 and f"Bind for 0.0.0.0:{held_udp} failed: port is already in use" in answer["Err"]
        assert shim.cni.added == [] and shim.services.translator.ports.held() == []
        assert shim.publish(EP1, entry(held_tcp, proto=17)) == (200, {}), "another protocol's port is another port"


@in_netns
def test_a_range_skips_ports_host_processes_have_bound(root):
    shim = Shim(root)
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        held = listener.getsockname()[1]
        assert shim.publish(EP1, entry(held, held + 1)) == (200, {})
        assert shim.cni.added[0][0]["hostPort"] == held + 1


@in_netns
def test_a_port_another_endpoint_holds_is_refused_with_dockers_message(root):
    shim = Shim(root)
    assert shim.publish(EP1, entry(8000)) == (200, {})
    status, answer = shim.publish(EP2, entry(8000))
    assert (status, answer["Err"]) == (400, "Bind for 0.0.0.0:8000 failed: port is already allocated")
    status, answer = shim.publish(EP2, entry(8000, host_ip="127.0.0.1"))
    assert (status, answer["Err"]) == (400, "Bind for 127.0.0.1:8000 failed: port is already allocated"), \
        "0.0.0.0 holds the port on every address"
    assert shim.publish(EP2, entry(8000, proto=17)) == (200, {}), "udp 8000 is not tcp 8000"
    status, answer = shim.publish(EP3, entry(8000, 8000, proto=17))
    assert status == 400 and "port is already allocated" in answer["Err"]


@in_netns
def test_a_range_gives_each_endpoint_the_next_free_port_and_refuses_when_all_are_held(root):
    shim = Shim(root)
    assert shim.publish(EP1, entry(8000, 8001)) == (200, {})
    assert shim.publish(EP2, entry(8000, 8001)) == (200, {})
    assert [m[0]["hostPort"] for m in shim.cni.added] == [8000, 8001]
    status, answer = shim.publish(EP3, entry(8000, 8001))
    assert (status, answer["Err"]) == (400, "Bind for 0.0.0.0:8000-8001 failed: all ports are allocated "
                                            "(tcp; held by other containers or by processes on the host)")


@in_netns
def test_specific_addresses_hold_their_port_apart_and_a_wildcard_overlaps_them(root):
    shim = Shim(root)
    assert shim.publish(EP1, entry(8000, host_ip="127.0.0.1")) == (200, {})
    assert shim.publish(EP2, entry(8000, host_ip="127.0.0.2")) == (200, {})
    status, answer = shim.publish(EP3, entry(8000))
    assert (status, answer["Err"]) == (400, "Bind for 0.0.0.0:8000 failed: port is already allocated")
    assert shim.cni.added[0] == [{"hostPort": 8000, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}]


@in_netns
def test_an_address_the_host_does_not_have_is_refused(root):
    shim = Shim(root)
    status, answer = shim.publish(EP1, entry(8000, host_ip="192.0.2.7"))
    assert (status, answer["Err"]) == (400, "Bind for 192.0.2.7:8000 failed: cannot assign requested address: "
                                            "192.0.2.7 is not an address of this host (tcp)")


@in_netns
def test_ports_are_released_on_revoke_and_delete_endpoint_idempotently(root):
    shim = Shim(root)
    assert shim.publish(EP1, entry(8000)) == (200, {})
    assert shim.publish(EP2, entry(8000))[0] == 400
    for _ in range(2):
        shim.ok("/NetworkDriver.RevokeExternalConnectivity", {"NetworkID": NET, "EndpointID": EP1})
    assert shim.publish(EP2, entry(8000)) == (200, {})
    assert shim.publish(EP1, entry(8000))[0] == 400
    for _ in range(2):
        shim.ok("/NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP2})
    assert shim.services.translator.ports.held() == []
    assert shim.publish(EP1, entry(8000)) == (200, {})


@in_netns
def test_ports_are_released_with_the_network(root):
    shim = Shim(root)
    assert shim.publish(EP1, entry(8000)) == (200, {})
    shim.ok("/NetworkDriver.DeleteNetwork", {"NetworkID": NET})
    assert shim.services.translator.ports.held() == []


@in_netns
def test_a_failed_publish_keeps_no_port(root):
    shim = Shim(root)
    shim.cni.fail_add = True
    status, answer = shim.publish(EP1, entry(8000))
    assert status == 400 and "publishing ports failed" in answer["Err"]
    assert shim.services.translator.ports.held() == []
    shim.cni.fail_add = False
    assert shim.publish(EP2, entry(8000)) == (200, {})


@in_netns
def test_a_repeated_publish_keeps_its_port(root):
    shim = Shim(root)
    assert shim.publish(EP1, entry(0)) == (200, {})
    assert shim.publish(EP1, entry(0)) == (200, {})
    assert len(shim.cni.added) == 1, "Docker's retry with the same ports changes nothing"
    assert shim.oper_info(EP1)["com.docker.network.portmap"][0]["HostPort"] == shim.cni.added[0][0]["hostPort"]


@in_netns
def test_allocations_survive_a_plug_in_restart(root):
    first = Shim(root)
    assert first.publish(EP1, entry(8000, 8001)) == (200, {})
    again = Shim(root)  # a new process's app, the same state file
    assert again.publish(EP2, entry(8000, 8001)) == (200, {})
    assert again.cni.added == [[{"hostPort": 8001, "containerPort": 80, "protocol": "tcp"}]]
    assert again.publish(EP3, entry(8000))[1]["Err"] == "Bind for 0.0.0.0:8000 failed: port is already allocated"


@in_netns
def test_a_port_of_an_endpoint_whose_record_is_gone_is_reclaimed(root):
    """Killed between allocating and recording, or removed while the plug-in was away."""
    shim = Shim(root)
    allocator = shim.services.translator.ports
    allocator.allocate(f"{NET}/{'9' * 64}", [ports.Request("tcp", 80, "", 8000, 8000)])
    assert shim.publish(EP1, entry(8000)) == (200, {})
    assert [row[4] for row in allocator.held()] == [f"{NET}/{EP1}"]


# -- the allocator on the real SQLite file, concurrently -----------------------------

def _allocate_in_child(path, owner, barrier, results):
    allocator = ports.PortAllocator(path)
    barrier.wait()
    try:
        results.put((owner, allocator.allocate(owner, [ports.Request("tcp", 80, "", 9000, 9007)])[0]["hostPort"]))
    except DriverError as exc:
        results.put((owner, str(exc)))


def _concurrent_processes(root):
    """Ten processes (as gunicorn's workers are) on one state.db, released together."""
    path = os.path.join(root, "state.db")
    ports.PortAllocator(path)
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(10), ctx.Queue()
    children = [ctx.Process(target=_allocate_in_child, args=(path, f"n/e{i}", barrier, results)) for i in range(10)]
    for child in children:
        child.start()
    got = dict(results.get(timeout=60) for _ in children)
    for child in children:
        child.join()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT host_port, owner FROM host_ports").fetchall()
    return [got[f"n/e{i}"] for i in range(10)], rows


def test_processes_asking_for_the_same_range_at_once_get_different_ports(tmp_path):
    got, rows = private_netns.run(_concurrent_processes, str(tmp_path))
    taken = sorted(p for p in got if isinstance(p, int))
    assert taken == list(range(9000, 9008)), got
    assert sorted(p for p in got if isinstance(p, str)) == \
        ["Bind for 0.0.0.0:9000-9007 failed: all ports are allocated "
         "(tcp; held by other containers or by processes on the host)"] * 2
    assert sorted(rows) == sorted((p, f"n/e{i}") for i, p in enumerate(got) if isinstance(p, int))


def _concurrent_threads(root):
    allocator = ports.PortAllocator(os.path.join(root, "state.db"))
    got, barrier = {}, threading.Barrier(8)

    def one(i):
        barrier.wait()
        got[i] = allocator.allocate(f"n/t{i}", [ports.Request("udp", 53, "", 0, 0)])[0]["hostPort"]
    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got


def test_threads_asking_for_ephemeral_ports_at_once_get_different_ones(tmp_path):
    got = private_netns.run(_concurrent_threads, str(tmp_path))
    low, high = ports.ephemeral_range()
    assert len(got) == 8 and len(set(got.values())) == 8 and all(low <= p <= high for p in got.values())


# -- checking Docker's portmap -----------------------------------------------------

@pytest.mark.parametrize("raw,fragment", [
    ([entry(8000, port=0)], "portmap[0].Port must be a container port"),
    ([entry(8003, 8000)], "HostPortEnd 8000 is below HostPort 8003"),
    ([entry(8000, proto=1)], "portmap[0].Proto 1 is not one of 6 (tcp), 17 (udp), 132 (sctp)"),
    ([entry(8000, host_ip="::1%lo")], "HostIP '::1%lo' has an IPv6 scope ID ('%...'), which is not accepted"),
    ([entry(8000, host_ip="localhost")], "HostIP 'localhost' is not an IP address such as 10.22.0.5 or fd00:22::5 (or empty"),
    ([entry(70000)], "HostPort 70000 must be an integer from 0 to 65535"),
])
def test_bad_portmaps_are_refused_with_what_is_valid(raw, fragment):
    with pytest.raises(DriverError) as caught:
        ports.requests(raw)
    assert fragment in str(caught.value)


def test_wildcards_are_every_address():
    assert [r.host_ip for r in ports.requests([entry(1, host_ip=ip) for ip in ("", "0.0.0.0", "::")])] == [""] * 3
    assert ports.requests([entry(1, host_ip="::ffff:0:1")])[0].host_ip == "::ffff:0:1"


def test_the_ephemeral_range_is_the_kernels(tmp_path):
    path = tmp_path / "range"
    path.write_text("40000\t40010\n")
    assert ports.ephemeral_range(str(path)) == (40000, 40010)
    path.write_text("garbage")
    assert ports.ephemeral_range(str(path)) == ports.DEFAULT_EPHEMERAL


@in_netns
def test_ports_published_before_allocations_were_recorded_are_held_after_an_upgrade(root):
    """An endpoint record of the previous version: its DNAT rules exist, no allocation row."""
    from cnm_shim.state import ENDPOINT, State
    shim = Shim(root)
    key = State.endpoint_key(NET, EP1)
    old = [{"hostPort": 8000 + i, "containerPort": 80 + i, "protocol": "tcp"} for i in range(2)]
    shim.services.state.put(ENDPOINT, key, dict(shim.services.state.get(ENDPOINT, key), port_mappings=old))
    with sqlite3.connect(shim.services.state.path) as db:
        db.execute("DELETE FROM host_ports")
    upgraded = Shim(root)
    assert upgraded.publish(EP2, entry(8001))[1]["Err"] == "Bind for 0.0.0.0:8001 failed: port is already allocated"
    assert upgraded.publish(EP2, entry(8000, 8002)) == (200, {})
    assert upgraded.cni.added == [[{"hostPort": 8002, "containerPort": 80, "protocol": "tcp"}]]


@in_netns
def test_a_refused_publish_keeps_the_ports_the_endpoint_had(root):
    """Docker's second ProgramExternalConnectivity with other ports, refused:
    the endpoint's published ports stay published and held."""
    shim = Shim(root)
    assert shim.publish(EP1, entry(8000)) == (200, {})
    assert shim.publish(EP2, entry(8001)) == (200, {})
    assert shim.publish(EP1, entry(8001))[1]["Err"] == "Bind for 0.0.0.0:8001 failed: port is already allocated"
    assert shim.cni.deleted == [], "the old rules were not removed for a refused call"
    assert [(row[2], row[4][-64:]) for row in shim.services.translator.ports.held()] == [(8000, EP1), (8001, EP2)]
    assert shim.publish(EP1, entry(8000, 8001)) == (200, {}), "its own port is free to it"
