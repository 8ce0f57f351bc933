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


@dataclasses.dataclass
class Option:
    name: str
    parse: object
    default: object
    help: str


# Options several backends share; each backend's module lists its own.
BRIDGE = Option("bridge", _matching(_IFNAME, "a valid interface name (at most 15 characters)"), None,
                "Linux bridge to use; created if missing (default rb-<network id>), an existing one such as docker0 is reused")
MTU = Option("mtu", int_between(68, 65535), None, "MTU of the bridge and of the containers' interfaces")
IP_MASQ = Option("ip_masq", boolean, True, "masquerade traffic leaving the subnet")
HAIRPIN = Option("hairpin", boolean, False, "hairpin mode on the container ports")
CNI_EXPORT = Option("cni.export", boolean, False, "write the network's conflist to the CNI config dir for CNI runtimes")
CNI_NAME = Option("cni.name", _matching(_CNI_NAME, "a valid CNI network name"), None,
                  "the network's CNI name (default rancher-<network id>)")


def ifname(what="a valid interface name"):
    """A parser for an option naming a network interface."""
    return _matching(_IFNAME, what)


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
    if not isinstance(raw, dict):
        raise DriverError(f"{driver}: driver options must be a map of strings")
    values = {o.name: o.default for o in known.values()}
    for key, value in raw.items():
        name = ALIASES.get(key, key)
        if name not in known:
            raise DriverError(f"{driver}: unknown option {key!r}; valid options: " + ", ".join(sorted([*known, "backend"])))
        values[name] = known[name].parse(driver, key, value)
    for name, example in entry.required.items():
        if values.get(name) is None:
            raise DriverError(f"{driver}: option {name} is required: {example}")
    return values


from . import backends  # noqa: E402  (the entries are built from this module's parsers)
