"""The shared config field parsers (cni_backend/plugins/fields.py) and the one
interface-name rule (cni_backend/ifnames.py) every caller uses."""

import types

import pytest

from cni_backend import ifnames
from cni_backend.errors import INVALID_CONFIG, CNIError
from cni_backend.plugins import fields


@pytest.mark.parametrize("name", ["eth0", "eth1.100", "rflat0", "veth-cni-abc123", "a" * 15])
def test_interface_names_the_kernel_accepts(name):
    assert ifnames.is_ifname(name)


@pytest.mark.parametrize("name", ["", ".", "..", "a" * 16, "a/b", "eth:0", "x y", "eth0\n", "a\tb", "a\0", None, 7])
def test_interface_names_the_kernel_refuses(name):
    assert not ifnames.is_ifname(name)


def test_ifname_field_uses_its_default_and_names_the_field_when_bad():
    assert fields.ifname({}, "bridge", "cni0") == "cni0"
    assert fields.ifname({"bridge": "br0"}, "bridge", "cni0") == "br0"
    for bad in ({"bridge": "a:b"}, {"bridge": ""}, {"bridge": 5}, {}):
        with pytest.raises(CNIError) as raised:
            fields.ifname(bad, "bridge")
        assert raised.value.code == INVALID_CONFIG and "'bridge'" in raised.value.msg


def test_flag_is_a_json_boolean_defaulting_to_false():
    assert fields.flag({}, "ipMasq") is False
    assert fields.flag({"ipMasq": True}, "ipMasq") is True
    with pytest.raises(CNIError, match="'ipMasq' must be true or false"):
        fields.flag({"ipMasq": "yes"}, "ipMasq")


def test_integer_is_bounded_and_never_a_boolean():
    assert fields.integer({}, "mtu", 68, 65535) is None
    assert fields.integer({"mtu": 1400}, "mtu", 68, 65535) == 1400
    for bad in (67, 65536, True, "1400", 1400.0):
        with pytest.raises(CNIError, match="'mtu' must be an integer from 68 to 65535"):
            fields.integer({"mtu": bad}, "mtu", 68, 65535)


def request(runtime=None, args_cni=None, args=None):
    return types.SimpleNamespace(runtime_config=runtime or {}, args_cni=args_cni or {}, args=args or {})


def test_requested_mac_prefers_runtime_config_and_is_lower_case():
    assert fields.requested_mac(request()) is None
    assert fields.requested_mac(request({"mac": "0A:00:00:00:00:01"}, args={"MAC": "0a:00:00:00:00:02"})) \
        == "0a:00:00:00:00:01"
    assert fields.requested_mac(request(args={"MAC": "0a:00:00:00:00:02"})) == "0a:00:00:00:00:02"


@pytest.mark.parametrize("mac", ["01:00:00:00:00:01", "0a:00:00:00:00", "zz:00:00:00:00:01", 5])
def test_requested_mac_must_be_unicast(mac):
    with pytest.raises(CNIError) as raised:
        fields.requested_mac(request({"mac": mac}))
    assert raised.value.code == INVALID_CONFIG
