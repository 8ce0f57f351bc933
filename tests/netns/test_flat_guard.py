"""What a flat network's container may not put on the business LAN, sent as
crafted frames from the container's namespace and watched for on the router's
side of the uplink: tagged frames (spoofing inside a tag, VLAN hopping),
redirects, router advertisements, neighbour advertisements for an address
that is not the container's. Legitimate frames of the same kinds still
arrive. Both ways out are tried: the fast path and the bridge."""

import ipaddress
import json

import pytest

from cni_backend import flatnet
from cni_backend.plugins.flat import load_network
from cni_backend.net import container_guard, firewall, tags
from tests.conftest import ns_exec, ping, run
from tests.netns.test_flat import ROUTER, flat_config, rig  # noqa: F401 - rig is a fixture
from tests.packets import (arp_reply, capture, carrying, ethernet, icmp, icmpv6, ipv4, ipv6, ipv6_fragment, ipv6_icmp,
                           send)

pytestmark = pytest.mark.netns

SUBNET6, ROUTER6 = "fd00:77::/64", "fd00:77::1"
SPOOFED = "192.168.77.140"
ALL_NODES, ALL_NODES_MAC, BROADCAST = "ff02::1", "33:33:00:00:00:01", "ff:ff:ff:ff:ff:ff"
IPV4, ARP, IPV6, DOT1Q, DOT1AD = 0x0800, 0x0806, 0x86DD, 0x8100, 0x88A8


def marker(n: int) -> bytes:
    return b"rcni" + n.to_bytes(2, "big")


def nd_marker(n: int) -> bytes:
    """An ND option of type 253 (RFC 4727's experiment type) holding the marker."""
    return bytes([253, 1]) + marker(n)


def echo(src: str, n: int) -> bytes:
    return ipv4(src, ROUTER, 1, icmp(8, 0, b"\0\1\0\1" + marker(n)))


def advert(src: str, dst: str, target: str, mac: str, n: int) -> bytes:
    """A neighbour advertisement (override set), with the target link-layer address option."""
    body = b"\x20\0\0\0" + ipaddress.IPv6Address(target).packed + bytes([2, 1]) + bytes.fromhex(mac.replace(":", ""))
    return ipv6_icmp(src, dst, 136, 0, body + nd_marker(n))


def router_advert(src: str, dst: str, mac: str, n: int) -> bytes:
    body = b"\x40\0\x07\x08" + bytes(8) + bytes([1, 1]) + bytes.fromhex(mac.replace(":", ""))  # lifetime 1800 s
    return ipv6_icmp(src, dst, 134, 0, body + nd_marker(n))


def redirect6(src: str, mac: str, n: int) -> bytes:
    body = bytes(4) + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address("fd00:99::7").packed
    return ipv6_icmp(src, ROUTER6, 137, 0, body + bytes([2, 1]) + bytes.fromhex(mac.replace(":", "")) + nd_marker(n))


def redirect4(src: str, n: int) -> bytes:
    original = ipv4(ROUTER, "198.51.100.7", 1, icmp(8, 0, marker(n)))
    return ipv4(src, ROUTER, 1, icmp(5, 1, ipaddress.IPv4Address(src).packed + original))


def split_router_advert(src: str, mac: str, n: int) -> list:
    """A router advertisement behind a destination-options header that is
    split over two fragments, so the first holds no ICMPv6 header and the
    second no header chain (RFC 7113's RA-guard evasion); the marker is in
    the second."""
    options = bytes([58, 1, 1, 12]) + bytes(12)  # next: ICMPv6; PadN to 16 bytes
    body = b"\x40\0\x07\x08" + bytes(8) + bytes([1, 1]) + bytes.fromhex(mac.replace(":", "")) + nd_marker(n)
    advert_ = icmpv6(src, ALL_NODES, 134, 0, body)
    first = ipv6(src, ALL_NODES, 44, ipv6_fragment(60, 0, True, 0x5EED, options[:8]))
    second = ipv6(src, ALL_NODES, 44, ipv6_fragment(60, 1, False, 0x5EED, options[8:] + advert_))
    return [ethernet(ALL_NODES_MAC, mac, IPV6, first), ethernet(ALL_NODES_MAC, mac, IPV6, second)]


def dual_stack(env, rig, fast_path):  # noqa: F811 - rig is the fixture's value
    config = flat_config(env, rig, fastPath=fast_path)
    config["ipam"]["ranges"].append([{"subnet": SUBNET6, "rangeStart": "fd00:77::100",
                                      "rangeEnd": "fd00:77::150", "gateway": ROUTER6}])
    return config


def attached(env, make_netns, rig, fast_path) -> dict:  # noqa: F811 - rig is the fixture's value
    """A dual-stack flat network with one container, and the addresses the frames need."""
    config = dual_stack(env, rig, fast_path)
    flat = load_network(config)
    a = make_netns()
    code, result = env.exec("ADD", config, a, container_id="ca")
    assert code == 0, result
    if fast_path and not flatnet.fast_path_usable(flat):
        pytest.skip("this kernel has no nft netdev fwd: the fast path is not used")
    mac = next(i["mac"] for i in result["interfaces"] if i.get("sandbox"))
    own4 = next(ip["address"].split("/")[0] for ip in result["ips"] if "." in ip["address"])
    own6 = next(ip["address"].split("/")[0] for ip in result["ips"] if ":" in ip["address"])
    listing = json.loads(ns_exec(a, "ip", "-j", "-6", "addr", "show", "dev", "eth0", "scope", "link").stdout)
    link_local = next(address["local"] for address in listing[0]["addr_info"] if "local" in address)
    router_mac = json.loads(ns_exec(rig["router"], "ip", "-j", "link", "show", "sw").stdout)[0]["address"]
    return {"env": env, "config": config, "flat": flat, "netns": a, "result": result, "mac": mac, "own4": own4,
            "own6": own6, "link_local": link_local, "router_mac": router_mac}


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "bridge-path"])
def test_tagged_frames_redirects_router_adverts_and_foreign_neighbour_adverts_never_leave(
        cni_daemon_env, make_netns, rig, fast_path):  # noqa: F811
    c = attached(cni_daemon_env, make_netns, rig, fast_path)
    env, config, flat, a, result = c["env"], c["config"], c["flat"], c["netns"], c["result"]
    mac, own4, own6, link_local, router_mac = c["mac"], c["own4"], c["own6"], c["link_local"], c["router_mac"]
    assert ping(a, ROUTER)  # the bridge and the router know each other

    forbidden = {
        "802.1Q frame, spoofed source IP": ethernet(router_mac, mac, IPV4, echo(SPOOFED, 1), tags=[(DOT1Q, 5)]),
        "802.1Q frame, own source IP (VLAN hopping)": ethernet(router_mac, mac, IPV4, echo(own4, 2),
                                                               tags=[(DOT1Q, 5)]),
        "802.1ad + 802.1Q frame, spoofed source IP": ethernet(router_mac, mac, IPV4, echo(SPOOFED, 3),
                                                              tags=[(DOT1AD, 5), (DOT1Q, 6)]),
        "802.1Q ARP reply claiming the router's IP": ethernet(BROADCAST, mac, ARP,
                                                              arp_reply(mac, ROUTER, BROADCAST, ROUTER) + marker(4),
                                                              tags=[(DOT1Q, 5)]),
        "ICMPv4 redirect": ethernet(router_mac, mac, IPV4, redirect4(own4, 5)),
        "router advertisement to all nodes": ethernet(ALL_NODES_MAC, mac, IPV6,
                                                      router_advert(link_local, ALL_NODES, mac, 6)),
        "router advertisement to the router": ethernet(router_mac, mac, IPV6,
                                                       router_advert(link_local, ROUTER6, mac, 7)),
        "ICMPv6 redirect": ethernet(router_mac, mac, IPV6, redirect6(link_local, mac, 8)),
        "neighbour advert for the router's address, unicast": ethernet(
            router_mac, mac, IPV6, advert(own6, ROUTER6, ROUTER6, mac, 9)),
        "neighbour advert for the router's address, to all nodes": ethernet(
            ALL_NODES_MAC, mac, IPV6, advert(link_local, ALL_NODES, ROUTER6, mac, 10)),
        "neighbour advert for another link-local address": ethernet(
            ALL_NODES_MAC, mac, IPV6, advert(link_local, ALL_NODES, "fe80::1", mac, 11)),
    }
    allowed = {
        "ping from its own address": ethernet(router_mac, mac, IPV4, echo(own4, 101)),
        "neighbour advert for its own address, unicast": ethernet(router_mac, mac, IPV6,
                                                                  advert(own6, ROUTER6, own6, mac, 102)),
        "neighbour advert for its link-local address, to all nodes": ethernet(
            ALL_NODES_MAC, mac, IPV6, advert(link_local, ALL_NODES, link_local, mac, 103)),
    }
    frames_sent = {**forbidden, **allowed}
    with capture(rig["router"], "wan0", seconds=3) as frames:
        send(a, "eth0", frames_sent.values())
    numbers = {name: 1 + i if i < len(forbidden) else 101 + i - len(forbidden) for i, name in enumerate(frames_sent)}
    arrived = {name for name, n in numbers.items() if carrying(frames, marker(n))}
    assert arrived & set(forbidden) == set(), f"left the host: {sorted(arrived & set(forbidden))}"
    assert arrived >= set(allowed), f"legitimate frames lost: {sorted(set(allowed) - arrived)}"

    assert env.exec("DEL", dict(config, prevResult=result), a, container_id="ca")[0] == 0
    flatnet.remove(flat)


@pytest.fixture
def no_ip6_defrag_in_the_bridge():
    """bridge-nf-call-ip6tables off (a host where Docker never ran): the
    bridge then forwards IPv6 fragments as they come, without reassembling
    them first (reassembly drops a first fragment with a cut header chain)."""
    path = "/proc/sys/net/bridge/bridge-nf-call-ip6tables"
    with open(path) as f:
        before = f.read().strip()
    with open(path, "w") as f:
        f.write("0")
    yield
    with open(path, "w") as f:
        f.write(before)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "bridge-path"])
def test_a_router_advert_split_over_fragments_never_leaves(cni_daemon_env, make_netns, rig, fast_path,  # noqa: F811
                                                           no_ip6_defrag_in_the_bridge):
    c = attached(cni_daemon_env, make_netns, rig, fast_path)
    with capture(rig["router"], "wan0", seconds=3) as frames:
        send(c["netns"], "eth0", split_router_advert(c["link_local"], c["mac"], 12))
        send(c["netns"], "eth0", [ethernet(ALL_NODES_MAC, c["mac"], IPV6,
                                           advert(c["link_local"], ALL_NODES, c["link_local"], c["mac"], 112))])
    assert carrying(frames, marker(112)), "the legitimate advert did not arrive: the test saw nothing"
    assert not carrying(frames, marker(12)), "the second fragment of a router advertisement left the host"
    assert c["env"].exec("DEL", dict(c["config"], prevResult=c["result"]), c["netns"], container_id="ca")[0] == 0
    flatnet.remove(c["flat"])


@pytest.mark.parametrize("damage", ["made-by-the-previous-version", "deleted"])
def test_an_anti_spoofing_chain_without_the_guard_fails_check_and_repair_restores_it(
        cni_daemon_env, make_netns, rig, damage):  # noqa: F811
    """An attachment made before the guard existed (its chain holds only the
    MAC and IP checks), or whose chain was deleted, fails CHECK, which is how
    `cnm-shim doctor` finds it; the repair puts today's chain back."""
    from cni_backend import repair
    env = cni_daemon_env
    config = flat_config(env, rig, fastPath=False)
    a = make_netns()
    code, result = env.exec("ADD", config, a, container_id="ca")
    assert code == 0, result
    mac = next(i["mac"] for i in result["interfaces"] if i.get("sandbox"))
    host = next(i["name"] for i in result["interfaces"] if i["name"].startswith("veth"))
    own4 = result["ips"][0]["address"].split("/")[0]
    tag = tags.of(tags.SPOOF, config["name"], "ca", "eth0")
    if damage == "deleted":
        run("nft", f'delete element bridge rancher_cni ports {{ "{host}" }}')
        run("nft", f"delete chain bridge rancher_cni {tag}")
    else:  # what the previous version wrote: the same chain without the guard's rules
        note = f'comment "{tag}"'
        guard = container_guard.rules(mac, [result["ips"][0]["address"]], note)
        old = [r for r in firewall.mac_filter_rules(tag, mac, [result["ips"][0]["address"]]) if r not in guard]
        run("nft", "-f", "-", input="".join([f"flush chain bridge rancher_cni {tag}\n",
                                              *(f"add rule bridge rancher_cni {tag} {r}\n" for r in old)]))
    code, out = env.exec("CHECK", dict(config, prevResult=result), a, container_id="ca")
    assert code != 0 and "anti-spoofing chain" in out["msg"], out

    plugin = {k: v for k, v in config.items() if k not in ("cniVersion", "name")}
    conflist = {"cniVersion": config["cniVersion"], "name": config["name"], "plugins": [plugin]}
    repair.restore_attachment(conflist, "ca", f"/var/run/netns/{a}", "eth0", [], {}, result)
    assert env.exec("CHECK", dict(config, prevResult=result), a, container_id="ca")[0] == 0
    router_mac = json.loads(ns_exec(rig["router"], "ip", "-j", "link", "show", "sw").stdout)[0]["address"]
    with capture(rig["router"], "wan0", seconds=3) as frames:
        send(a, "eth0", [ethernet(router_mac, mac, IPV4, echo(SPOOFED, 21), tags=[(DOT1Q, 5)]),
                         ethernet(router_mac, mac, IPV4, echo(own4, 121))])
    assert carrying(frames, marker(121)) and not carrying(frames, marker(21))
    assert env.exec("DEL", dict(config, prevResult=result), a, container_id="ca")[0] == 0
    flatnet.remove(load_network(config))
