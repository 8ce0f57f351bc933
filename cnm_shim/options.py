"""The `-o key=value` options of `docker network create`, per backend.

Validated once, here: an unknown key or a bad value fails the command with a
message that names it and lists what is valid.
"""

import dataclasses
import ipaddress
import re

from .errors import DriverError

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,14}\Z")
_CNI_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}\Z")


def _bool(driver, key, value):
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise DriverError(f"{driver}: option {key}={value!r} is not a boolean (use true or false)")


def _int_between(low, high):
    def parse(driver, key, value):
        try:
            number = int(str(value), 10)
        except ValueError:
            number = None
        if number is None or not low <= number <= high:
            raise DriverError(f"{driver}: option {key}={value!r} must be an integer from {low} to {high}")
        return number
    return parse


def _matching(pattern, what):
    def parse(driver, key, value):
        if not pattern.match(str(value)):
            raise DriverError(f"{driver}: option {key}={value!r} is not {what}")
        return str(value)
    return parse


@dataclasses.dataclass
class Option:
    name: str
    parse: object
    default: object
    help: str


BRIDGE_OPTIONS = [
    Option("bridge", _matching(_IFNAME, "a valid interface name (at most 15 characters)"), None,
           "Linux bridge to use; created if missing (default rb-<network id>), an existing one such as docker0 is reused"),
    Option("mtu", _int_between(68, 65535), None, "MTU of the bridge and of the containers' interfaces"),
    Option("ip_masq", _bool, True, "masquerade traffic leaving the subnet"),
    Option("hairpin", _bool, False, "hairpin mode on the container ports"),
    Option("promisc", _bool, False, "promiscuous mode on the bridge"),
    Option("macspoofchk", _bool, False, "drop frames whose source MAC is not the container's"),
    Option("vlan", _int_between(0, 4094), 0, "VLAN id of the container ports (needs bridge vlan_filtering)"),
    Option("cni.export", _bool, False, "write the network's conflist to the CNI config dir for CNI runtimes"),
    Option("cni.name", _matching(_CNI_NAME, "a valid CNI network name"), None,
           "the network's CNI name (default rancher-<network id>)"),
]
def _ipv4(driver, key, value):
    try:
        address = ipaddress.ip_address(str(value))
    except ValueError:
        address = None
    if address is None or address.version != 4:
        raise DriverError(f"{driver}: option {key}={value!r} is not an IPv4 address")
    return str(address)


_COMMON = {o.name: o for o in BRIDGE_OPTIONS}
FLAT_OPTIONS = [
    Option("parent", _matching(_IFNAME, "a valid interface name"), None,
           "the host interface facing the business network (required)"),
    Option("vlan", _int_between(0, 4094), 0, "use the VLAN sub-interface PARENT.VLAN, made and removed by us"),
    Option("bridge", _COMMON["bridge"].parse, None, "the flat bridge (default rf-<network id>)"),
    _COMMON["mtu"],
    _COMMON["hairpin"],
    Option("metadata_ip", _ipv4, "169.254.169.250", "the metadata service's address"),
    Option("metadata_link_ip", _ipv4, None,
           "an address of the subnet bound on the metadata bridge; turns the metadata link on"),
    Option("metadata_bridge", _COMMON["bridge"].parse, "docker0", "the bridge the metadata service is on"),
    Option("fast_path", _bool, True,
           "unicast between containers and the uplink skips the bridge and its br_netfilter hooks"),
    _COMMON["cni.export"],
    _COMMON["cni.name"],
]
def _peers(driver, key, value):
    peers = [p.strip() for p in str(value).split(",") if p.strip()]
    for peer in peers:
        _ipv4(driver, key, peer)
    return peers


VXLAN_OPTIONS = [
    Option("vni", _int_between(1, 16777215), 1042, "the VXLAN network identifier; the VTEP is vtep<VNI>"),
    Option("vtep_dev", _matching(_IFNAME, "a valid interface name"), None,
           "the underlay interface (default: the one with the default route)"),
    Option("peers", _peers, [], "comma-separated underlay addresses of the other hosts"),
    Option("bridge", _COMMON["bridge"].parse, None, "the network's bridge (default rv-<network id>)"),
    _COMMON["mtu"],
    _COMMON["ip_masq"],
    _COMMON["cni.export"],
    _COMMON["cni.name"],
]
ALIASES = {"com.docker.network.driver.mtu": "mtu", "com.docker.network.bridge.name": "bridge"}
BACKEND_OPTIONS = {"bridge": BRIDGE_OPTIONS, "flat": FLAT_OPTIONS, "vxlan": VXLAN_OPTIONS}
REQUIRED = {"flat": {"parent": "the host interface facing the business network, e.g. -o parent=eth1"}}


def choose_backend(driver: str, backend: str, raw: dict) -> tuple:
    """`-o backend=NAME` overrides the driver's own backend (the one a managed
    plug-in serves by default): (backend, the other options)."""
    if not isinstance(raw, dict) or "backend" not in raw:
        return backend, raw
    rest = {k: v for k, v in raw.items() if k != "backend"}
    chosen = str(raw["backend"]).strip().lower()
    if chosen not in BACKEND_OPTIONS:
        raise DriverError(f"{driver}: option backend={raw['backend']!r} is not one of: " + ", ".join(BACKEND_OPTIONS))
    return chosen, rest


def parse(driver: str, backend: str, raw: dict) -> dict:
    """The user's option map -> {name: typed value} with defaults filled in."""
    known = {o.name: o for o in BACKEND_OPTIONS[backend]}
    if not isinstance(raw, dict):
        raise DriverError(f"{driver}: driver options must be a map of strings")
    values = {o.name: o.default for o in known.values()}
    for key, value in raw.items():
        name = ALIASES.get(key, key)
        if name not in known:
            raise DriverError(f"{driver}: unknown option {key!r}; valid options: " + ", ".join(sorted([*known, "backend"])))
        values[name] = known[name].parse(driver, key, value)
    for name, example in REQUIRED.get(backend, {}).items():
        if values.get(name) is None:
            raise DriverError(f"{driver}: option {name} is required: {example}")
    return values
