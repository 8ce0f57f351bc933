"""What an IP address, an interface address (ip/len) or a subnet may be,
decided in one place for both sides: the Docker requests (cnm_shim) and every
CNI input (plug-in configs, capability args, prevResult, IPAM ranges and
requested addresses). No imports but `ipaddress`: the shim and the plug-ins
both use it.

Python's `ipaddress` accepts an IPv6 scope ID (`fe80::1%eth0`) made of any
characters, spaces and newlines included, and keeps it in `str()`. Such text
reaches iptables-restore scripts (a newline starts a new table), netlink and
the IPAM store's keys (`fd00::5%x` is not `fd00::5`, so it was handed out while
`fd00::5` was held). No address this project handles needs a scope, so every
address with one is refused, with a message that says so. Only strings are
parsed: `ipaddress` also takes integers and bytes, which no JSON field means.
"""

import ipaddress

_EXAMPLES = {4: ("10.22.0.5", "10.22.0.5/24", "10.22.0.0/16"),
             6: ("fd00:22::5", "fd00:22::5/64", "fd00:22::/64"),
             None: ("10.22.0.5 or fd00:22::5", "10.22.0.5/24 or fd00:22::5/64", "10.22.0.0/16 or fd00:22::/64")}
_FORMS = ("address such as {}", "address in CIDR form such as {}", "subnet in CIDR form such as {}")
_ADDRESS, _INTERFACE, _NETWORK = range(3)


def _expected(form: int, version) -> str:
    family = f"IPv{version}" if version else "IP"
    return f"an {family} " + _FORMS[form].format(_EXAMPLES[version][form])


def _parse(parser, form: int, value, what: str, version):
    if isinstance(value, str) and "%" in value:
        raise ValueError(f"{what} {value!r} has an IPv6 scope ID ('%...'), which is not accepted: "
                         f"give {_expected(form, version)}, without one")
    try:
        parsed = parser(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or (version and parsed.version != version):
        raise ValueError(f"{what} {value!r} is not {_expected(form, version)}")
    return parsed


def address(value, what: str = "address", version: int | None = None):
    """An IPv4Address or IPv6Address; ValueError naming `what` otherwise."""
    return _parse(ipaddress.ip_address, _ADDRESS, value, what, version)


def interface(value, what: str = "address", version: int | None = None):
    """An IPv4Interface or IPv6Interface from 'ip/len' (or a bare ip: /32, /128)."""
    return _parse(ipaddress.ip_interface, _INTERFACE, value, what, version)


def network(value, what: str = "subnet", version: int | None = None, strict: bool = True):
    """An IPv4Network or IPv6Network; with `strict`, host bits must be zero."""
    return _parse(lambda text: ipaddress.ip_network(text, strict=strict), _NETWORK, value, what, version)
