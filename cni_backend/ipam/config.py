"""The IPAM section of a network config, parsed and validated once.

Accepts host-local's shapes: `ranges` (a list of range sets, each a list of
ranges), or a single range given by `subnet`/`rangeStart`/`rangeEnd`/`gateway`
at the top level. `runtimeConfig.ipRanges` replaces the ranges when present.
"""

import dataclasses
import ipaddress

from .. import addresses, paths
from ..errors import CNIError, INVALID_CONFIG

DEFAULT_DATA_DIR = paths.STATE_DIR


def _bad(msg: str, details: str = "") -> CNIError:
    return CNIError(INVALID_CONFIG, "ipam: " + msg, details)


def parse_ip(value, what: str):
    """An address; 'ip/len' is read as its ip (host-local's habit)."""
    try:
        return addresses.address(value.split("/")[0] if isinstance(value, str) else value, what)
    except ValueError as exc:
        raise _bad(str(exc)) from None


def parse_network(value, what: str):
    try:
        return addresses.network(value, what, strict=False)
    except ValueError as exc:
        raise _bad(str(exc)) from None


@dataclasses.dataclass(frozen=True)
class Range:
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network
    start: ipaddress.IPv4Address | ipaddress.IPv6Address
    end: ipaddress.IPv4Address | ipaddress.IPv6Address
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None

    @property
    def pool(self) -> str:
        """The key allocations live under: one pool per subnet per store."""
        return str(self.subnet)

    def in_subnet(self, ip) -> bool:
        return ip.version == self.subnet.version and ip in self.subnet

    def in_range(self, ip) -> bool:
        return self.in_subnet(ip) and self.start <= ip <= self.end

    def is_reserved_by_subnet(self, ip) -> bool:
        """Network address, IPv4 broadcast and the gateway are never handed out."""
        if ip == self.subnet.network_address or ip == self.gateway:
            return True
        return self.subnet.version == 4 and ip == self.subnet.broadcast_address


# The shortest prefix a pool may have. An IPv4 /8 already holds 16.7 million
# addresses, far beyond any one L2 segment or overlay; an IPv6 /32 is what a
# registry hands a whole ISP (a site gets a /48, a network a /64). A shorter
# pool is a typo or an attempt to claim everything (0.0.0.0/0, ::/0).
SHORTEST_PREFIX = {4: 8, 6: 32}
# Addresses no container network may use: the host's own or the wire's.
SPECIAL_RANGES = tuple((ipaddress.ip_network(net), what) for net, what in (
    ("0.0.0.0/8", "'this network' (0.0.0.0/8, the unspecified address)"),
    ("127.0.0.0/8", "loopback (127.0.0.0/8)"),
    ("169.254.0.0/16", "link-local (169.254.0.0/16)"),
    ("224.0.0.0/4", "multicast (224.0.0.0/4)"),
    ("240.0.0.0/4", "reserved (240.0.0.0/4, with the broadcast address)"),
    ("::/128", "the unspecified address (::)"),
    ("::1/128", "loopback (::1)"),
    ("::ffff:0:0/96", "IPv4-mapped (::ffff:0:0/96)"),
    ("fe80::/10", "link-local (fe80::/10)"),
    ("ff00::/8", "multicast (ff00::/8)"),
))


def check_pool(subnet) -> None:
    """Refuse a pool no network may have: the default route, a prefix shorter
    than SHORTEST_PREFIX, or one touching SPECIAL_RANGES."""
    valid = "use a private range such as 10.22.0.0/16 or fd00:22::/64"
    if subnet.prefixlen == 0:
        raise _bad(f"subnet {subnet} is refused: it is the default route (every address)", valid)
    for special, what in SPECIAL_RANGES:
        if special.version == subnet.version and subnet.overlaps(special):
            raise _bad(f"subnet {subnet} is refused: it overlaps {what}", valid)
    if subnet.prefixlen < SHORTEST_PREFIX[subnet.version]:
        raise _bad(f"subnet {subnet} is refused: a prefix shorter than /{SHORTEST_PREFIX[subnet.version]} "
                   f"is not a network", valid)


def parse_range(raw) -> Range:
    if not isinstance(raw, dict) or "subnet" not in raw:
        raise _bad(f"a range must be an object with a 'subnet', got {raw!r}")
    subnet = parse_network(raw["subnet"], "subnet")
    check_pool(subnet)
    smallest = 30 if subnet.version == 4 else 127
    if subnet.prefixlen > smallest:
        raise _bad(f"subnet {subnet} is too small", f"use a prefix of /{smallest} or shorter")
    first = subnet.network_address + 1
    last = subnet.broadcast_address - (1 if subnet.version == 4 else 0)
    start = parse_ip(raw["rangeStart"], "rangeStart") if raw.get("rangeStart") else first
    end = parse_ip(raw["rangeEnd"], "rangeEnd") if raw.get("rangeEnd") else last
    gateway = parse_ip(raw["gateway"], "gateway") if raw.get("gateway") else first
    for name, ip in (("rangeStart", start), ("rangeEnd", end), ("gateway", gateway)):
        if ip.version != subnet.version or ip not in subnet:
            raise _bad(f"{name} {ip} is not inside subnet {subnet}")
    if start > end:
        raise _bad(f"rangeStart {start} is after rangeEnd {end}")
    return Range(subnet, max(start, first), min(end, last), gateway)


def parse_range_sets(raw) -> list:
    if not isinstance(raw, list) or not raw:
        raise _bad("'ranges' must be a non-empty list of range sets (lists of ranges)")
    sets = []
    for range_set in raw:
        if not isinstance(range_set, list) or not range_set:
            raise _bad("each entry of 'ranges' must be a non-empty list of ranges")
        sets.append([parse_range(r) for r in range_set])
    every = [r for s in sets for r in s]
    for i, a in enumerate(every):
        for b in every[i + 1:]:
            if a.subnet.version == b.subnet.version and a.start <= b.end and b.start <= a.end:
                raise _bad(f"ranges {a.start}-{a.end} and {b.start}-{b.end} overlap")
    return sets


def parse_routes(raw) -> list:
    routes = []
    for route in raw or []:
        if not isinstance(route, dict) or "dst" not in route:
            raise _bad(f"a route must be an object with 'dst', got {route!r}")
        parsed = {"dst": str(parse_network(route["dst"], "route dst"))}
        if route.get("gw"):
            parsed["gw"] = str(parse_ip(route["gw"], "route gw"))
        routes.append(parsed)
    return routes


@dataclasses.dataclass
class IPAMConfig:
    range_sets: list
    routes: list
    exclude: list
    dns: dict
    data_dir: str
    etcd_endpoints: tuple = ()
    etcd_prefix: str = "/rancher-cni"
    etcd_tls: dict | None = None   # {"ca", "cert", "key"} paths for an https etcd; "user", "password_file"

    def is_excluded(self, ip) -> bool:
        return any(ip.version == net.version and ip in net for net in self.exclude)


def load(ipam: dict, runtime_config: dict) -> IPAMConfig:
    if not isinstance(ipam, dict):
        raise _bad("the 'ipam' section must be a JSON object")
    if runtime_config.get("ipRanges"):
        range_sets = parse_range_sets(runtime_config["ipRanges"])
    elif ipam.get("ranges"):
        range_sets = parse_range_sets(ipam["ranges"])
    elif ipam.get("subnet"):
        range_sets = parse_range_sets([[{k: ipam.get(k) for k in
                                         ("subnet", "rangeStart", "rangeEnd", "gateway")}]])
    else:
        raise _bad("no address ranges", "set 'ranges' (or 'subnet') in the ipam section")
    exclude = ipam.get("exclude") or []
    if not isinstance(exclude, list):
        raise _bad("'exclude' must be a list of addresses or CIDRs")
    dns = ipam.get("dns") or {}
    if not isinstance(dns, dict):
        raise _bad("'dns' must be an object")
    endpoints = ipam.get("etcdEndpoints") or []
    if not isinstance(endpoints, list) or not all(isinstance(e, str) and "://" in e for e in endpoints):
        raise _bad("'etcdEndpoints' must be a list of URLs such as https://10.0.0.1:2379")
    from .etcd_store import CONFIG_KEYS, check_endpoints
    check_endpoints(endpoints, ipam.get("insecureEtcd") is True, flag='"insecureEtcd": true in the ipam section')
    return IPAMConfig(
        range_sets=range_sets,
        routes=parse_routes(ipam.get("routes")),
        exclude=[parse_network(e, "exclude entry") for e in exclude],
        dns=dns,
        data_dir=str(ipam.get("dataDir") or DEFAULT_DATA_DIR),
        etcd_endpoints=tuple(endpoints),
        etcd_prefix=str(ipam.get("etcdPrefix") or "/rancher-cni"),
        etcd_tls={k: str(ipam[name]) for k, name in CONFIG_KEYS.items() if ipam.get(name)} or None,
    )
