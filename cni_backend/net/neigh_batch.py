"""Many neighbour and FDB changes of one VTEP in a few netlink writes.

The VXLAN agent changes one entry per remote endpoint (an FDB entry and a
neighbour entry) and one flood entry per remote host. Through pyroute2 each
change is a request of its own with its own event-loop round (about 0.7 ms of
CPU each): 200 hosts of 5 endpoints are 2,200 requests per host at start.
Here the requests are encoded by hand (they are three fixed shapes: ndmsg
plus NDA_DST and NDA_LLADDR), sent many to a sendmsg on a plain
NETLINK_ROUTE socket opened in the calling thread's namespace, and every one
is acknowledged (NLM_F_ACK); an error is matched to its request by sequence
number and reported as `netlink.set_*` would, with the same tolerance for
"already there" / "already gone".

`Batch` collects; `apply()` sends. Every address and MAC is parsed again on
the way in (ValueError), though the agent hands in only entries that passed
`vxlan_registry.parse_entry`."""

import errno
import ipaddress
import os
import socket
import struct

from ..errors import CNIError, NETLINK_FAILURE

RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_REPLACE, NLM_F_CREATE, NLM_F_APPEND = 0x100, 0x400, 0x800
NDA_DST, NDA_LLADDR = 1, 2
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
AF_BRIDGE = 7
PER_WRITE = 200        # requests per sendmsg: their acks (36 bytes each) fit any receive buffer
_ZERO_MAC = "00:00:00:00:00:00"


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((-length) % 4)


def _mac(text: str) -> bytes:
    octets = bytes(int(part, 16) for part in text.split(":"))
    if len(octets) != 6:
        raise ValueError(f"MAC {text!r} is not six octets")
    return octets


class Batch:
    def __init__(self, index: int):
        self.index = int(index)
        self.requests = []   # (message type, flags, ndmsg + attributes, errnos tolerated, what)

    def _add(self, kind, flags, family, state, ntf, attrs, tolerated, what) -> None:
        body = struct.pack("=BBHiHBB", family, 0, 0, self.index, state, ntf, 0) + b"".join(attrs)
        self.requests.append((kind, flags, body, tolerated, what))

    def flood_peer(self, peer: str, present: bool) -> None:
        """`netlink.set_flood_peer`: the all-zero MAC towards `peer`."""
        dst = ipaddress.IPv4Address(peer).packed
        attrs = (_attr(NDA_LLADDR, _mac(_ZERO_MAC)), _attr(NDA_DST, dst))
        if present:
            self._add(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_APPEND, AF_BRIDGE, NUD_PERMANENT, NTF_SELF, attrs,
                      (errno.EEXIST,), f"adding VXLAN peer {peer}")
        else:
            self._add(RTM_DELNEIGH, 0, AF_BRIDGE, NUD_PERMANENT, NTF_SELF, attrs,
                      (errno.ENOENT,), f"removing VXLAN peer {peer}")

    def fdb(self, mac: str, dst: str | None) -> None:
        """`netlink.set_fdb`: `mac` behind the remote VTEP `dst`; None removes it."""
        if dst:
            attrs = (_attr(NDA_LLADDR, _mac(mac)), _attr(NDA_DST, ipaddress.IPv4Address(dst).packed))
            self._add(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, AF_BRIDGE, NUD_PERMANENT, NTF_SELF, attrs,
                      (), f"setting FDB entry {mac}")
        else:
            self._add(RTM_DELNEIGH, 0, AF_BRIDGE, 0, NTF_SELF, (_attr(NDA_LLADDR, _mac(mac)),),
                      (errno.ENOENT, errno.ESRCH), f"removing FDB entry {mac}")

    def neighbour(self, ip: str, mac: str | None) -> None:
        """`netlink.set_neighbour`: a permanent entry ip -> mac; None removes it."""
        address = ipaddress.ip_address(ip)
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        dst = _attr(NDA_DST, address.packed)
        if mac:
            self._add(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, family, NUD_PERMANENT, 0,
                      (dst, _attr(NDA_LLADDR, _mac(mac))), (), f"setting neighbour {ip}")
        else:
            self._add(RTM_DELNEIGH, 0, family, 0, 0, (dst,),
                      (errno.ENOENT, errno.ESRCH, errno.ENODEV), f"removing neighbour {ip}")

    def __len__(self) -> int:
        return len(self.requests)

    def apply(self) -> int:
        """Every request sent, in order, and acknowledged; the number sent.
        CNIError (the first failure, with the number of others) when any
        failed in a way its kind does not tolerate; the rest still went in."""
        if not self.requests:
            return 0
        failures = []
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            sock.bind((0, 0))
            for start in range(0, len(self.requests), PER_WRITE):
                chunk = self.requests[start:start + PER_WRITE]
                data = b"".join(struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags,
                                            start + seq + 1, 0) + body
                                for seq, (kind, flags, body, _, _) in enumerate(chunk))
                if sock.send(data) != len(data):   # a netlink write is taken whole or refused
                    raise OSError(errno.EMSGSIZE, "netlink write cut short")
                waiting = set(range(start + 1, start + len(chunk) + 1))
                while waiting:
                    reply = sock.recv(1 << 16)
                    offset = 0
                    while offset + 16 <= len(reply):
                        length, kind, _, seq, _ = struct.unpack_from("=IHHII", reply, offset)
                        if length < 16:
                            break
                        if kind == NLMSG_ERROR and seq in waiting:
                            waiting.discard(seq)
                            code = -struct.unpack_from("=i", reply, offset + 16)[0]
                            _, _, _, tolerated, what = self.requests[seq - 1]
                            if code and code not in tolerated:
                                failures.append((what, code))
                        offset += (length + 3) & ~3
        finally:
            sock.close()
        if failures:
            what, code = failures[0]
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise CNIError(NETLINK_FAILURE, f"{what}: {os.strerror(code)}{more}", f"errno {code}")
        return len(self.requests)
