"""The flat network's uplink name, built in one place (netlink.vlan_name)."""

from cni_backend import flatnet


def flat(parent, vlan):
    return flatnet.FlatNetwork(bridge="rflat0", parent=parent, vlan=vlan, mtu=None, subnets=(), metadata=None,
                               state_dir="/nonexistent")


def test_the_uplink_is_the_parent_without_a_vlan():
    assert flat("eth9", 0).uplink == "eth9"


def test_a_vlan_uplink_cuts_the_parent_so_the_name_fits_ifnamsiz():
    assert flat("eth9", 100).uplink == "eth9.100"
    assert flat("enp0s31f6long", 4094).uplink == "enp0s31f6l.4094"
    assert len(flat("enp0s31f6long", 4094).uplink) <= 15
