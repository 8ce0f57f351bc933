"""The firewall rules each plug-in kind wants for one attachment
(cni_backend/net/firewall.py, flatnet's metadata link, flat_fastpath), exactly
as they go into iptables-restore, ebtables or nft: the bridge plug-in's,
flat's (inbound open, metadata link, fast path), VXLAN's (inbound from its
subnet), portmap's and macspoofchk's.
Pure: no rule here reaches a kernel."""

import ipaddress

import pytest

from cni_backend import flatnet
from cni_backend.net import container_guard, firewall, flat_fastpath, iptables, tags

BRIDGE = tags.of(tags.BRIDGE, "web", "c1", "eth0")
PORTS = tags.of(tags.PORTMAP, "web", "c1", "eth0")
SPOOF = tags.of(tags.SPOOF, "web", "c1", "eth0")
FLAT = tags.of(tags.BRIDGE, "lan", "c1", "eth0")  # flat runs the bridge plug-in's code and tags


def fwd(spec, tag=BRIDGE):
    return f"-A RANCHER-CNI-FORWARD {spec} -m comment --comment {tag}"


# -- rancher-bridge ------------------------------------------------------------

def test_bridge_lets_the_container_out_replies_and_published_ports_in_and_masquerades():
    assert firewall.bridge_rules(BRIDGE, "rb-web", ["10.1.0.5/24"], masquerade=True) == {4: {
        "filter": [
            fwd("-s 10.1.0.5/32 -i rb-web") + " -j ACCEPT",
            "-A RANCHER-CNI-FORWARD -d 10.1.0.5/32 -o rb-web -m conntrack --ctstate RELATED,ESTABLISHED,DNAT "
            f"-m comment --comment {BRIDGE} -j ACCEPT",
        ],
        "nat": [
            f"-A RANCHER-CNI-MASQ -s 10.1.0.5/32 -d 10.1.0.0/24 -m comment --comment {BRIDGE} -j RETURN",
            f"-A RANCHER-CNI-MASQ -s 10.1.0.5/32 ! -d 224.0.0.0/4 -m comment --comment {BRIDGE} -j MASQUERADE",
        ],
    }}


def test_bridge_without_ip_masq_has_no_nat_rules():
    rules = firewall.bridge_rules(BRIDGE, "rb-web", ["10.1.0.5/24"], masquerade=False)
    assert rules[4]["nat"] == [] and len(rules[4]["filter"]) == 2


def test_a_dual_stack_container_gets_rules_per_family_with_host_prefixes():
    rules = firewall.bridge_rules(BRIDGE, "rb-web", ["10.1.0.5/24", "fd00:1::5/64"], masquerade=True)
    assert sorted(rules) == [4, 6]
    assert rules[6] == {
        "filter": [
            fwd("-s fd00:1::5/128 -i rb-web") + " -j ACCEPT",
            "-A RANCHER-CNI-FORWARD -d fd00:1::5/128 -o rb-web -m conntrack --ctstate RELATED,ESTABLISHED,DNAT "
            f"-m comment --comment {BRIDGE} -j ACCEPT",
        ],
        "nat": [
            f"-A RANCHER-CNI-MASQ -s fd00:1::5/128 -d fd00:1::/64 -m comment --comment {BRIDGE} -j RETURN",
            f"-A RANCHER-CNI-MASQ -s fd00:1::5/128 ! -d ff00::/8 -m comment --comment {BRIDGE} -j MASQUERADE",
        ],
    }
    assert all("fd00" not in rule for table in rules[4].values() for rule in table)


def test_no_addresses_no_rules():
    assert firewall.bridge_rules(BRIDGE, "rb-web", [], masquerade=True) == {}
    assert firewall.port_rules(PORTS, [{"hostPort": 80, "containerPort": 80, "protocol": "tcp"}], [], snat=True) == {}
    assert firewall.port_rules(PORTS, [], ["10.1.0.5/24"], snat=True) == {}


# -- rancher-flat: anyone may connect in; the metadata link --------------------

def test_flat_accepts_new_inbound_connections_and_keeps_the_container_off_the_metadata_bridge():
    rules = firewall.bridge_rules(FLAT, "rf-lan", ["192.168.50.10/24"], masquerade=False, forbidden=("docker0",),
                                  open_inbound=True, metadata=("docker0", "169.254.169.250"))
    assert rules == {4: {"filter": [
        fwd("-s 192.168.50.10/32 -i rf-lan -o docker0", FLAT) + " -j DROP",  # first: before the ACCEPT
        fwd("-s 192.168.50.10/32 -i rf-lan", FLAT) + " -j ACCEPT",
        fwd("-d 192.168.50.10/32 -o rf-lan", FLAT) + " -j ACCEPT",           # no conntrack: open inbound
        fwd("-s 192.168.50.10/32 -d 169.254.169.250/32 -i docker0 -o docker0", FLAT) + " -j ACCEPT",
        fwd("-s 169.254.169.250/32 -d 192.168.50.10/32 -i docker0 -o docker0", FLAT) + " -j ACCEPT",
    ], "nat": []}}


def test_flats_metadata_rules_are_ipv4_only():
    rules = firewall.bridge_rules(FLAT, "rf-lan", ["192.168.50.10/24", "fd00:50::10/64"], masquerade=False,
                                  forbidden=("docker0",), open_inbound=True, metadata=("docker0", "169.254.169.250"))
    assert rules[6]["filter"] == [
        fwd("-s fd00:50::10/128 -i rf-lan -o docker0", FLAT) + " -j DROP",
        fwd("-s fd00:50::10/128 -i rf-lan", FLAT) + " -j ACCEPT",
        fwd("-d fd00:50::10/128 -o rf-lan", FLAT) + " -j ACCEPT",
    ]


def test_the_planner_reads_flats_bridge_as_a_lan_and_the_metadata_bridge_as_not_ours():
    """The isolation rules follow from these rules' shapes (iptables._isolated_bridges):
    flat's open inbound ACCEPT makes its bridge a LAN (the host's uplink), the
    metadata rules' -i docker0 -o docker0 make docker0 nothing; the bridge
    plug-in's (internal too) and VXLAN's bridges are isolated container bridges."""
    cidrs = ["192.168.50.10/24", "fd00:50::10/64"]
    flat = firewall.bridge_rules(FLAT, "rf-lan", cidrs, False, ("docker0",), True, ("docker0", "169.254.169.250"))
    bridge = firewall.bridge_rules(BRIDGE, "rb-web", cidrs, masquerade=True)
    vxlan = firewall.bridge_rules(BRIDGE, "rv-web", cidrs, masquerade=True, open_inbound="subnet")
    internal = firewall.bridge_rules(BRIDGE, "rb-int", cidrs, masquerade=False, internal=True)
    for family in (4, 6):
        assert iptables._isolated_bridges(internal[family]["filter"]) == {"rb-int": False}
        assert iptables._isolated_bridges(flat[family]["filter"]) == {"rf-lan": True}
        assert iptables._isolated_bridges(bridge[family]["filter"]) == {"rb-web": False}
        assert iptables._isolated_bridges(vxlan[family]["filter"]) == {"rv-web": False}


def _flat(metadata):
    return flatnet.FlatNetwork(bridge="rf-lan", parent="eth1", vlan=0, mtu=None, subnets=("192.168.50.0/24",),
                               metadata=metadata, state_dir="/tmp/unused")


def test_flats_metadata_link_passes_only_metadata_traffic():
    flat = _flat(flatnet.Metadata(ip="169.254.169.250", link_ip="192.168.50.2", bridge="docker0"))
    into, out = f"RFLAT-{flat.suffix}-IN", f"RFLAT-{flat.suffix}-OUT"
    cni_end = flat.link_names[0]
    assert flatnet._ebtables_rules(flat, "eth1") == [
        ("filter", into, "-p IPv4 --ip-src 169.254.169.250 -j RETURN"),
        ("filter", into, "-p ARP --arp-op Reply --arp-ip-src 192.168.50.2 -j RETURN"),
        ("filter", into, "-j DROP"),
        ("filter", out, "-p IPv4 --ip-dst 169.254.169.250 -j RETURN"),
        ("filter", out, "-p ARP --arp-op Request --arp-ip-dst 192.168.50.2 -j RETURN"),
        ("filter", out, "-j DROP"),
        ("filter", "FORWARD", f"-i {cni_end} -j {into}"),
        ("filter", "INPUT", f"-i {cni_end} -j {into}"),
        ("filter", "FORWARD", f"-o {cni_end} -j {out}"),
        ("filter", "OUTPUT", f"-o {cni_end} -j {out}"),
        ("nat", "POSTROUTING", "-o eth1 -p ARP --arp-op Request --arp-ip-dst 192.168.50.2 -j DROP"),
    ]


def test_flat_without_a_metadata_link_has_no_ebtables_rules():
    assert flatnet._ebtables_rules(_flat(None), "eth1") == []


def test_flats_fast_path_takes_only_anti_spoofed_unicast_ip_and_never_metadata_traffic():
    out = "ether daddr != @local meta pkttype other counter goto out"
    mac = "02:42:c0:a8:32:0a"
    cidrs = ["192.168.50.10/24", "192.168.50.11/24", "fd00:50::10/64"]
    assert flat_fastpath.attachment_rules(mac, cidrs, "169.254.169.250") == container_guard.rules(mac, cidrs) + [
        f"ether saddr {mac} ether type ip ip saddr {{ 192.168.50.10, 192.168.50.11 }} ip daddr != 169.254.169.250 {out}",
        f"ether saddr {mac} ether type ip6 ip6 saddr {{ fd00:50::10 }} {out}",
    ]
    assert flat_fastpath.attachment_rules(mac, ["192.168.50.10/24"], None) == container_guard.rules(
        mac, ["192.168.50.10/24"]) + [f"ether saddr {mac} ether type ip ip saddr {{ 192.168.50.10 }} {out}"]
    assert flat_fastpath.attachment_rules(mac, [], None) == []


# -- rancher-vxlan: the subnet's containers on other hosts may connect in --------

def test_vxlan_accepts_new_connections_from_its_own_subnet_only():
    rules = firewall.bridge_rules(BRIDGE, "rv-web", ["10.3.0.5/24"], masquerade=True, open_inbound="subnet")
    # the subnet's ACCEPT stands before the ctstate one: the tunnel's (VTEP's)
    # packets stop at plain address matches, without the conntrack match
    assert rules[4]["filter"] == [
        fwd("-s 10.3.0.5/32 -i rv-web") + " -j ACCEPT",
        fwd("-s 10.3.0.0/24 -d 10.3.0.5/32 -o rv-web") + " -j ACCEPT",
        "-A RANCHER-CNI-FORWARD -d 10.3.0.5/32 -o rv-web -m conntrack --ctstate RELATED,ESTABLISHED,DNAT "
        f"-m comment --comment {BRIDGE} -j ACCEPT",
    ]
    # with a chained firewall the ctstate rule RETURNs: it stays ahead, so the
    # firewall still decides on those packets, as before the reordering
    chained = firewall.bridge_rules(BRIDGE, "rv-web", ["10.3.0.5/24"], masquerade=True, open_inbound="subnet",
                                    firewall_chained=True)[4]["filter"]
    assert [r.rsplit(" -j ", 1)[1] for r in chained[-3:]] == ["RETURN", "ACCEPT", "ACCEPT"]
    assert "--ctstate RELATED,ESTABLISHED " in chained[-3] and "--ctstate DNAT " in chained[-2]
    assert "-s 10.3.0.0/24" in chained[-1]


# -- rancher-portmap -------------------------------------------------------------

def test_a_published_port_is_dnat_plus_forward_plus_hairpin_and_loopback_snat():
    mapping = {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}
    note = f"-m comment --comment {PORTS}"
    assert firewall.port_rules(PORTS, [mapping], ["10.1.0.5/24"], snat=True) == {4: {
        "nat": [
            f"-A RANCHER-CNI-HOSTPORT -p tcp -m tcp --dport 8080 {note} -j DNAT --to-destination 10.1.0.5:80",
            f"-A RANCHER-CNI-MASQ -s 127.0.0.0/8 -d 10.1.0.5/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT "
            f"{note} -j MASQUERADE",
            f"-A RANCHER-CNI-MASQ -s 10.1.0.0/24 -d 10.1.0.5/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT "
            f"{note} -j MASQUERADE",
        ],
        "filter": [
            f"-A RANCHER-CNI-FORWARD -d 10.1.0.5/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT {note} -j ACCEPT",
        ],
    }}


def test_ipv6_ports_use_bracketed_targets_and_no_loopback_snat():
    mapping = {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}
    rules = firewall.port_rules(PORTS, [mapping], ["fd00:1::5/64"], snat=True)[6]
    note = f"-m comment --comment {PORTS}"
    assert rules["nat"] == [
        f"-A RANCHER-CNI-HOSTPORT -p udp -m udp --dport 5353 {note} -j DNAT --to-destination [fd00:1::5]:53",
        f"-A RANCHER-CNI-MASQ -s fd00:1::/64 -d fd00:1::5/128 -p udp -m udp --dport 53 -m conntrack --ctstate DNAT "
        f"{note} -j MASQUERADE",
    ]


def test_a_host_ip_binds_the_dnat_and_only_in_its_family():
    mapping = {"hostPort": 8443, "containerPort": 443, "protocol": "tcp", "hostIP": "192.0.2.7"}
    rules = firewall.port_rules(PORTS, [mapping], ["10.1.0.5/24", "fd00:1::5/64"], snat=False)
    assert sorted(rules) == [4]
    assert rules[4]["nat"] == [f"-A RANCHER-CNI-HOSTPORT -d 192.0.2.7/32 -p tcp -m tcp --dport 8443 "
                               f"-m comment --comment {PORTS} -j DNAT --to-destination 10.1.0.5:443"]


# -- every iptables rule fits the planner and GC by kind ------------------------

def _all_kinds():
    mapping = {"hostPort": 8080, "containerPort": 80, "protocol": "sctp"}
    cidrs = ["10.1.0.5/24", "fd00:1::5/64"]
    yield tags.BRIDGE, firewall.bridge_rules(BRIDGE, "rb-web", cidrs, masquerade=True)
    yield tags.BRIDGE, firewall.bridge_rules(FLAT, "rf-lan", cidrs, False, ("docker0",), True, ("docker0", "169.254.169.250"))
    yield tags.BRIDGE, firewall.bridge_rules(BRIDGE, "rv-web", cidrs, masquerade=True, open_inbound="subnet")
    yield tags.PORTMAP, firewall.port_rules(PORTS, [mapping], cidrs, snat=True)


@pytest.mark.parametrize("kind, per_family", list(_all_kinds()), ids=["bridge", "flat", "vxlan", "portmap"])
def test_every_rule_is_appended_to_one_of_our_chains_with_its_kinds_tag(kind, per_family):
    for tables in per_family.values():
        for table, rules in tables.items():
            for rule in rules:
                action, chain = rule.split()[:2]
                assert action == "-A" and chain in iptables.CHAINS[table], rule
                assert tags.parse(iptables.comment_of(rule)).kinds == {kind}, rule


# -- macspoofchk (nft bridge family) ---------------------------------------------

def test_macspoofchk_counts_then_checks_the_mac():
    note = f'comment "{SPOOF}"'
    assert firewall.mac_filter_rules(SPOOF, "02:42:0a:01:00:05") == [
        f"counter {note}", f"ether saddr != 02:42:0a:01:00:05 drop {note}"]


def test_macspoofchk_with_addresses_checks_ip_arp_and_ipv6_but_link_local_and_unspecified():
    note = f'comment "{SPOOF}"'
    mac = "02:42:0a:01:00:05"
    assert firewall.mac_filter_rules(SPOOF, mac, ["10.1.0.5/24", "fd00:1::5/64"]) == [
        f"counter {note}",
        f"ether saddr != {mac} drop {note}",
        *container_guard.rules(mac, ["10.1.0.5/24", "fd00:1::5/64"], note),  # with the IPv6 source check
        f"ether type ip ip saddr != {{ 10.1.0.5 }} drop {note}",
        f"ether type arp arp saddr ip != {{ 10.1.0.5 }} drop {note}",
        f"ether type arp arp saddr ether != {mac} drop {note}",
    ]


def test_a_flat_container_may_not_tag_redirect_advertise_a_router_or_another_address():
    mac = "02:42:0a:01:00:05"  # its link-local: fe80::42:aff:fe01:5 (modified EUI-64)
    assert container_guard.link_local(mac) == ipaddress.IPv6Address("fe80::42:aff:fe01:5")
    assert container_guard.rules(mac, ["10.1.0.5/24", "fd00:1::5/64"], "NOTE") == [
        "ether type { 0x8100, 0x88a8, 0x9100 } drop NOTE",
        "icmp type redirect drop NOTE",
        "icmpv6 type { nd-router-advert, nd-redirect } drop NOTE",
        "icmpv6 type nd-neighbor-advert @th,64,128 != { 0xfd000001000000000000000000000005, "
        "0xfe8000000000000000420afffe010005 } drop NOTE",
        "ether type ip6 ip6 saddr != { fd00:1::5, fe80::/10, :: } drop NOTE",
        "ether type ip6 frag nexthdr != { tcp, udp, sctp, esp } drop NOTE",
    ]
    # IPv4 only: the advert's target can only be its link-local address, IPv6 sources only link-local ones
    assert container_guard.rules(mac, ["10.1.0.5/24"])[3:5] == [
        "icmpv6 type nd-neighbor-advert @th,64,128 != { 0xfe8000000000000000420afffe010005 } drop",
        "ether type ip6 ip6 saddr != { fe80::/10, :: } drop"]
