"""The IPsec guard's rules (net/ipsec_guard): what they accept and drop, in
which order, and that a set an earlier version made is seen as different."""

from cni_backend.net import ipsec_guard, tags

NOTE = f"-m comment --comment {tags.for_ipsec()}"


def test_each_peer_reaches_nat_t_then_ike_and_everyone_else_is_dropped_after():
    assert ipsec_guard.rules(["10.0.0.3", "10.0.0.2"]) == [
        f"-A INPUT -s 10.0.0.2/32 -p udp -m udp --dport 4500 {NOTE} -j ACCEPT",
        f"-A INPUT -s 10.0.0.2/32 -p udp -m udp --dport 500 {NOTE} -j ACCEPT",
        f"-A INPUT -s 10.0.0.3/32 -p udp -m udp --dport 4500 {NOTE} -j ACCEPT",
        f"-A INPUT -s 10.0.0.3/32 -p udp -m udp --dport 500 {NOTE} -j ACCEPT",
        f"-A INPUT -p udp -m udp --dport 4500 {NOTE} -j DROP",
        f"-A INPUT -p udp -m udp --dport 500 {NOTE} -j DROP",
    ]
    assert ipsec_guard.rules([]) == [f"-A INPUT -p udp -m udp --dport {p} {NOTE} -j DROP" for p in (4500, 500)]


def test_no_rule_needs_an_xt_compat_match_but_the_comment():
    # multiport is an xt compat match in iptables-nft, run on every ESP-in-UDP packet
    assert not any("multiport" in rule or "conntrack" in rule for rule in ipsec_guard.rules(["10.0.0.2"]))


def test_the_multiport_set_of_an_earlier_version_is_replaced_not_kept():
    old = [f"-A INPUT -s 10.0.0.2/32 -p udp -m multiport --dports 500,4500 {NOTE} -j ACCEPT",
           f"-A INPUT -p udp -m multiport --dports 500,4500 {NOTE} -j DROP"]
    assert ipsec_guard._shape(old) != ipsec_guard._shape(ipsec_guard.rules(["10.0.0.2"]))
    assert {s for s, _, t in ipsec_guard._shape(old) if s and t == "ACCEPT"} == {"10.0.0.2"}
