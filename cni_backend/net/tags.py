"""The tags that tie firewall rules to an attachment: built and read here only.

Every iptables rule, macspoofchk chain and flat fast-path chain or element of
an attachment carries, as its comment or name,

    rcni-<N>-<A>-<kind>     N: 8 hex of sha256(network), the network's prefix
                            A: 16 hex of sha256(network \\0 container \\0 ifname)
                            kind: bridge | portmap | flat | spoof | vtep | ipsec

so DEL, CHECK and repair find an attachment's rules of one kind, GC finds a
network's rules of the kinds the calling plug-in owns (a chained portmap's GC
must not take the bridge's rules, nor the reverse), and a network's removal
finds all of them. There is no other state.

The `vtep` kind tags a VXLAN network's INPUT rules that let only the
registered peers' VTEPs reach its UDP port (`vxlan_guard`): N is the digest of
`vni:<VNI>` and A that of the VTEP device, since the agent that writes them
knows the VNI, not the CNI network's name (`for_vtep`).

The `ipsec` kind tags the host's INPUT rules that let only the rancher-ipsec
peers reach charon's IKE and NAT-T ports (`ipsec_guard`): one set per host,
shared by its IPsec networks (`for_ipsec`).

The previous version wrote no kind: `rcni-<N>-<A>` for the bridge's rules, its
macspoofchk chain and the flat fast path (the place says which), and
`rcni-<N>-<A>p` for portmap. Such tags are still read, so an attachment made
before an upgrade is deleted, checked, repaired and collected like any other.
"""

import hashlib
import re
from dataclasses import dataclass

PREFIX = "rcni-"
BRIDGE, PORTMAP, FLAT, SPOOF, VTEP, IPSEC = "bridge", "portmap", "flat", "spoof", "vtep", "ipsec"
KINDS = frozenset({BRIDGE, PORTMAP, FLAT, SPOOF, VTEP, IPSEC})
# A kind-less tag of the previous version meant one of these, told by where it was.
_LEGACY_BARE = frozenset({BRIDGE, FLAT, SPOOF})
_SHAPE = re.compile(r"rcni-([0-9a-f]{8})-([0-9a-f]{16})(?:-(bridge|portmap|flat|spoof|vtep|ipsec)|(p))?")


def network_prefix(network: str) -> str:
    """What every tag of `network` starts with."""
    return PREFIX + _digest(network)[:8] + "-"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _attachment_id(network: str, container_id: str, ifname: str) -> str:
    return _digest(f"{network}\0{container_id}\0{ifname}")[:16]


@dataclass(frozen=True)
class Tag:
    """One attachment's tag of one kind; `str()` is the tag written today."""
    kind: str
    network_id: str     # N
    attachment_id: str  # A

    def __str__(self) -> str:
        return f"{PREFIX}{self.network_id}-{self.attachment_id}-{self.kind}"

    @property
    def legacy(self) -> str:
        """The tag the previous version wrote for the same rules."""
        return f"{PREFIX}{self.network_id}-{self.attachment_id}" + ("p" if self.kind == PORTMAP else "")

    @property
    def every(self) -> frozenset:
        """Every tag the attachment's rules of this kind may carry (today's and the legacy one)."""
        return frozenset({str(self), self.legacy})


def of(kind: str, network: str, container_id: str, ifname: str) -> Tag:
    if kind not in KINDS:
        raise ValueError(f"unknown tag kind {kind!r}")
    return Tag(kind, _digest(network)[:8], _attachment_id(network, container_id, ifname))


def for_vtep(vni: int) -> Tag:
    """The tag of the rules guarding VNI `vni`'s VXLAN port (`vxlan_guard`)."""
    return of(VTEP, f"vni:{int(vni)}", "", f"vtep{int(vni)}")


def for_ipsec() -> Tag:
    """The tag of the rules guarding this host's IKE and NAT-T ports (`ipsec_guard`)."""
    return of(IPSEC, "ipsec:host", "", "charon")


HOLDER = r"rcni-[0-9a-f]{8}-held"  # what holder() gives


def holder(network: str) -> str:
    """The name under which `network` itself holds the firewall's shared
    rules it uses (iptables.remove's `holder`); no attachment's tag has its shape."""
    return f"{network_prefix(network)}held"


def holder_of(tag: Tag) -> str:
    """`holder` of the network whose attachment `tag` is."""
    return f"{PREFIX}{tag.network_id}-held"


@dataclass(frozen=True)
class Parsed:
    network_id: str
    attachment_id: str
    kinds: frozenset    # one kind, or for a legacy kind-less tag every kind it may mean
    legacy: bool


def parse(tag: str) -> Parsed | None:
    """What a tag says; None when it is not an attachment's tag."""
    match = _SHAPE.fullmatch(tag or "")
    if match is None:
        return None
    network_id, attachment_id, kind, legacy_portmap = match.groups()
    if kind:
        return Parsed(network_id, attachment_id, frozenset({kind}), legacy=False)
    return Parsed(network_id, attachment_id, frozenset({PORTMAP}) if legacy_portmap else _LEGACY_BARE, legacy=True)


def is_attachment_tag(tag: str) -> bool:
    return parse(tag) is not None


def stale_test(network: str, kinds, valid_attachments):
    """tag -> True when it is a tag of `network`, of one of `kinds`, of no
    attachment (container_id, ifname) in `valid_attachments`."""
    network_id = _digest(network)[:8]
    kinds = frozenset(kinds)
    valid = {_attachment_id(network, container_id, ifname) for container_id, ifname in valid_attachments}

    def is_stale(tag: str) -> bool:
        parsed = parse(tag)
        return (parsed is not None and parsed.network_id == network_id and bool(parsed.kinds & kinds)
                and parsed.attachment_id not in valid)
    return is_stale

