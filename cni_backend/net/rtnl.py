"""A raw rtnetlink client for the few requests on a CNI ADD's hot path.

pyroute2 spends ~0.3-0.9 ms of Python (its asyncio machinery) on each request
and ~0.3 ms building an IPRoute, where the kernel answers in ~0.05-0.2 ms. This
module speaks netlink itself for exactly these requests: a link by name or
index, a veth pair, a link's master and up state, a link's deletion, a
link's addresses, a neighbour entry, a bridge FDB entry, a VTEP's FDB.
Everything else stays with pyroute2 (netlink.py). Errors are pyroute2's
NetlinkError, so callers catch one class whichever client asked.
"""

import os
import socket
import struct

from pyroute2.netlink.exceptions import NetlinkError

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_GET_STRICT_CHK = 12  # lets the kernel filter an address dump by ifindex (Linux 4.20+)

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x100, 0x200, 0x400, 0x300
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_GETADDR = 16, 17, 18, 22
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
IFLA_LINKINFO, IFLA_NET_NS_FD, IFLA_EXT_MASK = 18, 28, 29
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFLA_VXLAN_ID = 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
NDA_DST, NDA_LLADDR = 1, 2
RTEXT_FILTER_SKIP_STATS = 1 << 3  # a link's counters are most of its message, and unused here
IFF_UP = 0x1

NLMSGHDR = struct.Struct("=IHHII")    # length, type, flags, seq, port id
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")   # family, prefixlen, flags, scope, index
NDMSG = struct.Struct("=BxxxiHBB")     # family, index, state, flags, type
NLATTR = struct.Struct("=HH")         # length, type
U32 = struct.Struct("=I")
ERRNO = struct.Struct("=i")
NLA_TYPE_MASK = 0x3FFF                # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
RECV_SIZE = 65536                     # a dump's batches are at most 32 KiB


def _attr(kind: int, payload: bytes) -> bytes:
    length = NLATTR.size + len(payload)
    return NLATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, U32.pack(value))


def _name(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode() + b"\0")


def _mac(value: str) -> bytes:  # IFLA_ADDRESS
    return _attr(IFLA_ADDRESS, bytes.fromhex(value.replace(":", "")))


def _attrs(data: memoryview, offset: int) -> dict:
    """The attributes from `offset` on, by type (their payloads)."""
    found = {}
    while offset + NLATTR.size <= len(data):
        length, kind = NLATTR.unpack_from(data, offset)
        if length < NLATTR.size:
            break
        found[kind & NLA_TYPE_MASK] = data[offset + NLATTR.size:offset + length]
        offset += (length + 3) & ~3
    return found


def _text(payload: memoryview) -> str:
    return bytes(payload).split(b"\0", 1)[0].decode()


def _link_request(index: int = 0, up: bool | None = None) -> bytes:
    flags = IFF_UP if up else 0
    change = IFF_UP if up is not None else 0
    return IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)


class Link:
    """A link, read like pyroute2's ifinfmsg for the keys the code base uses:
    msg["index"], msg["flags"], msg.get("ifname" / "address" / "mtu" /
    "master" / ("linkinfo", "kind")), and a VXLAN link's VNI as
    msg.get(("linkinfo", "vxlan_id"))."""

    __slots__ = ("_fields",)

    def __init__(self, payload: memoryview):
        _, _, index, flags, _ = IFINFOMSG.unpack_from(payload)
        attrs = _attrs(payload, IFINFOMSG.size)
        fields = {"index": index, "flags": flags}
        if IFLA_IFNAME in attrs:
            fields["ifname"] = _text(attrs[IFLA_IFNAME])
        if IFLA_ADDRESS in attrs:
            fields["address"] = ":".join(f"{byte:02x}" for byte in attrs[IFLA_ADDRESS])
        for key, kind in (("mtu", IFLA_MTU), ("master", IFLA_MASTER)):
            if kind in attrs:
                fields[key] = U32.unpack(attrs[kind])[0]
        info = _attrs(attrs[IFLA_LINKINFO], 0) if IFLA_LINKINFO in attrs else {}
        if IFLA_INFO_KIND in info:
            fields[("linkinfo", "kind")] = _text(info[IFLA_INFO_KIND])
            if fields[("linkinfo", "kind")] == "vxlan" and IFLA_INFO_DATA in info:
                data = _attrs(info[IFLA_INFO_DATA], 0)
                if len(data.get(IFLA_VXLAN_ID, b"")) == U32.size:
                    fields[("linkinfo", "vxlan_id")] = U32.unpack(data[IFLA_VXLAN_ID])[0]
        self._fields = fields

    def __getitem__(self, key):
        return self._fields[key]

    def get(self, key, default=None):
        return self._fields.get(key, default)

    def __repr__(self) -> str:
        return f"Link({self._fields!r})"


class Rtnl:
    """A NETLINK_ROUTE socket in the network namespace current when it is
    made; it keeps working there from any namespace afterwards."""

    def __init__(self):
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            self._sock.bind((0, 0))
            try:
                self._sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
            except OSError:  # an older kernel: addresses() filters by itself anyway
                pass
        except BaseException:
            self._sock.close()
            raise
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _request(self, msg_type: int, flags: int, body: bytes) -> list:
        """Send one request; the payloads of the answers to it, up to its ACK
        (or, for a dump, its NLMSG_DONE). A kernel error raises NetlinkError.

        `flags` says NLM_F_ACK or NLM_F_DUMP (a dump is never ACKed): the
        caller's to say, as NLM_F_DUMP shares its bits with NLM_F_EXCL."""
        self._seq += 1
        seq = self._seq
        self._sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type, NLM_F_REQUEST | flags, seq, 0) + body)
        answers = []
        while True:
            data = memoryview(self._sock.recv(RECV_SIZE))
            offset = 0
            while offset + NLMSGHDR.size <= len(data):
                length, answer_type, _, answer_seq, _ = NLMSGHDR.unpack_from(data, offset)
                payload = data[offset + NLMSGHDR.size:offset + length]
                offset += (length + 3) & ~3
                if answer_seq != seq:  # the rest of an earlier request that raised
                    continue
                if answer_type in (NLMSG_ERROR, NLMSG_DONE):
                    error = -ERRNO.unpack_from(payload)[0] if len(payload) >= ERRNO.size else 0
                    if error:
                        raise NetlinkError(error, os.strerror(error))
                    return answers
                answers.append(payload)

    def get_link(self, name: str | None = None, index: int | None = None) -> Link:
        """The link named `name` or numbered `index`; NetlinkError(ENODEV) if none."""
        body = _link_request(index or 0) + _u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
        if name is not None:
            body += _name(IFLA_IFNAME, name)
        return Link(self._request(RTM_GETLINK, NLM_F_ACK, body)[0])

    def add_veth(self, name: str, peer_name: str, *, peer_netns_fd: int | None = None, mtu: int | None = None,
                 peer_mac: str | None = None) -> None:
        """A veth pair in one request, as `ip link add NAME ... type veth peer
        name PEER_NAME ...` sends it: the peer into the namespace of
        `peer_netns_fd` if given; `mtu` on both ends. An existing name raises
        NetlinkError(EEXIST), and nothing is made."""
        peer = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _name(IFLA_IFNAME, peer_name)
        if peer_netns_fd is not None:
            peer += _u32(IFLA_NET_NS_FD, peer_netns_fd)
        if mtu is not None:
            peer += _u32(IFLA_MTU, mtu)
        if peer_mac is not None:
            peer += _mac(peer_mac)
        body = _link_request() + _name(IFLA_IFNAME, name)
        if mtu is not None:
            body += _u32(IFLA_MTU, mtu)
        # not flagged NLA_F_NESTED, as iproute2 sends them
        info = _name(IFLA_INFO_KIND, "veth") + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer))
        body += _attr(IFLA_LINKINFO, info)
        self._request(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)

    def set_link(self, index: int, *, master: int | None = None, up: bool | None = None) -> None:
        """Link `index` into bridge `master` (0: out of its bridge) and/or up
        or down, in one request."""
        body = _link_request(index, up)
        if master is not None:
            body += _u32(IFLA_MASTER, master)
        self._request(RTM_NEWLINK, NLM_F_ACK, body)

    def delete_link(self, name: str) -> None:
        """Delete the link named `name` (a veth takes its peer with it);
        NetlinkError(ENODEV) if none."""
        self._request(RTM_DELLINK, NLM_F_ACK, _link_request() + _name(IFLA_IFNAME, name))

    def set_neighbour(self, index: int, ip: str, mac: str | None, state: int, flags: int = 0) -> None:
        """Make (replace) the neighbour entry `ip` -> `mac` on link `index`
        in `state`; with mac None, remove it (NetlinkError(ENOENT) if none)."""
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        body = NDMSG.pack(family, index, state if mac else 0, flags, 0) + _attr(NDA_DST, socket.inet_pton(family, ip))
        if mac is None:
            self._request(RTM_DELNEIGH, NLM_F_ACK, body)
            return
        body += _attr(NDA_LLADDR, bytes.fromhex(mac.replace(":", "")))
        self._request(RTM_NEWNEIGH, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, body)

    def replace_bridge_fdb(self, port_index: int, mac: str, state: int, flags: int) -> None:
        """Make (replace) the bridge FDB entry `mac` behind port `port_index`,
        as `bridge fdb replace MAC dev PORT master static` sends it."""
        body = NDMSG.pack(socket.AF_BRIDGE, port_index, state, flags, 0)
        body += _attr(NDA_LLADDR, bytes.fromhex(mac.replace(":", "")))
        self._request(RTM_NEWNEIGH, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, body)

    def addresses(self, index: int, family: int) -> list:
        """(address, prefix length) of link `index` in `family` (AF_INET or
        AF_INET6): the local address, as `ip addr` shows it."""
        found = []
        for payload in self._request(RTM_GETADDR, NLM_F_DUMP, IFADDRMSG.pack(family, 0, 0, 0, index)):
            answer_family, prefixlen, _, _, answer_index = IFADDRMSG.unpack_from(payload)
            if answer_index != index or answer_family != family:  # a kernel without strict checking sends all
                continue
            attrs = _attrs(payload, IFADDRMSG.size)
            # IPv4: IFA_ADDRESS is the peer's on a point-to-point link; IPv6 has only IFA_ADDRESS there
            address = attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS))
            if address is not None:
                found.append((socket.inet_ntop(family, bytes(address)), prefixlen))
        return found

    def vtep_fdb(self, index: int) -> list:
        """(MAC, remote address) of each of the VXLAN link `index`'s own FDB
        entries (`bridge fdb show dev VTEP self`): one per remote of an entry.
        The kernel dumps only that link's entries (Linux 4.20+, strict
        checking); an older one sends every link's, filtered out here. Either
        way the bridge's own entries for the port carry no remote and are left out."""
        found = []
        for payload in self._request(RTM_GETNEIGH, NLM_F_DUMP, NDMSG.pack(socket.AF_BRIDGE, index, 0, 0, 0)):
            if len(payload) < NDMSG.size or NDMSG.unpack_from(payload)[1] != index:
                continue
            attrs = _attrs(payload, NDMSG.size)
            mac, dst = attrs.get(NDA_LLADDR), attrs.get(NDA_DST)
            if mac is None or dst is None or len(mac) != 6 or len(dst) not in (4, 16):
                continue
            family = socket.AF_INET if len(dst) == 4 else socket.AF_INET6
            found.append((":".join(f"{byte:02x}" for byte in mac), socket.inet_ntop(family, bytes(dst))))
        return found
