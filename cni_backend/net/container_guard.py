"""What a container on a flat network may never send onto the business LAN,
whatever its MAC and source address: the nftables rules both of its paths out
carry (the bridge's anti-spoofing chain, `firewall.add_mac_filter`, and the
fast path's ingress chain, `flat_fastpath.add_attachment`). The rule text is
the same in nft's bridge and netdev families.

  tagged frames     802.1Q (0x8100), 802.1ad (0x88a8) and the old QinQ TPID
                    (0x9100). The other rules read the outer EtherType, so a
                    tagged frame skipped every IP and ARP check, and on a
                    trunk parent it reached another VLAN (VLAN hopping).
  redirects         ICMPv4 type 5 and ICMPv6 type 137: a container is no router.
  router adverts    ICMPv6 type 134: it would become the LAN's IPv6 gateway.
  neighbour adverts ICMPv6 type 136 whose target is not one of the container's
                    own addresses (its IPv6 addresses, and the link-local one
                    the kernel derives from its MAC): a foreign target would
                    take over another host's (or the router's) address.
  IPv6 sources      only the container's own IPv6 addresses, link-local ones
                    and :: (DAD); on an IPv4-only network that is link-local
                    and :: only.
  IPv6 fragments    whose fragment header names anything but TCP, UDP, SCTP
                    or ESP as what follows: ICMPv6 in fragments, or a header
                    chain split over fragments, hides the ICMPv6 type from
                    the rules above (the RA-guard evasion of RFC 7113; ND
                    may not be fragmented, RFC 6980).

nftables 1.0.6 has no name for the advert's target field: it is read as raw
payload, 128 bits at bit 64 of the ICMPv6 header (type, code, checksum and
the flags word come first; RFC 4861 4.4).
"""

import ipaddress

TAG_PROTOCOLS = "{ 0x8100, 0x88a8, 0x9100 }"


def link_local(mac: str) -> ipaddress.IPv6Address:
    """The modified EUI-64 link-local address of `mac` (RFC 4291 appendix A)."""
    octets = bytes.fromhex(mac.replace(":", ""))
    if len(octets) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    interface_id = bytes([octets[0] ^ 0x02]) + octets[1:3] + b"\xff\xfe" + octets[3:]
    return ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + interface_id)


def rules(mac: str, cidrs, note: str = "") -> list:
    """nft rule bodies (a verdict of drop each), in order; `note` is appended
    to each (e.g. a comment)."""
    suffix = f" {note}" if note else ""
    own_v6 = [ipaddress.ip_interface(c).ip for c in cidrs if ipaddress.ip_interface(c).version == 6]
    targets = ", ".join(f"0x{int(a):032x}" for a in [*own_v6, link_local(mac)])
    sources = ", ".join([*(str(a) for a in own_v6), "fe80::/10", "::"])
    return [
        f"ether type {TAG_PROTOCOLS} drop{suffix}",
        f"icmp type redirect drop{suffix}",
        f"icmpv6 type {{ nd-router-advert, nd-redirect }} drop{suffix}",
        f"icmpv6 type nd-neighbor-advert @th,64,128 != {{ {targets} }} drop{suffix}",
        f"ether type ip6 ip6 saddr != {{ {sources} }} drop{suffix}",
        f"ether type ip6 frag nexthdr != {{ tcp, udp, sctp, esp }} drop{suffix}",
    ]
