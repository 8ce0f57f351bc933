"""Who may reach this host's charon: UDP 500 (IKE) and 4500 (NAT-T, which
also carries ESP in UDP) are accepted from the rancher-ipsec peers and dropped
from anyone else.

filter INPUT (at its head, so no broader ACCEPT of the host comes first)
    -s PEER/32 -p udp -m udp --dport 4500 -j ACCEPT    per peer: NAT-T, ESP in UDP
    -s PEER/32 -p udp -m udp --dport 500 -j ACCEPT     per peer: IKE
    -p udp -m udp --dport 4500 -j DROP                 everyone else
    -p udp -m udp --dport 500 -j DROP

One port a rule, not `-m multiport --dports 500,4500`: iptables-nft turns
`--dport` into native nftables payload matches, but multiport into an xt
compat match, and every ESP-in-UDP packet of the tunnel passes here (4500
first: it carries the data; IKE on 500 is a few packets an hour).

One set per host, since there is one charon per host: the peers are those of
every IPsec network of the host (ipsecnet keeps the union). Every rule carries
`tags.for_ipsec()`, so the leak guard and `iptables-save` show whose it is; the
set is replaced in one `iptables-restore --noflush` under the firewall's host
lock. Underlay addresses are IPv4 here, so only iptables (v4).
"""

import ipaddress
import re

from . import iptables, tags, tools

PORTS = (4500, 500)  # NAT-T (ESP in UDP: the data) first
_SOURCE = re.compile(r" -s (\S+?)(?:/32)? ")
_PORT = re.compile(r" --dports? (\S+) ")


def rules(peers) -> list:
    """iptables-restore lines (filter table), in the order they must stand."""
    peers = sorted({str(ipaddress.IPv4Address(p)) for p in peers}, key=ipaddress.IPv4Address)
    match = [f"-p udp -m udp --dport {port} -m comment --comment {tags.for_ipsec()}" for port in PORTS]
    return ([f"-A INPUT -s {peer}/32 {m} -j ACCEPT" for peer in peers for m in match]
            + [f"-A INPUT {m} -j DROP" for m in match])


def present() -> list:
    tag = str(tags.for_ipsec())
    return [line for line in tools.run(["iptables", "-w", "-S", "INPUT"]).splitlines()
            if line.startswith("-A INPUT ") and iptables.comment_of(line) == tag]


def _shape(lines: list) -> list:
    shape = []
    for line in lines:
        source, port = _SOURCE.search(line + " "), _PORT.search(line + " ")
        # the port too: the rules of an earlier version (multiport) are replaced
        shape.append((source.group(1) if source else None, port.group(1) if port else None,
                      line.rsplit(" -j ", 1)[-1]))
    return shape


def allowed_peers() -> set:
    return {source for source, _, target in _shape(present()) if source and target == "ACCEPT"}


def ensure(peers) -> bool:
    """The rules made to accept exactly `peers`; True when they changed."""
    wanted = rules(peers)
    with iptables.host_lock():
        current = present()
        if _shape(current) == _shape(wanted):
            return False
        script = ["*filter", *("-D" + line[2:] for line in current),
                  *(f"-I INPUT {n} {line[len('-A INPUT '):]}" for n, line in enumerate(wanted, 1)), "COMMIT"]
        tools.run(["iptables-restore", "-w", "--noflush"], "\n".join(script) + "\n")
    return True


def remove() -> None:
    """The rules gone (idempotent)."""
    with iptables.host_lock():
        current = present()
        if current:
            script = ["*filter", *("-D" + line[2:] for line in current), "COMMIT"]
            tools.run(["iptables-restore", "-w", "--noflush"], "\n".join(script) + "\n")
