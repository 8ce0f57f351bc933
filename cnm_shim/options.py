"""The `-o key=value` options of `docker network create`, per backend.

Validated once, here: an unknown key or a bad value fails the command with a
message that names it and lists what is valid.
"""

import dataclasses
import ipaddress
import logging
import re

from .errors import DriverError

log = logging.getLogger("cnm-shim")

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,14}\Z")
_CNI_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}\Z")


def boolean(driver, key, value):
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise DriverError(f"{driver}: option {key}={value!r} is not a boolean (use true or false)")


def int_between(low, high):
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


# The kernel's per-interface sysctl directories hold these next to the
# interfaces' own (/proc/sys/net/ipv4/conf/all), and it refuses them as link
# names: said here, before anything is made, rather than as EINVAL later.
_NOT_AN_INTERFACE = ("all", "default")


def _interface(what):
    name = _matching(_IFNAME, what)

    def parse(driver, key, value):
        if str(value) in _NOT_AN_INTERFACE:
            raise DriverError(f"{driver}: option {key}={value!r} is not usable: 'all' and 'default' name every "
                              "interface in the kernel's settings; choose another name")
        return name(driver, key, value)
    return parse


@dataclasses.dataclass
class Option:
    name: str
    parse: object
    default: object
    help: str


# Options several backends share; each backend's module lists its own.
BRIDGE = Option("bridge", _interface("a valid interface name (at most 15 characters)"), None,
                "Linux bridge to use; created if missing (default rb-<network id>); one that exists already "
                "(docker0) needs bridge.shared=true")
BRIDGE_SHARED = Option("bridge.shared", boolean, False,
                       "use the existing bridge -o bridge= names (docker0, one made by hand) as it is; "
                       "it is left in place at network rm")
MTU = Option("mtu", int_between(68, 65535), None, "MTU of the bridge and of the containers' interfaces")
IP_MASQ = Option("ip_masq", boolean, True, "masquerade traffic leaving the subnet (never on --internal networks)")
HAIRPIN = Option("hairpin", boolean, False, "hairpin mode on the container ports")
CNI_EXPORT = Option("cni.export", boolean, False, "write the network's conflist to the CNI config dir for CNI runtimes")
CNI_NAME = Option("cni.name", _matching(_CNI_NAME, "a valid CNI network name"), None,
                  "the network's CNI name (default rancher-<network id>)")


_RATE = re.compile(r"(\d{1,15})(bit|kbit|mbit|gbit|tbit)?\Z", re.IGNORECASE)
_RATE_UNITS = {None: 1, "bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}
MAX_RATE = 10**13  # bits per second: ten times the fastest NIC; the plug-in takes up to 2^64


def bits(driver, key, value):
    """A rate or a burst in bits, as tc writes them: 20mbit, 500kbit, 1gbit,
    or a plain number of bits (decimal units: 1kbit = 1000 bits)."""
    found = _RATE.match(str(value))
    number = int(found.group(1)) * _RATE_UNITS[(found.group(2) or "").lower() or None] if found else 0
    if not 0 < number <= MAX_RATE:
        raise DriverError(f"{driver}: option {key}={value!r} is not a rate: a positive number of bits with "
                          "an optional unit bit, kbit, mbit, gbit or tbit (per second for a rate), e.g. 20mbit")
    return number


# Meta plug-ins chained after a network's own (render.meta_plugins), from the
# reference CNI plug-ins in the CNI path; on every backend.
BANDWIDTH = (
    Option("bandwidth.ingress_rate", bits, None,
           "rate limit of the traffic to each container, e.g. 20mbit (the reference bandwidth plug-in)"),
    Option("bandwidth.ingress_burst", bits, None, "its burst, in bits (default: a tenth of the rate)"),
    Option("bandwidth.egress_rate", bits, None, "rate limit of the traffic from each container, e.g. 20mbit"),
    Option("bandwidth.egress_burst", bits, None, "its burst, in bits (default: a tenth of the rate)"),
)

# The reference tuning plug-in's link attributes, set on the container's
# interface by the ADD (in the staging namespace): the kernel keeps them when
# Docker moves the interface into the container. Left out: not set. (The
# plug-in of Debian 12, 1.1.1, has no txQLen yet: it would ignore one.)
TUNING = (
    Option("tuning.mtu", int_between(68, 65535), None,
           "MTU of the containers' interfaces only (the reference tuning plug-in)"),
    Option("tuning.promisc", boolean, None, "promiscuous mode on the containers' interfaces (true or false)"),
    Option("tuning.allmulti", boolean, None, "all-multicast mode on the containers' interfaces (true or false)"),
)
TUNING_SYSCTL = "tuning.sysctl."
FIREWALL = "firewall"
# The reference firewall plug-in, chained after ours: our isolation and DROPs
# decide first, then its CNI-FORWARD (with the admin's CNI-ADMIN) accepts the
# container's traffic (firewall.bridge_rules, the jump order in
# iptables.KEEP_ABOVE; tests/netns/test_reference_firewall.py).
FIREWALL_OPTION = Option(FIREWALL, boolean, False,
                         "chain the reference firewall plug-in: the admin's rules in its CNI-ADMIN chain apply to "
                         "the containers' traffic, after this driver's isolation (true or false)")
INGRESS_POLICIES = ("open", "same-bridge")


def ingress_policy(refused: dict | None = None):
    """A parser for firewall.ingress_policy (the plug-in's ingressPolicy);
    `refused`: policy -> why this driver refuses it."""
    def parse(driver, key, value):
        text = str(value).strip().lower()
        if text not in INGRESS_POLICIES:
            raise DriverError(f"{driver}: option {key}={str(value)[:100]!r} is not an ingress policy of the reference "
                              "firewall plug-in; valid values: " + ", ".join(INGRESS_POLICIES))
        if refused and text in refused:
            raise DriverError(f"{driver}: option {key}={text}: not offered on this driver's networks: {refused[text]}")
        return text
    return parse


def firewall_options(refused_policies: dict | None = None) -> tuple:
    """-o firewall and -o firewall.ingress_policy, for a backend's options."""
    return (FIREWALL_OPTION,
            Option(f"{FIREWALL}.ingress_policy", ingress_policy(refused_policies), None,
                   "with firewall=true: the plug-in's ingressPolicy, open (its default) or same-bridge (its "
                   "CNI-ISOLATION-STAGE chains also drop traffic between this bridge and the other bridges "
                   "with same-bridge); valid: " + ", ".join(p for p in INGRESS_POLICIES
                                                           if p not in (refused_policies or {}))))


def firewall_chained(opts: dict) -> dict:
    """The network plug-in's key when the reference firewall follows it: its
    ACCEPTs of the container's traffic yield to the firewall's CNI-FORWARD."""
    return {"firewallChained": True} if opts.get(FIREWALL) else {}


# How `-p` is published: through this driver's rancher-portmap (its own
# ports list, run after the network's), or through the reference portmap
# chained in the network's own list, which gets Docker's mappings as the
# portMappings capability (as rancher-conflist networks do; translate.py).
PORTMAP = "portmap"
PORTMAP_VALUES = ("rancher", "reference")


def portmap_choice(driver, key, value):
    text = str(value).strip().lower()
    if text not in PORTMAP_VALUES:
        raise DriverError(f"{driver}: option {key}={str(value)[:100]!r} is not one of: " + ", ".join(PORTMAP_VALUES)
                          + " (rancher: this driver's rancher-portmap; reference: the reference portmap plug-in "
                          "from the CNI path)")
    return text


PORTMAP_OPTION = Option(PORTMAP, portmap_choice, "rancher",
                        "what publishes -p: rancher (this driver's rancher-portmap) or reference (the reference "
                        "portmap plug-in chained after ours, with its CNI-HOSTPORT-* / CNI-DN-* rules)")


def refuse_portmap(driver: str, key: str, value) -> None:
    """-o portmap=reference on a backend that does not offer it (rancher-flat):
    refused with the reason; portmap=rancher is what the backend does anyway."""
    if key != PORTMAP:
        raise DriverError(f"{driver}: unknown option {key[:100]!r}: the reference portmap plug-in takes no settings "
                          "here; only -o portmap=rancher or -o portmap=reference (rancher-bridge, rancher-vxlan, "
                          "rancher-ipsec)")
    if portmap_choice(driver, key, value) == "rancher":
        return
    raise DriverError(
        f"{driver}: option portmap=reference is not offered on this driver's networks, only on rancher-bridge, "
        "rancher-vxlan and rancher-ipsec (valid here: portmap=rancher, the default, which publishes -p on this "
        "network): the shim guards the route_localnet the reference portmap turns on and leaves on, and relies on "
        "its own isolation rules to let the DNAT'ed traffic in, and both are tested only on those local-bridge data "
        "paths; here the containers sit on the business LAN itself, behind its router and a fast path that skips "
        "the bridge's netfilter hooks")


def refuse_firewall(driver: str, key: str, offered: bool) -> None:
    """The reference firewall plug-in's settings this driver does not offer,
    asked for with -o firewall.KEY: refused, saying why and what is
    (`offered`: the driver offers -o firewall=true)."""
    if offered:
        raise DriverError(
            f"{driver}: option {key[:100]!r}: of the reference firewall plug-in's settings only -o firewall=true "
            "(or false) and -o firewall.ingress_policy are offered; its others are this driver's "
            "to set: backend is iptables (firewalld is not used), and its admin chain is CNI-ADMIN, whose place "
            "below this driver's isolation is kept (a chain of another name would not be)")
    raise DriverError(
        f"{driver}: option {key[:100]!r}: the reference firewall plug-in is not offered on this driver's "
        "networks: on its own it puts its CNI-FORWARD chain first in FORWARD and accepts everything the "
        "container sends there, ahead of this driver's isolation rules, so the container would reach this "
        "host's other networks; rancher-bridge, rancher-vxlan, rancher-ipsec and rancher-flat keep their "
        "isolation above it (and are tested so)")


def refuse_tuning_sysctl(driver: str, key: str) -> None:
    """tuning's `sysctl`, asked for with -o tuning.sysctl.NAME=VALUE: refused
    with the reason and the way that works (checked in the engine tests)."""
    raise DriverError(
        f"{driver}: option {key[:100]!r}: the tuning plug-in's sysctls cannot be set on a Docker container's "
        "interface: the CNI ADD runs before Docker moves the interface into the container, and the kernel "
        "resets an interface's net.ipv4.conf / net.ipv6.conf settings when it changes namespace (and the "
        "container's namespace-wide settings are not reachable at that point). Set it at docker run instead, "
        "which applies it inside the container once the interface is there: "
        "docker run --sysctl net.ipv4.conf.eth0.NAME=VALUE (eth0: the container's first network). "
        "tuning.mtu, tuning.promisc and tuning.allmulti do work on the network")


def ifname(what="a valid interface name"):
    """A parser for an option naming a network interface."""
    return _interface(what)


def ipv4(driver, key, value):
    try:
        address = ipaddress.ip_address(str(value))
    except ValueError:
        address = None
    if address is None or address.version != 4:
        raise DriverError(f"{driver}: option {key}={value!r} is not an IPv4 address")
    return str(address)


def ipv4_list(driver, key, value):
    """Comma-separated IPv4 addresses -> a list."""
    peers = [p.strip() for p in str(value).split(",") if p.strip()]
    for peer in peers:
        ipv4(driver, key, peer)
    return peers


ALIASES = {"com.docker.network.driver.mtu": "mtu", "com.docker.network.bridge.name": "bridge"}

# CreateNetwork's Options, besides the -o map (com.docker.network.generic):
# what the flags of `docker network create` became (moby: network.go, the
# NetworkOption setters; every one that reaches a driver is here). --ingress,
# --attachable, --scope, --label and --config-only never reach a driver.
GENERIC = "com.docker.network.generic"
ENABLE_IPV4, ENABLE_IPV6 = "com.docker.network.enable_ipv4", "com.docker.network.enable_ipv6"
INTERNAL = "com.docker.network.internal"
DOCKER_FLAGS = {ENABLE_IPV4: "--ipv4", ENABLE_IPV6: "--ipv6", INTERNAL: "--internal"}
# -o keys the daemon itself reads (as --ipv4 / --ipv6) and still passes on in the -o map
_READ_BY_DOCKER = (ENABLE_IPV4, ENABLE_IPV6)


def _docker_flag(driver: str, key: str, value) -> bool:
    if isinstance(value, bool):
        return value
    try:
        return boolean(driver, key, value)
    except DriverError:
        raise DriverError(f"{driver}: Docker sent {key}={value!r}, which is not a boolean") from None


def way_out(opts: dict) -> dict:
    """The conflist keys for the way out of a bridge-like network: a default
    route via the gateway and masquerade, or, internal (--internal), neither,
    and the plug-in drops whatever would leave the subnet."""
    if opts.get("internal"):
        return {"isDefaultGateway": False, "ipMasq": False, "internal": True}
    return {"isDefaultGateway": True, "ipMasq": opts["ip_masq"]}


def docker_flags(driver: str, raw: dict, ipv4: list, ipv6: list) -> dict:
    """CreateNetwork's Options other than the -o map -> {"internal": bool}.
    Each flag Docker sends is honoured or refused: an address family enabled
    without a pool, or a pool of a family Docker did not enable, is refused
    (Docker itself never sends either); a flag this driver does not know is
    refused when it asks for something (true, a value), and logged when it
    is off."""
    flags = {}
    for key, value in raw.items():
        if key == GENERIC:
            continue
        if key in DOCKER_FLAGS:
            flags[key] = _docker_flag(driver, key, value)
        elif value in (None, False, "", "false", 0, [], {}):
            log.warning("%s: CreateNetwork option %s=%r is unknown to this driver; it is off, so it changes nothing",
                        driver, key, value)
        else:
            raise DriverError(f"{driver}: Docker asked for {key}={value!r}, which this driver does not support")
    for family, pools in ((4, ipv4), (6, ipv6)):
        key = ENABLE_IPV4 if family == 4 else ENABLE_IPV6
        if flags.get(key) is False and pools:
            raise DriverError(f"{driver}: an IPv{family} subnet was given but IPv{family} is off ({key}=false); "
                              f"add {DOCKER_FLAGS[key]} or leave out the IPv{family} subnet")
        if flags.get(key) and not pools:
            raise DriverError(f"{driver}: IPv{family} is on ({key}=true) but Docker sent no IPv{family} pool; "
                              f"give an IPv{family} --subnet")
    return {"internal": flags.get(INTERNAL, False)}


def default_text(option: Option, required=()) -> str:
    """An option's default as the user writes it."""
    if option.name in required:
        return "required"
    if option.default in (None, [], ()):
        return "none"
    if isinstance(option.default, bool):
        return "true" if option.default else "false"
    return str(option.default)


def describe(backend: str) -> str:
    """A backend's options with their defaults and help, as `cnm-shim options` prints them."""
    entry = backends.get(backend)
    rows = [("OPTION", "DEFAULT", "MEANING")]
    rows += [(o.name, default_text(o, entry.required), o.help) for o in entry.options]
    name_width, default_width = (max(len(row[i]) for row in rows) for i in (0, 1))
    lines = [f"{entry.driver} (or -o backend={entry.name}): docker network create -d {entry.driver} -o OPTION=VALUE ..."]
    lines += [f"  {name:{name_width}}  {default:{default_width}}  {meaning}" for name, default, meaning in rows]
    aliases = [f"{alias} = {name}" for alias, name in ALIASES.items() if name in {o.name for o in entry.options}]
    if aliases:
        lines.append("  aliases: " + ", ".join(aliases))
    return "\n".join(lines) + "\n"


def choose_backend(driver: str, backend: str, raw: dict) -> tuple:
    """`-o backend=NAME` overrides the driver's own backend (the one a managed
    plug-in serves by default): (backend, the other options)."""
    if not isinstance(raw, dict) or "backend" not in raw:
        return backend, raw
    rest = {k: v for k, v in raw.items() if k != "backend"}
    chosen = str(raw["backend"]).strip().lower()
    if chosen not in backends.REGISTRY:
        raise DriverError(f"{driver}: option backend={raw['backend']!r} is not one of: " + ", ".join(backends.REGISTRY))
    return chosen, rest


def parse(driver: str, backend: str, raw: dict) -> dict:
    """The user's option map -> {name: typed value} with defaults filled in."""
    entry = backends.get(backend)
    known = {o.name: o for o in entry.options}
    chains_meta_plugins = TUNING[0].name in known  # our backends (not conflist: its chain is the user's)
    if not isinstance(raw, dict):
        raise DriverError(f"{driver}: driver options must be a map of strings")
    values = {o.name: o.default for o in known.values()}
    for key, value in raw.items():
        if key in _READ_BY_DOCKER:
            continue  # Docker turned it into its own flag, which docker_flags honours
        name = ALIASES.get(key, key)
        if str(name).startswith(TUNING_SYSCTL) and chains_meta_plugins:
            refuse_tuning_sysctl(driver, str(key))
        if str(name).split(".")[0] == FIREWALL and chains_meta_plugins and name not in known:
            refuse_firewall(driver, str(key), offered=FIREWALL in known)
        if str(name).split(".")[0] == PORTMAP and chains_meta_plugins and name not in known:
            refuse_portmap(driver, str(name), value)
            continue  # portmap=rancher: what this backend does anyway
        if name not in known:
            raise DriverError(f"{driver}: unknown option {key!r}; valid options: " + ", ".join(sorted([*known, "backend"])))
        values[name] = known[name].parse(driver, key, value)
    for name, example in entry.required.items():
        if values.get(name) is None:
            raise DriverError(f"{driver}: option {name} is required: {example}")
    return values


from . import backends  # noqa: E402  (the entries are built from this module's parsers)
