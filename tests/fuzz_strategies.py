"""Hypothesis strategies for bad input shared by the fuzz tests: nasty strings
(shell metacharacters, huge, control characters), any JSON value, invalid
CIDRs, addresses and MACs next to valid ones."""

import string

from hypothesis import HealthCheck, settings, strategies as st

# Reproducible in CI: the same cases every run, no example database on disk.
FUZZ_SETTINGS = dict(derandomize=True, database=None, deadline=None, print_blob=True,
                     suppress_health_check=list(HealthCheck))


def fuzz_settings(examples: int):
    return settings(max_examples=examples, **FUZZ_SETTINGS)


SHELL = ["$(reboot)", "`id`", "; rm -rf /", "a|b", "a && b", "x > /tmp/rcnit-pwned", "${IFS}", "*", "-rf",
         "'", '"', "\\", "\n", "\x00", "eth0\n", "%s%n%x", "../../etc/passwd", "/", "..", ".", "\u202e",
         "a" * 16, "lo", "docker0", "eth0", "-", "--help", "NaN", "null", "true", "{}", "[]", "0x10", "1e3", " 1"]

nasty_text = st.one_of(
    st.sampled_from(SHELL),
    st.text(max_size=30),
    st.text(alphabet=string.printable, max_size=30),
    st.builds(lambda n, c: c * n, st.integers(256, 100_000), st.sampled_from(["A", "\u00e9", ";", "9", "/"])),
)
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=2 ** 63),
                        st.floats(allow_nan=False, allow_infinity=False), nasty_text)
json_value = st.recursive(json_scalar, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)

VALID_CIDRS = ["10.77.0.0/24", "10.91.0.0/16", "192.168.200.0/24", "fd00:77::/64", "10.77.0.0/30"]
# the second line: pools no network may have (ipam/config.py check_pool)
BAD_CIDRS = ["10.0.0.0/33", "10.0.0.1/24", "300.1.1.1/8", "fd00::/129", "10.0.0.0", "10.0.0.0/", "/24",
             "10.0.0.0/-1", "10.0.0.0/24/1", "fd00::1/64", "10.0.0.0/32", "10.0.0.0/31", "::/0", "1.2.3.4/0x10",
             "10.0.0.0 /24", " 10.0.0.0/24",
             "0.0.0.0/0", "127.0.0.0/8", "224.0.0.0/4", "169.254.0.0/16", "240.0.0.0/4", "0.0.0.0/8", "8.0.0.0/7",
             "fe80::/64", "ff02::/16", "::1/128", "2000::/3", "::ffff:10.0.0.0/120"]
VALID_IPS_WITH_LEN = ["10.77.0.9/24", "10.77.0.1/24", "10.77.0.200/24", "fd00:77::9/64", "10.91.3.4/16"]
BAD_IPS = ["10.77.0.256/24", "10.77.0.9/33", "10.77.0.9", "fe80::1%eth0/64", "1.2.3", "::g", "10.77.0.9/24/1",
           "10.77.0.0/24", "0.0.0.0/0", "255.255.255.255/32", "10.99.0.5/24"]
VALID_MACS = ["02:42:0a:4d:00:09", "02:00:00:00:00:01", "AA:BB:CC:DD:EE:FE"]
BAD_MACS = ["01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "02:42:0a:4d:00", "02:42:0a:4d:00:09:01", "zz:zz:zz:zz:zz:zz",
            "02-42-0a-4d-00-09", "0242.0a4d.0009", "02:42:0a:4d:00:9"]


def one_of_values(good, bad):
    return st.one_of(st.sampled_from(good), st.sampled_from(bad), nasty_text, json_value)


cidrs = one_of_values(VALID_CIDRS, BAD_CIDRS)
ips_with_len = one_of_values(VALID_IPS_WITH_LEN, BAD_IPS)
plain_ips = one_of_values([i.split("/")[0] for i in VALID_IPS_WITH_LEN], BAD_IPS)
macs = one_of_values(VALID_MACS, BAD_MACS)


def garbage_bytes():
    """Bodies that are not a JSON object at all."""
    return st.one_of(
        st.binary(max_size=200),
        st.sampled_from([b"{", b"{broken", b'{"a": }', b"[1, 2]", b'"text"', b"42", b"null", b"true", b"\xff\xfe",
                         b"{}" * 3, b'{"a": NaN}', b"[" * 3000 + b"]" * 3000, b'{"a":' * 2000 + b"1" + b"}" * 2000,
                         b"1" * 10_000, b"\x00{}"]),
        json_value.filter(lambda v: not isinstance(v, dict)).map(lambda v: _dumps(v)),
    )


def _dumps(value) -> bytes:
    import json
    return json.dumps(value).encode()


def document(required: dict, optional: dict | None = None):
    """A JSON object whose fields come from their strategies, any of them
    possibly replaced by an arbitrary JSON value, plus stray keys."""
    def loose(strategy):
        return st.one_of(strategy, strategy, strategy, json_value)
    return st.builds(
        lambda base, extra: {**extra, **base},
        st.fixed_dictionaries({k: loose(v) for k, v in required.items()},
                              optional={k: loose(v) for k, v in (optional or {}).items()}),
        st.dictionaries(nasty_text, json_value, max_size=2),
    )


@st.composite
def mutated(draw, fields: dict, max_mutations: int = 2):
    """A valid-looking object (every field from its good strategy) with up to
    `max_mutations` fields broken: dropped, given a bad value, or any JSON.
    fields: name -> (good strategy, bad strategy, required)."""
    out = {}
    for name, (good, _, required) in fields.items():
        if required or draw(st.booleans()):
            out[name] = draw(good)
    names = sorted(fields)
    count = min(draw(st.sampled_from([0, 1, 1, 1, 2, 2])), max_mutations, len(names))
    for name in draw(st.lists(st.sampled_from(names), min_size=count, max_size=count, unique=True)) if names else []:
        action = draw(st.sampled_from(["bad", "bad", "drop", "any"]))
        if action == "drop":
            out.pop(name, None)
        else:
            out[name] = draw(fields[name][1] if action == "bad" else json_value)
    return out


# -- issue 15: scoped and whitespace-bearing addresses, hostile interface names --

# `ipaddress` takes any text after '%' in an IPv6 address as its scope ID.
SCOPE_IDS = ["eth0", "lo", "1", "evil x", "x\nCOMMIT\n*filter\n-P INPUT ACCEPT", "\t", "a\r\nb", "\u2028", "#", "]"]
WHITESPACE_ADDRESSES = ["10.77.0.9 ", " 10.77.0.9", "10.77.0.9\n", "fd00:77::9\n", "10.77.0.9\t", "fd00:77:: 9"]


def scoped_addresses(suffix: str = ""):
    """IPv6 addresses with a scope ID (plain, or with `suffix`, e.g. '/64'),
    and addresses with whitespace: none may be accepted anywhere."""
    scopes = st.one_of(st.sampled_from(SCOPE_IDS), st.text(min_size=1, max_size=20).filter(lambda s: "%" not in s))
    bases = st.sampled_from(["fd00:77::9", "::1", "fe80::1", "fd00:77::"])
    return st.one_of(st.builds(lambda base, scope: f"{base}%{scope}{suffix}", bases, scopes),
                     st.sampled_from(WHITESPACE_ADDRESSES).map(lambda a: a + suffix))


HOSTILE_IFNAMES = ["../../../../tmp/rcnitx", "all", "default", "lo", ".", "..", "a/b", "br0\n-j ACCEPT", "a b",
                   "a" * 16, "", "rcnitnosuch0", "x:y", "eth0\x00", "-j", "$(reboot)"]


def hostile_ifnames():
    """Interface names that must never reach a /proc/sys path, a rule or netlink."""
    return st.one_of(st.sampled_from(HOSTILE_IFNAMES), nasty_text)


# -- published ports: host-port ranges and HostPort 0 (issue 15, item 3) -------------

PORT_HOST_IPS = ["", "", "0.0.0.0", "::", "127.0.0.1", "127.0.0.2", "::1"]
BAD_PORT_HOST_IPS = ["::1%lo", "::1%lo\nCOMMIT", "127.0.0.1 ", "192.0.2.7", "fe80::1%eth0", "0.0.0.0/0", "localhost"]


@st.composite
def host_port_ranges(draw):
    """(HostPort, HostPortEnd) as Docker sends them: a port, a range (small,
    around a few ports the other draws share, or the whole 1-65535), or 0 for
    an ephemeral port; sometimes inverted or half-given."""
    kind = draw(st.sampled_from(["port", "range", "range", "zero", "all", "inverted", "end only"]))
    first = draw(st.integers(20000, 20005))
    if kind == "port":
        return first, draw(st.sampled_from([0, first]))
    if kind == "range":
        return first, first + draw(st.integers(0, 3))
    if kind == "zero":
        return 0, 0
    if kind == "all":
        return 1, 65535
    if kind == "inverted":
        return first, first - draw(st.integers(1, 5))
    return 0, first


@st.composite
def published_port_entries(draw):
    """One com.docker.network.portmap entry with a host-port range or HostPort
    0, a protocol and a host address, mostly valid, sometimes not."""
    first, last = draw(host_port_ranges())
    return {"Proto": draw(st.sampled_from([6, 6, 17, 132])), "IP": "", "Port": draw(st.integers(1, 3)) * 80,
            "HostIP": draw(st.one_of(st.sampled_from(PORT_HOST_IPS), st.sampled_from(PORT_HOST_IPS),
                                     st.sampled_from(BAD_PORT_HOST_IPS))),
            "HostPort": first, "HostPortEnd": last}
