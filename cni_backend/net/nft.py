"""The one writer of `nft -f -` scripts: the second wall, as
`iptables.script_text` is for iptables-restore.

Every value a script interpolates was validated where it entered (interface
names, MACs, addresses, tags); this checks it again right before nft reads
it, because nft's grammar gives a newline, `;`, `{`, `}`, `#` and a quote a
meaning: an interface name or a MAC carrying one would end a statement and
start another. A script is refused (internal error 999, nft not run) when

  - a line holds a control character: only the newline separating
    statements is allowed, no tab, carriage return, NUL, ...;
  - a value the writer names does not have its expected shape: `ifnames`
    (quoted interface names), `macs`, `addresses` (an IP address or
    ip/len, no scope ID), `names` (tables, chains, tags, comments);
  - a name, interface name or MAC it names is not in the script (a writer
    naming the wrong thing).
"""

import re

from .. import addresses as _addresses
from ..errors import CNIError, INTERNAL
from . import tools

_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # every control character but the newline
_SHAPES = {
    "ifnames": (re.compile(r"[A-Za-z0-9_.@+-]{1,15}"), "an interface name of 1 to 15 of A-Z a-z 0-9 _ . @ + -"),
    "macs": (re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}"), "a MAC address such as 02:42:0a:16:00:05"),
    "names": (re.compile(r"[A-Za-z0-9_.-]{1,64}"), "a name of 1 to 64 of A-Z a-z 0-9 _ . -"),
}


def _refuse(why: str):
    raise CNIError(INTERNAL, f"refusing to run an nft script: {why}")


def _address(value) -> bool:
    try:
        (_addresses.interface if isinstance(value, str) and "/" in value else _addresses.address)(value)
    except ValueError:
        return False
    return True


def script(text: str, *, ifnames=(), macs=(), addresses=(), names=()) -> str:
    """`text`, checked (see the module's docstring); CNIError 999 otherwise."""
    if not isinstance(text, str):
        _refuse(f"not text: {text!r}")
    for line in text.split("\n"):
        if _CONTROL.search(line):
            _refuse(f"a control character in the line {line!r}")
    for kind, values in (("ifnames", ifnames), ("macs", macs), ("names", names), ("addresses", addresses)):
        for value in values:
            if kind == "addresses":
                ok, shape = _address(value), "an IP address or ip/len without a scope ID"
            else:
                pattern, shape = _SHAPES[kind]
                ok = isinstance(value, str) and pattern.fullmatch(value) is not None
            if not ok:
                _refuse(f"{value!r} is not {shape}")
            if kind != "addresses" and value not in text:  # (an ip/len is written as its ip)
                _refuse(f"{value!r} is not in the script it was named for")
    return text


def run(text: str, **values) -> str:
    """`nft -f -` with `text` once `script` passed it; nft's output."""
    return tools.run(["nft", "-f", "-"], script(text, **values))


def succeeds(text: str, **values) -> bool:
    """As `run`, for a probe: whether nft accepted it (a refused script raises)."""
    return tools.succeeds(["nft", "-f", "-"], script(text, **values))


def run_fresh(fresh: tuple) -> None:
    """A writer's (script, values, fallback) on its own: the create-only
    script, or `fallback()` when nft refuses it (see flat_fastpath.fresh_attachment)."""
    script, values, fallback = fresh
    if not succeeds(script, **values):
        fallback()
