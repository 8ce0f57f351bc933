"""The second wall in front of `nft -f -` (cni_backend/net/nft.py): every nft
script writer passes it, and an interface name, MAC or address carrying a
newline, `;`, `}` or a quote is refused with internal error 999 before nft
reads anything. The writers run for real, each in a private network
namespace (tests/private_netns.py): what they left is read back from nft."""

import subprocess

import pytest

from cni_backend import flatnet
from cni_backend.errors import CNIError, INTERNAL
from cni_backend.net import firewall, flat_fastpath, nft, tags
from tests import private_netns

MAC = "02:42:0a:16:00:05"
TAG = tags.Tag(tags.SPOOF, "0123456789ab", "feedfacecafe")
EVIL = ["veth0\n", "veth0;", "veth0}", 'veth0"', "veth0'", "ve th0", "veth0\t", 'x" ; flush ruleset ; "']
EVIL_MACS = [MAC + "\n", MAC + ";", MAC + "}", MAC + '"', f"{MAC} }}\nflush ruleset\n"]


# -- the check itself -----------------------------------------------------------

def test_newlines_between_statements_pass_and_every_other_control_character_is_refused():
    text = "table inet t {\n  chain c { }\n}\n"
    assert nft.script(text, names=["t"]) == text
    for bad in ("\t", "\r", "\x00", "\x0b", "\x0c", "\x1b", "\x7f", "\x85"):
        with pytest.raises(CNIError) as caught:
            nft.script(f"add table inet t{bad}\n", names=["t"])
        assert caught.value.code == INTERNAL and "control character" in caught.value.msg


@pytest.mark.parametrize("kind,value", [
    *(("ifnames", v) for v in EVIL + ["", "a" * 16, None]),
    *(("macs", v) for v in EVIL_MACS + ["02:42:0a:16:00", "zz:42:0a:16:00:05"]),
    *(("names", v) for v in ["t\n", "t;", "t}", 't"', "t t", ""]),
    *(("addresses", v) for v in ["10.0.0.1\n", "10.0.0.1;", "fe80::1%eth0", "10.0.0.1 }", "x", 5]),
])
def test_a_value_out_of_its_shape_is_refused(kind, value):
    with pytest.raises(CNIError) as caught:
        nft.script(f"add table inet t # {value}\n", **{kind: [value]})
    assert caught.value.code == INTERNAL and "refusing to run an nft script" in caught.value.msg


def test_good_values_pass_and_a_named_value_must_be_in_the_script():
    text = f'add element bridge t ports {{ "rf-0a.100" : jump c }} # {MAC} 10.0.0.5 fd00::5\n'
    assert nft.script(text, ifnames=["rf-0a.100"], macs=[MAC], names=["t", "c"],
                      addresses=["10.0.0.5/24", "fd00::5"]) == text
    with pytest.raises(CNIError, match="not in the script"):
        nft.script(text, ifnames=["eth9"])


# -- every writer, for real -------------------------------------------------------

def _ruleset() -> str:
    return subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=True).stdout


def _refused(call) -> str:
    """call() must raise CNIError 999; the ruleset it leaves."""
    try:
        call()
    except CNIError as error:
        assert error.code == INTERNAL, error.msg
    else:
        raise AssertionError("not refused")
    return _ruleset()


def _writers_refuse():
    """In the private netns: each writer with each bad value; what nft holds after."""
    subprocess.run(["ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1"], check=True)
    found = {}
    for bad in EVIL:
        found[f"mac filter ifname {bad!r}"] = _refused(lambda: firewall.add_mac_filter(TAG, bad, MAC))
        found[f"fast path uplink {bad!r}"] = _refused(lambda: flat_fastpath.ensure_network("ab12", bad, MAC))
        found[f"fast path veth {bad!r}"] = _refused(
            lambda: flat_fastpath.add_attachment("ab12", TAG, bad, MAC, [], None))
        flat = flatnet.FlatNetwork(bad, "veth0", 0, None, (), None, "/nonexistent")
        found[f"notrack bridge {bad!r}"] = _refused(lambda: flatnet._ensure_notrack(flat, MAC))
    for bad in EVIL_MACS:
        found[f"mac filter mac {bad!r}"] = _refused(lambda: firewall.add_mac_filter(TAG, "veth0", bad))
        found[f"fast path bridge mac {bad!r}"] = _refused(lambda: flat_fastpath.ensure_network("ab12", "veth0", bad))
        found[f"fast path veth mac {bad!r}"] = _refused(
            lambda: flat_fastpath.add_attachment("ab12", TAG, "veth0", bad, [], None))
        flat = flatnet.FlatNetwork("rf-ab12", "veth0", 0, None, (), None, "/nonexistent")
        found[f"notrack mac {bad!r}"] = _refused(lambda: flatnet._ensure_notrack(flat, bad))
    found["fast path metadata ip"] = _refused(
        lambda: flat_fastpath.add_attachment("ab12", TAG, "veth0", MAC, ["10.0.0.5/24"], "169.254.169.250\n"))
    # and the good values still make what they made before
    firewall.add_mac_filter(TAG, "veth0", MAC)
    found["good"] = _ruleset()
    return found


def test_no_writer_lets_a_bad_interface_name_or_mac_reach_nft():
    found = private_netns.run(_writers_refuse)
    leftovers = {what: ruleset for what, ruleset in found.items() if what != "good" and ruleset.strip()}
    assert leftovers == {}
    assert f"chain {TAG}" in found["good"] and '"veth0" : jump' in found["good"]

