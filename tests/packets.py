"""Capturing and sending frames on an interface inside a namespace, with the
standard library (an AF_PACKET socket), reading the few fields the tests
need, and building the few frames they send."""

import contextlib
import ipaddress
import subprocess
import sys

_CAPTURE = r"""
import socket, sys, time
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
sock.bind((sys.argv[1], 0))
sock.settimeout(0.2)
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        frame = sock.recv(65535)
    except socket.timeout:
        continue
    print(frame[:256].hex(), flush=True)
"""


@contextlib.contextmanager
def capture(netns: str, ifname: str, seconds: float = 4.0):
    """Yields a list that holds the captured frames (bytes) once the block ends."""
    process = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", _CAPTURE, ifname, str(seconds)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    frames = []
    try:
        yield frames
    finally:
        out, _ = process.communicate(timeout=seconds + 10)
        frames.extend(bytes.fromhex(line) for line in out.split())


def arp_requests_for(frames, target: str) -> list:
    """ARP requests (opcode 1) asking for `target`."""
    packed = ipaddress.ip_address(target).packed
    return [f for f in frames if f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x01" and f[38:42] == packed]


def ipv4_from(frames, source: str) -> list:
    packed = ipaddress.ip_address(source).packed
    return [f for f in frames if f[12:14] == b"\x08\x00" and f[26:30] == packed]


def carrying(frames, marker: bytes) -> list:
    """Frames whose first 256 bytes hold `marker` (a tag the sender put in the payload)."""
    return [f for f in frames if marker in f]


_SEND = r"""
import socket, sys
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind((sys.argv[1], 0))
for line in sys.stdin.read().split():
    sock.send(bytes.fromhex(line))
"""


def send(netns: str, ifname: str, frames) -> None:
    """Put each frame (bytes, from the Ethernet header on) on `ifname` as it is."""
    subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", _SEND, ifname],
                   input="\n".join(f.hex() for f in frames), text=True, check=True)


# -- building frames -------------------------------------------------------------

def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ethernet(dst: str, src: str, ethertype: int, payload: bytes, tags=()) -> bytes:
    """A frame; `tags` are (TPID, VLAN ID) pairs, outermost first."""
    header = _mac(dst) + _mac(src)
    for tpid, vid in tags:
        header += tpid.to_bytes(2, "big") + vid.to_bytes(2, "big")
    return header + ethertype.to_bytes(2, "big") + payload


def ipv4(src: str, dst: str, protocol: int, payload: bytes) -> bytes:
    header = bytearray(b"\x45\0" + (20 + len(payload)).to_bytes(2, "big") + b"\0\1\0\0\x40"
                       + bytes([protocol]) + b"\0\0" + ipaddress.IPv4Address(src).packed
                       + ipaddress.IPv4Address(dst).packed)
    header[10:12] = _checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + payload


def icmp(kind: int, code: int, body: bytes) -> bytes:
    message = bytes([kind, code]) + b"\0\0" + body
    return message[:2] + _checksum(message).to_bytes(2, "big") + message[4:]


def icmpv6(src: str, dst: str, kind: int, code: int, body: bytes) -> bytes:
    """An ICMPv6 message, its checksum over the pseudo-header of `src` and `dst`."""
    s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    message = bytes([kind, code]) + b"\0\0" + body
    pseudo = s + d + len(message).to_bytes(4, "big") + b"\0\0\0\x3a"
    return message[:2] + _checksum(pseudo + message).to_bytes(2, "big") + message[4:]


def ipv6(src: str, dst: str, next_header: int, payload: bytes) -> bytes:
    """An IPv6 packet, hop limit 255 (as neighbour discovery wants)."""
    return (b"\x60\0\0\0" + len(payload).to_bytes(2, "big") + bytes([next_header, 255])
            + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + payload)


def ipv6_icmp(src: str, dst: str, kind: int, code: int, body: bytes) -> bytes:
    """An IPv6 packet carrying one ICMPv6 message."""
    return ipv6(src, dst, 58, icmpv6(src, dst, kind, code, body))


def ipv6_fragment(next_header: int, offset_units: int, more: bool, ident: int, data: bytes) -> bytes:
    """A fragment header (RFC 8200 4.5) and the fragment's data; the offset in 8-byte units."""
    return (bytes([next_header, 0]) + ((offset_units << 3) | int(more)).to_bytes(2, "big")
            + ident.to_bytes(4, "big") + data)


def arp_reply(sender_mac: str, sender_ip: str, target_mac: str, target_ip: str) -> bytes:
    return (b"\0\x01\x08\0\x06\x04\0\x02" + _mac(sender_mac) + ipaddress.IPv4Address(sender_ip).packed
            + _mac(target_mac) + ipaddress.IPv4Address(target_ip).packed)
