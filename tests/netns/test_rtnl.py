"""cni_backend.net.rtnl against pyroute2: each request, in a scratch namespace
the test makes, gives what pyroute2's IPRoute reads there (or does what
`ip` would), and kernel errors come back as pyroute2's NetlinkError."""

import errno
import os
import socket

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cni_backend.net import netns
from cni_backend.net.rtnl import IFF_UP, Rtnl
from tests.conftest import ns_exec

pytestmark = pytest.mark.netns

KEYS = ("index", "flags", "ifname", "address", "mtu", "master", ("linkinfo", "kind"))
PEER_MAC = "02:42:0a:7b:00:02"


def path(name: str) -> str:
    return f"/var/run/netns/{name}"


def view(msg) -> dict:
    """What the code base reads from a link message, ours or pyroute2's."""
    return {key: msg.get(key) for key in KEYS}


def names(ipr) -> set:
    return {msg.get("ifname") for msg in ipr.link("dump")}


@pytest.fixture
def scratch(make_netns):
    """(namespace, our client, pyroute2's) in a namespace of the test's own."""
    name = make_netns()
    with netns.entered(path(name)):
        rtnl, ipr = Rtnl(), IPRoute()
    yield name, rtnl, ipr
    rtnl.close()
    ipr.close()


def test_get_link_reads_what_pyroute2_reads(scratch):
    name, rtnl, ipr = scratch
    ns_exec(name, "ip", "link", "add", "rcnitbr0", "type", "bridge")
    ns_exec(name, "ip", "link", "add", "rcnitv0", "mtu", "1400", "type", "veth", "peer", "name", "rcnitv0p")
    ns_exec(name, "ip", "link", "set", "rcnitv0", "master", "rcnitbr0")
    for ifname in ("rcnitbr0", "rcnitv0", "lo"):
        theirs = view(ipr.link("get", ifname=ifname)[0])
        assert view(rtnl.get_link(ifname)) == theirs
        assert view(rtnl.get_link(index=theirs["index"])) == theirs
    port = rtnl.get_link("rcnitv0")
    assert port.get("master") == rtnl.get_link("rcnitbr0")["index"] and port.get("mtu") == 1400
    assert port.get(("linkinfo", "kind")) == "veth" and rtnl.get_link("lo").get(("linkinfo", "kind")) is None


def test_a_missing_link_is_enodev(scratch):
    _, rtnl, _ = scratch
    with pytest.raises(NetlinkError) as by_name:
        rtnl.get_link("rcnitnone0")
    with pytest.raises(NetlinkError) as by_index:
        rtnl.get_link(index=424242)
    assert by_name.value.code == by_index.value.code == errno.ENODEV
    assert rtnl.get_link("lo")["index"] == 1  # the socket still answers after an error


def test_add_veth_with_mtu_and_the_peers_mac(scratch):
    name, rtnl, ipr = scratch
    rtnl.add_veth("rcnitv0", "rcnitv0p", mtu=1400, peer_mac=PEER_MAC)
    host, peer = ipr.link("get", ifname="rcnitv0")[0], ipr.link("get", ifname="rcnitv0p")[0]
    assert host.get("mtu") == 1400 and host.get("address") != PEER_MAC
    assert peer.get("address") == PEER_MAC and peer.get("mtu") == 1400
    assert not (host["flags"] | peer["flags"]) & IFF_UP and host.get("master") is peer.get("master") is None
    assert host.get(("linkinfo", "kind")) == peer.get(("linkinfo", "kind")) == "veth"


def test_add_veth_puts_the_peer_in_another_namespace(scratch, make_netns):
    name, rtnl, ipr = scratch
    other = make_netns()
    fd = os.open(path(other), os.O_RDONLY | os.O_CLOEXEC)
    try:
        rtnl.add_veth("rcnitv0", "eth0", peer_netns_fd=fd, peer_mac=PEER_MAC)
    finally:
        os.close(fd)
    assert "rcnitv0" in names(ipr) and "eth0" not in names(ipr)
    with netns.entered(path(other)), Rtnl() as there:
        assert there.get_link("eth0").get("address") == PEER_MAC


@pytest.mark.parametrize("taken", ["rcnitv0", "rcnitv0p"])
def test_add_veth_on_a_taken_name_is_eexist_and_makes_nothing(scratch, taken):
    name, rtnl, ipr = scratch
    ns_exec(name, "ip", "link", "add", taken, "type", "bridge")
    before = names(ipr)
    with pytest.raises(NetlinkError) as raised:
        rtnl.add_veth("rcnitv0", "rcnitv0p")
    assert raised.value.code == errno.EEXIST
    assert names(ipr) == before


def test_set_link_master_and_up(scratch):
    name, rtnl, ipr = scratch
    ns_exec(name, "ip", "link", "add", "rcnitbr0", "type", "bridge")
    ns_exec(name, "ip", "link", "add", "rcnitv0", "type", "veth", "peer", "name", "rcnitv0p")
    bridge, port = ipr.link_lookup(ifname="rcnitbr0")[0], ipr.link_lookup(ifname="rcnitv0")[0]
    rtnl.set_link(port, master=bridge, up=True)
    found = ipr.link("get", index=port)[0]
    assert found.get("master") == bridge and found["flags"] & IFF_UP
    rtnl.set_link(port, up=False)  # the master stays
    found = ipr.link("get", index=port)[0]
    assert found.get("master") == bridge and not found["flags"] & IFF_UP
    rtnl.set_link(port, master=0)
    assert ipr.link("get", index=port)[0].get("master") is None


def test_delete_link_takes_the_veth_peer_and_a_missing_one_is_enodev(scratch):
    name, rtnl, ipr = scratch
    ns_exec(name, "ip", "link", "add", "rcnitv0", "type", "veth", "peer", "name", "rcnitv0p")
    rtnl.delete_link("rcnitv0")
    assert not {"rcnitv0", "rcnitv0p"} & names(ipr)
    with pytest.raises(NetlinkError) as raised:
        rtnl.delete_link("rcnitv0")
    assert raised.value.code == errno.ENODEV


def test_set_link_on_a_missing_index_is_enodev(scratch):
    _, rtnl, _ = scratch
    with pytest.raises(NetlinkError) as raised:
        rtnl.set_link(424242, up=True)
    assert raised.value.code == errno.ENODEV


def test_addresses_of_one_link_only(scratch):
    name, rtnl, ipr = scratch
    for link in ("rcnitv0", "rcnitv1"):
        ns_exec(name, "ip", "link", "add", link, "type", "veth", "peer", "name", f"{link}p")
    mine = {socket.AF_INET: [("10.9.0.2", 24), ("10.9.1.2", 16), ("10.9.2.1", 32)],
            socket.AF_INET6: [("fd00:9::2", 64), ("fd00:9:1::2", 48)]}
    for address, prefixlen in mine[socket.AF_INET6]:
        ns_exec(name, "ip", "addr", "add", f"{address}/{prefixlen}", "dev", "rcnitv0", "nodad")
    ns_exec(name, "ip", "addr", "add", "10.9.0.2/24", "dev", "rcnitv0")
    ns_exec(name, "ip", "addr", "add", "10.9.1.2/16", "dev", "rcnitv0")
    # point to point: IFA_ADDRESS is the peer's, the link's own is IFA_LOCAL (as `ip addr` shows)
    ns_exec(name, "ip", "addr", "add", "10.9.2.1", "peer", "10.9.2.9/32", "dev", "rcnitv0")
    for address in ("10.8.0.2/24", "10.9.0.3/24"):
        ns_exec(name, "ip", "addr", "add", address, "dev", "rcnitv1")
    ns_exec(name, "ip", "addr", "add", "fd00:8::2/64", "dev", "rcnitv1", "nodad")
    ns_exec(name, "ip", "addr", "add", "127.0.0.2/8", "dev", "lo")
    index = ipr.link_lookup(ifname="rcnitv0")[0]
    for family, expected in mine.items():
        theirs = [(msg.get("local") or msg.get("address"), msg["prefixlen"])
                  for msg in ipr.get_addr(index=index, family=family)]
        assert sorted(rtnl.addresses(index, family)) == sorted(theirs) == sorted(expected)
    assert rtnl.addresses(ipr.link_lookup(ifname="rcnitv1p")[0], socket.AF_INET) == []


def test_the_sockets_netlink_hands_out_read_a_vteps_vni(make_netns):
    """netlink.Socket answers link lookups from rtnl, which reads a VXLAN
    link's VNI as pyroute2 does (link(full=True)), so a VTEP of another VNI
    is still refused, not taken."""
    from cni_backend.errors import CNIError
    from cni_backend.net import netlink
    name = make_netns()
    ns_exec(name, "ip", "link", "add", "rcnitvx0", "type", "vxlan", "id", "7", "dstport", "4789")
    with netlink.socket_in(path(name)) as sock:
        assert netlink.kind(netlink.link(sock, "rcnitvx0")) == "vxlan"
        assert sock.rtnl.get_link("rcnitvx0").get(("linkinfo", "vxlan_id")) == 7
        assert netlink.link(sock, "rcnitvx0", full=True).get(("linkinfo", "data")).get("vxlan_id") == 7
        with pytest.raises(CNIError, match="exists with VNI 7, not 8"):
            netlink.ensure_vxlan(sock, "rcnitvx0", 8, "10.0.0.1", 4789, netlink.link(sock, "lo")["index"], 1450)
        assert netlink.ensure_vxlan(sock, "rcnitvx0", 7, "10.0.0.1", 4789, 1, 1450)["name"] == "rcnitvx0"


def test_a_neighbour_is_made_replaced_and_removed_as_pyroute2_reads_it(scratch):
    from cni_backend.net.netlink import NUD_PERMANENT
    name, rtnl, ipr = scratch
    ns_exec(name, "ip", "link", "add", "rcnitbr0", "type", "bridge")
    index = rtnl.get_link("rcnitbr0")["index"]

    def entries():
        return {(m.get("NDA_DST"), m.get("NDA_LLADDR"), m["state"]) for m in ipr.get_neighbours(ifindex=index)}
    rtnl.set_neighbour(index, "10.123.0.7", PEER_MAC, NUD_PERMANENT)
    rtnl.set_neighbour(index, "fd00:123::7", PEER_MAC, NUD_PERMANENT)
    rtnl.set_neighbour(index, "10.123.0.7", "02:42:0a:7b:00:03", NUD_PERMANENT)  # replaced, not refused
    assert entries() == {("10.123.0.7", "02:42:0a:7b:00:03", NUD_PERMANENT), ("fd00:123::7", PEER_MAC, NUD_PERMANENT)}
    rtnl.set_neighbour(index, "10.123.0.7", None, 0)
    rtnl.set_neighbour(index, "fd00:123::7", None, 0)
    assert entries() == set()
    with pytest.raises(NetlinkError) as err:
        rtnl.set_neighbour(index, "10.123.0.7", None, 0)
    assert err.value.code == errno.ENOENT


def test_a_bridge_fdb_entry_is_pinned_to_its_port_as_bridge_fdb_static_does(scratch):
    from cni_backend.net.netlink import NTF_MASTER, NUD_NOARP
    name, rtnl, ipr = scratch
    ns_exec(name, "ip", "link", "add", "rcnitbr0", "type", "bridge")
    ns_exec(name, "ip", "link", "add", "rcnitv0", "type", "veth", "peer", "name", "rcnitv0p")
    ns_exec(name, "ip", "link", "add", "rcnitv1", "type", "veth", "peer", "name", "rcnitv1p")
    for port in ("rcnitv0", "rcnitv1"):
        ns_exec(name, "ip", "link", "set", port, "master", "rcnitbr0")
    rtnl.replace_bridge_fdb(rtnl.get_link("rcnitv0")["index"], PEER_MAC, NUD_NOARP, NTF_MASTER)
    rtnl.replace_bridge_fdb(rtnl.get_link("rcnitv1")["index"], PEER_MAC, NUD_NOARP, NTF_MASTER)  # it moved
    shown = [line for line in ns_exec(name, "bridge", "fdb", "show", "br", "rcnitbr0").stdout.splitlines()
             if line.startswith(PEER_MAC)]
    assert shown == [f"{PEER_MAC} dev rcnitv1 master rcnitbr0 static"], shown


def test_a_vteps_fdb_is_its_own_entries_only_as_bridge_fdb_shows_them(scratch):
    """The dump the kernel filters by link: the VTEP's own entries (flood and
    unicast, one per remote; IPv4 or IPv6 remotes), none of another VTEP's, none of
    the bridge's for the VTEP's port, however many other ports there are."""
    name, rtnl, _ = scratch
    ns_exec(name, "ip", "link", "add", "rcnitbr0", "type", "bridge")
    for vtep, vni, local in (("rcnitvx0", "7", "10.99.0.1"), ("rcnitvx1", "8", "10.99.0.1"), ("rcnitvx6", "9", "fd00:99::1")):
        ns_exec(name, "ip", "link", "add", vtep, "type", "vxlan", "id", vni, "local", local, "dstport", "0", "nolearning")
        ns_exec(name, "ip", "link", "set", vtep, "master", "rcnitbr0")
    for n in range(3):
        ns_exec(name, "ip", "link", "add", f"rcnitv{n}", "type", "veth", "peer", "name", f"rcnitv{n}p")
        ns_exec(name, "ip", "link", "set", f"rcnitv{n}", "master", "rcnitbr0")
    for vtep, mac, dst in (("rcnitvx0", "00:00:00:00:00:00", "10.99.0.2"), ("rcnitvx0", "00:00:00:00:00:00", "10.99.0.3"),
                           ("rcnitvx0", PEER_MAC, "10.99.0.2"), ("rcnitvx6", "02:42:0a:7b:00:09", "fd00:99::2"),
                           ("rcnitvx1", "00:00:00:00:00:00", "10.99.0.4")):
        ns_exec(name, "bridge", "fdb", "append", mac, "dev", vtep, "dst", dst, "self", "permanent")
    ns_exec(name, "bridge", "fdb", "add", "02:42:0a:7b:00:0a", "dev", "rcnitvx0", "master", "static")  # the bridge's
    index = rtnl.get_link("rcnitvx0")["index"]
    assert sorted(rtnl.vtep_fdb(index)) == sorted([
        ("00:00:00:00:00:00", "10.99.0.2"), ("00:00:00:00:00:00", "10.99.0.3"),
        (PEER_MAC, "10.99.0.2")])
    assert rtnl.vtep_fdb(rtnl.get_link("rcnitvx1")["index"]) == [("00:00:00:00:00:00", "10.99.0.4")]
    assert rtnl.vtep_fdb(rtnl.get_link("rcnitvx6")["index"]) == [("02:42:0a:7b:00:09", "fd00:99::2")]
    assert rtnl.vtep_fdb(rtnl.get_link("rcnitv0")["index"]) == []  # a port without remotes
