"""Why -o tuning.* offers link attributes and refuses sysctls (options.TUNING,
refuse_tuning_sysctl): our ADD runs in a staging namespace and Docker moves
the interface into the container afterwards. The kernel keeps an interface's
MTU and flags across that move and resets its per-interface sysctls."""

import pytest

from tests.conftest import ns_exec, run

pytestmark = pytest.mark.netns


def test_a_move_to_another_namespace_keeps_mtu_and_flags_and_resets_the_interfaces_sysctls(make_netns):
    staging, container = make_netns(), make_netns()
    run("ip", "-n", staging, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    ns_exec(staging, "ip", "link", "set", "eth0", "mtu", "1300", "promisc", "on", "allmulticast", "on")
    ns_exec(staging, "sysctl", "-w", "net.ipv4.conf.eth0.arp_ignore=2")
    assert ns_exec(staging, "cat", "/proc/sys/net/ipv4/conf/eth0/arp_ignore").stdout.strip() == "2"

    run("ip", "-n", staging, "link", "set", "eth0", "netns", container)
    link = ns_exec(container, "ip", "-o", "link", "show", "eth0").stdout
    assert " mtu 1300 " in link and "PROMISC" in link and "ALLMULTI" in link, link
    assert ns_exec(container, "cat", "/proc/sys/net/ipv4/conf/eth0/arp_ignore").stdout.strip() == "0", \
        "the interface's own sysctl came back at its default"
