"""Capturing frames on an interface inside a namespace, with the standard
library (an AF_PACKET socket), and reading the few fields the tests need."""

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
    print(frame[:64].hex(), flush=True)
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
