"""The host's own address while a flat network takes over its uplink (and
gives it back): at every moment some link holds it, and a run killed half-way
is completed by the next one, the routes that depend on the address included.

Watched from the kernel's side: the address events netlink multicasts, in the
order the kernel made the changes, and the addresses and routes read back
after a kill -9 at several points."""

import ipaddress
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from cni_backend import flatnet
from cni_backend.plugins.flat import load_network
from tests.conftest import run
from tests.netns.test_flat import HOST_IP, ROUTER, flat_config, rig, uplink_state  # noqa: F401 - rig is a fixture

pytestmark = pytest.mark.netns

SENTINEL = "198.18.255.77"  # an address the test adds and removes last: every event before it was read
EXTRA_ROUTE = "203.0.113.0/24"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


RTM_NEWADDR, RTM_DELADDR, IFA_LOCAL, RTMGRP_IPV4_IFADDR = 20, 21, 2, 0x10


def address_events(sock) -> list:
    """(event, ifindex, IPv4 address) of the RTM_NEWADDR/DELADDR messages in one read."""
    data, events = sock.recv(1 << 16), []
    while len(data) >= 16:
        length, kind = struct.unpack_from("=IH", data)
        if kind in (RTM_NEWADDR, RTM_DELADDR):
            index = struct.unpack_from("=I", data, 20)[0]
            offset = 24
            while offset + 4 <= length:
                attr_len, attr_type = struct.unpack_from("=HH", data, offset)
                if attr_type == IFA_LOCAL:
                    events.append((kind, index, str(ipaddress.IPv4Address(data[offset + 4:offset + 8]))))
                offset += (attr_len + 3) & ~3
        data = data[(length + 3) & ~3:]
    return events


def holders_over_time(action, bridge: str, uplink: str) -> list:
    """Run `action`; the links holding HOST_IP after each address event it
    caused (the kernel multicasts them in the order it made the changes),
    starting with the links holding it before."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as monitor:
        monitor.bind((0, RTMGRP_IPV4_IFADDR))  # subscribed once bind returns
        start = frozenset(name for name in (bridge, uplink) if name_has(name, HOST_IP))
        names = {index: name for name in (bridge, uplink) if (index := ifindex(name)) is not None}
        action()
        names.update({index: name for name in (bridge, uplink) if (index := ifindex(name)) is not None})
        run("ip", "addr", "add", f"{SENTINEL}/32", "dev", "lo")
        run("ip", "addr", "del", f"{SENTINEL}/32", "dev", "lo")
        held, history, done = set(start), [start], False
        while not done:
            assert select.select([monitor], [], [], 10)[0], "the kernel's address events stopped"
            for kind, index, address in address_events(monitor):
                if address == SENTINEL and kind == RTM_DELADDR:
                    done = True
                if address == HOST_IP:
                    (held.add if kind == RTM_NEWADDR else held.discard)(names.get(index, str(index)))
                    history.append(frozenset(held))
    return history


def ifindex(name: str):
    found = run("ip", "-j", "link", "show", name, check=False)
    return json.loads(found.stdout)[0]["ifindex"] if found.returncode == 0 else None


def name_has(name: str, address: str) -> bool:
    found = run("ip", "-j", "addr", "show", "dev", name, check=False)
    return found.returncode == 0 and any(a.get("local") == address for a in json.loads(found.stdout)[0]["addr_info"])


def routes_on(name: str) -> set:
    return {(r["dst"], r.get("gateway")) for r in json.loads(run("ip", "-j", "route", "show", "dev", name).stdout)
            if r.get("protocol") != "kernel"}


def add_dependent_route(uplink: str) -> None:
    """A second route through the uplink, with the host address as its source."""
    run("ip", "route", "add", EXTRA_ROUTE, "via", ROUTER, "dev", uplink, "src", HOST_IP)


def test_the_host_address_is_never_on_no_link_while_it_moves(cni_daemon_env, rig):  # noqa: F811
    add_dependent_route(rig["uplink"])
    before = uplink_state(rig["uplink"])
    config = flat_config(cni_daemon_env, rig)
    flat = load_network(config)
    moved = holders_over_time(lambda: flatnet.ensure(flat), flat.bridge, rig["uplink"])
    assert moved[0] == {rig["uplink"]} and moved[-1] == {flat.bridge}, moved
    assert all(moved), f"a moment without the host's address: {moved}"
    assert routes_on(flat.bridge) >= {("198.51.100.0/24", ROUTER), (EXTRA_ROUTE, ROUTER)}

    back = holders_over_time(lambda: flatnet.remove(flat), flat.bridge, rig["uplink"])
    assert back[0] == {flat.bridge} and back[-1] == {rig["uplink"]}, back
    assert all(back), f"a moment without the host's address: {back}"
    assert uplink_state(rig["uplink"]) == before


_ENSURE = """
import json, sys
from cni_backend import flatnet
from cni_backend.plugins.flat import load_network
flat = load_network(json.loads(sys.argv[1]))
print("ready", flush=True)
flatnet.ensure(flat)
print("done", flush=True)
"""


@pytest.mark.parametrize("delay", [0.0, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3])
def test_a_move_killed_at_any_point_keeps_the_address_and_a_rerun_completes_it(cni_daemon_env, rig,  # noqa: F811
                                                                                delay):
    add_dependent_route(rig["uplink"])
    before = uplink_state(rig["uplink"])
    config = flat_config(cni_daemon_env, rig)
    flat = load_network(config)
    process = subprocess.Popen([sys.executable, "-c", _ENSURE, json.dumps(config)], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stdout.close()
    assert name_has(rig["uplink"], HOST_IP) or name_has(flat.bridge, HOST_IP), "the host lost its address"

    flatnet.ensure(flat)  # the rerun (the next ADD) completes the move
    assert uplink_state(rig["uplink"])["master"] == flat.bridge
    assert not name_has(rig["uplink"], HOST_IP) and name_has(flat.bridge, HOST_IP)
    assert routes_on(flat.bridge) >= {("198.51.100.0/24", ROUTER), (EXTRA_ROUTE, ROUTER)}
    assert routes_on(rig["uplink"]) == set()

    flatnet.remove(flat)
    assert uplink_state(rig["uplink"]) == before
