"""Per-interface sysctl paths: only a real interface name gets through."""

import pytest

from cni_backend.net import sysctls


@pytest.mark.parametrize("name", ["all", "default", "..", ".", "a/b", "../ipv4", "eth0\n", "x y", "", "a" * 16])
def test_a_name_that_points_elsewhere_is_refused(name):
    with pytest.raises(ValueError):
        sysctls.interface_path("ipv4", name, "arp_ignore")


@pytest.mark.parametrize("name", ["eth0", "eth1.100", "rflat0", "veth-cni-abc123"])
def test_interface_names_make_their_path(name):
    assert sysctls.interface_path("ipv4", name, "arp_ignore") == f"net/ipv4/conf/{name}/arp_ignore"
