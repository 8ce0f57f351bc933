"""The named netlink constants (cni_backend/net/netlink.py) mean what the
kernel's headers say, so no bare number is needed in netlink code."""

import socket

from cni_backend.net import netlink


def test_an_ip_version_maps_to_its_address_family():
    assert netlink.family_of(4) == socket.AF_INET == 2
    assert netlink.family_of(6) == socket.AF_INET6 == 10
    assert netlink.FAMILIES == (socket.AF_INET, socket.AF_INET6)


def test_route_and_neighbour_constants_match_linux_headers():
    assert netlink.RT_TABLE_MAIN == 254
    assert netlink.SCOPE_LINK == 253
    assert netlink.RTPROT_KERNEL == 2
    assert netlink.RTN_UNICAST == 1
    assert netlink.NUD_PERMANENT == 0x80


def test_a_default_route_reads_as_the_any_address_of_its_family():
    assert netlink._any_address(socket.AF_INET) == "0.0.0.0"
    assert netlink._any_address(socket.AF_INET6) == "::"
