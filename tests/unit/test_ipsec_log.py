"""What charon's log says about a peer's failed authentication, in our words
(ipsec_tunnels.auth_failures), and the rekey settings' validation. The log
lines are as strongSwan 5.9.8 wrote them in tests/netns (filelog, ike_name)."""

import pytest

from cni_backend import ipsec_tunnels
from cni_backend.errors import CNIError
from cni_backend.plugins import ipsec as ipsec_plugin

RESPONDER = """\
2026-11-30 12:12:12 14[NET] <1> received packet: from 10.99.9.1[500] to 10.99.9.2[500] (462 bytes)
2026-11-30 12:12:12 04[CFG] <1> looking for peer configs matching 10.99.9.2[10.99.9.2]...10.99.9.1[10.99.9.1]
2026-11-30 12:12:12 04[CFG] <peer-8eb312e1571f|1> selected peer config 'peer-8eb312e1571f'
2026-11-30 12:12:12 04[IKE] <peer-8eb312e1571f|1> tried 1 shared key for '10.99.9.2' - '10.99.9.1', but MAC mismatched
2026-11-30 12:12:12 04[ENC] <peer-8eb312e1571f|1> generating IKE_AUTH response 1 [ N(AUTH_FAILED) ]
""".splitlines()
INITIATOR = """\
2026-11-30 12:12:12 10[IKE] <peer-c7b615ab492a|1> authentication of '10.99.9.1' (myself) with pre-shared key
2026-11-30 12:12:12 13[ENC] <peer-c7b615ab492a|1> parsed IKE_AUTH response 1 [ N(AUTH_FAILED) ]
2026-11-30 12:12:12 13[IKE] <peer-c7b615ab492a|1> received AUTHENTICATION_FAILED notify error
""".splitlines()
ESTABLISHED = ("2026-11-30 12:13:00 10[IKE] <peer-c7b615ab492a|2> IKE_SA peer-c7b615ab492a[2] established "
               "between 10.99.9.1[10.99.9.1]...10.99.9.2[10.99.9.2]")


def test_the_answering_side_names_the_peer_whose_key_did_not_match():
    assert ipsec_tunnels.auth_failures(RESPONDER) == {
        "peer-8eb312e1571f": "authentication of '10.99.9.1' with pre-shared key failed (MAC mismatched: "
                             "the hosts' pre-shared keys differ)"}


def test_the_initiating_side_names_the_refusal():
    found = ipsec_tunnels.auth_failures(INITIATOR)
    assert list(found) == ["peer-c7b615ab492a"] and "AUTHENTICATION_FAILED" in found["peer-c7b615ab492a"]


def test_an_ike_sa_established_since_clears_the_failure():
    assert ipsec_tunnels.auth_failures(INITIATOR + [ESTABLISHED]) == {}
    assert list(ipsec_tunnels.auth_failures([ESTABLISHED] + INITIATOR)) == ["peer-c7b615ab492a"]


def test_no_text_of_the_log_passes_through():
    """The reason is made of fixed words and identities that parse as
    addresses: a line with anything else in the identity is not a reason."""
    secret = "s3cr3t-key-material"
    lines = [f"x 04[IKE] <peer-8eb312e1571f|1> tried 1 shared key for '{secret}' - '10.99.9.1', but MAC mismatched",
             f"x 04[IKE] <peer-8eb312e1571f|1> no shared key found for '10.99.9.2' - '{secret}'",
             f"x 04[IKE] <peer-8eb312e1571f|1> {secret} received AUTHENTICATION_FAILED notify {secret}",
             "x 04[IKE] <peer-8eb312e1571f|1> tried 1 shared key for 'beef' - 'cafe', but MAC mismatched"]
    found = ipsec_tunnels.auth_failures(lines)
    assert secret not in repr(found) and "beef" not in repr(found) and list(found) == ["peer-8eb312e1571f"]


def test_unrelated_and_unnamed_lines_are_ignored():
    assert ipsec_tunnels.auth_failures(["garbage", "", RESPONDER[0], RESPONDER[1],
                                        "x 04[IKE] <1> received AUTHENTICATION_FAILED notify error"]) == {}


@pytest.mark.parametrize("value", [0, 4, 2592001, -1, "60", 6.5, True, None])
def test_rekey_times_are_whole_seconds_in_range(value):
    with pytest.raises(CNIError, match="5 to 2592000"):
        ipsec_tunnels.check_rekey(value, "childRekeyTime")


def test_the_plug_in_config_names_the_bad_rekey_setting(tmp_path):
    conf = {"name": "n", "type": "rancher-ipsec", "peers": ["10.99.9.2"], "pskFile": "/etc/psk",
            "childRekeyTime": "1h",
            "ipam": {"ranges": [[{"subnet": "10.43.0.0/16", "gateway": "10.43.1.1", "rangeStart": "10.43.1.2",
                                  "rangeEnd": "10.43.1.254"}]]}}
    with pytest.raises(CNIError, match="childRekeyTime '1h' is not valid"):
        ipsec_plugin.load_network(conf)
    net = ipsec_plugin.load_network(dict(conf, childRekeyTime=600, ikeRekeyTime=7200))
    assert (net.child_rekey, net.ike_rekey) == (600, 7200)
    vici = ipsec_tunnels.Tunnel.from_config(
        name="peer-x", local_address="10.99.9.1", remote_address="10.99.9.2", local_subnets=["10.43.1.0/24"],
        remote_subnets=["10.43.0.0/16"], psk_file="/etc/psk", ike_rekey=7200, child_rekey=600).vici_connection()
    assert vici["peer-x"]["rekey_time"] == "7200s" and vici["peer-x"]["unique"] == "replace"
    child = vici["peer-x"]["children"]["peer-x"]
    assert (child["rekey_time"], child["rand_time"], child["life_time"]) == ("600s", "60s", "660s")
    short = ipsec_tunnels.Tunnel.from_config(
        name="peer-x", local_address="10.99.9.1", remote_address="10.99.9.2", local_subnets=["10.43.1.0/24"],
        remote_subnets=["10.43.0.0/16"], psk_file="/etc/psk", child_rekey=6).vici_connection()
    # kernel-libipsec counts lifetimes in whole seconds: a short SA still lives 10 s past its rekey time
    assert short["peer-x"]["children"]["peer-x"]["life_time"] == "16s"


def test_the_initiator_rekeys_first_and_both_sides_sas_die_together():
    def timers(local, remote):
        vici = ipsec_tunnels.Tunnel.from_config(
            name="peer-x", local_address=local, remote_address=remote, local_subnets=["10.43.1.0/24"],
            remote_subnets=["10.43.0.0/16"], psk_file="/etc/psk", ike_rekey=7200, child_rekey=600).vici_connection()
        ike, child = vici["peer-x"], vici["peer-x"]["children"]["peer-x"]
        return ({key: int(ike[key].rstrip("s")) for key in ("rekey_time", "rand_time", "over_time")},
                {key: int(child[key].rstrip("s")) for key in ("rekey_time", "rand_time", "life_time")})

    (ike_i, child_i), (ike_r, child_r) = timers("10.99.9.1", "10.99.9.2"), timers("10.99.9.2", "10.99.9.1")
    # the responder's earliest rekey comes after the initiator's latest
    assert ike_r["rekey_time"] - ike_r["rand_time"] > ike_i["rekey_time"]
    assert child_r["rekey_time"] - child_r["rand_time"] > child_i["rekey_time"]
    # an SA that nobody rekeyed dies at the same time on both sides
    assert ike_i["rekey_time"] + ike_i["over_time"] == ike_r["rekey_time"] + ike_r["over_time"] == 7200 + 720
    assert child_i["life_time"] == child_r["life_time"] == 660
