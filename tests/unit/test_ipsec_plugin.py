"""rancher-ipsec's config: what load_network refuses before anything is made,
and the containers' MTU inside ESP in UDP."""

import pytest

from cni_backend import ipsecnet
from cni_backend.errors import CNIError, INVALID_CONFIG
from cni_backend.plugins import PLUGINS, ipsec


def config(**override) -> dict:
    conf = {"cniVersion": "1.0.0", "name": "secure", "type": "rancher-ipsec", "peers": ["10.99.9.2"],
            "pskFile": "/etc/rancher-cni/ipsec.psk", "stateDir": "/var/lib/rancher-cni",
            "ipam": {"type": "rancher-ipam", "ranges": [[{"subnet": "10.43.0.0/16", "gateway": "10.43.1.1",
                                                          "rangeStart": "10.43.1.2", "rangeEnd": "10.43.1.254"}]]}}
    conf.update(override)
    return conf


def refused(conf: dict) -> str:
    with pytest.raises(CNIError) as e:
        ipsec.load_network(conf)
    assert e.value.code == INVALID_CONFIG
    return e.value.msg


def test_a_valid_config_gives_the_block_and_the_gateway():
    net = ipsec.load_network(config())
    assert (net.subnet, net.local_block, net.gateway) == ("10.43.0.0/16", "10.43.1.0/24", "10.43.1.1/16")
    assert net.peers == ("10.99.9.2",) and net.bridge.startswith("ipsbr-") and len(net.bridge) <= 15
    assert net.connection("10.99.9.2").startswith("n") and len(net.connection("10.99.9.2")) <= 32


@pytest.mark.parametrize("peers, words", [
    ("10.99.9.2", "must be a list"),
    (["10.99.9.2", "10.99.9.2"], "twice"),
    (["10.99.9.300"], "not an IPv4 address"),
    (["fd00::1"], "not an IPv4 address"),
    (["224.0.0.1"], "not a unicast"),
    (["127.0.0.1"], "not a unicast"),
    (["10.99.9.2 -j ACCEPT"], "not an IPv4 address"),
])
def test_bad_peers_are_refused(peers, words):
    assert words in refused(config(peers=peers))


def test_the_own_underlay_address_is_no_peer():
    assert "own underlay" in refused(config(underlay="10.99.9.2"))


@pytest.mark.parametrize("psk", [None, "ipsec.psk", "../ipsec.psk", "/etc/a b", "/etc/../shadow", "/etc/x\n"])
def test_the_psk_file_must_be_a_plain_absolute_path(psk):
    assert "psk" in refused(config(pskFile=psk)).lower()


@pytest.mark.parametrize("esp", ["aes128gcm16", "aes256gcm16-modp2048", "chacha20poly1305", "aes128ccm16"])
def test_aead_is_refused_on_the_user_space_data_path(esp):
    assert "AEAD" in refused(config(espProposal=esp))


def test_a_proposal_cannot_carry_other_text():
    assert "not valid" in refused(config(ikeProposal="aes128-sha256-modp2048\n}"))


@pytest.mark.parametrize("ipam, words", [
    (None, "needs an 'ipam' section"),
    ({"type": "rancher-ipam", "subnet": "10.43.0.0/16"}, "rangeStart and rangeEnd"),
    ({"type": "rancher-ipam", "ranges": [[{"subnet": "10.43.0.0/16", "rangeStart": "10.43.1.2",
                                           "rangeEnd": "10.43.1.254"}]]}, "gateway"),
    ({"type": "rancher-ipam", "ranges": [[{"subnet": "10.43.0.0/16", "gateway": "10.43.0.1",
                                           "rangeStart": "10.43.0.2", "rangeEnd": "10.43.255.254"}]]},
     "smaller than it"),
    ({"type": "rancher-ipam", "ranges": [[{"subnet": "10.43.0.0/16", "gateway": "10.43.1.1",
                                           "rangeStart": "10.43.1.2", "rangeEnd": "10.43.1.254"}],
                                         [{"subnet": "10.44.0.0/16"}]]}, "exactly one IPv4 range"),
])
def test_ipam_must_give_this_hosts_block(ipam, words):
    assert words in refused(config(ipam=ipam))


def test_bad_state_dir_and_bridge_are_refused():
    assert "stateDir" in refused(config(stateDir="/var/lib/x y"))
    with pytest.raises(CNIError):
        ipsec.load_network(config(bridge="br/../x"))


def test_block_is_the_smallest_network_holding_the_range():
    assert ipsecnet.block_of("10.43.1.2", "10.43.1.254") == "10.43.1.0/24"
    assert ipsecnet.block_of("10.43.2.0", "10.43.3.255") == "10.43.2.0/23"
    assert ipsecnet.block_of("10.43.1.65", "10.43.1.126") == "10.43.1.64/26"


@pytest.mark.parametrize("underlay, esp, mtu", [
    (1500, "aes128-sha256", 1422),   # 20+8+8+16 + roundup(1422+2, 16)=1424 + 16 = 1492 <= 1500
    (1500, "aes256-sha1", 1422),     # ICV 12: 52 + 1424 + 12 = 1488; one block more is 1504
    (9000, "aes128-sha256", 8926),   # 52 + 8928 + 16 = 8996
    (1500, "aes128-whirlpool", 1406),  # unknown integrity: the largest ICV (32)
])
def test_container_mtu_fits_esp_in_udp(underlay, esp, mtu):
    got = ipsecnet.container_mtu(underlay, esp)
    icv = 12 if "sha1" in esp else 16 if "sha256" in esp else 32
    outer = lambda inner: 20 + 8 + 8 + 16 + -(-(inner + 2) // 16) * 16 + icv  # noqa: E731
    assert outer(got) <= underlay < outer(got + 1), "the largest inner size that fits"
    assert got == mtu


def test_the_executable_is_registered():
    assert PLUGINS["rancher-ipsec"] == "cni_backend.plugins.ipsec"
    from cni_backend import front
    assert callable(front.ipsec_main)
    assert "rancher-ipsec = cni_backend.front:ipsec_main" in open("setup.cfg").read()


def test_retries_of_a_refused_connection_come_soon_then_less_often():
    """A peer that had not loaded our connection yet is tried again after
    FIRST_RETRY seconds; one with another key every RETRY_INTERVAL at last."""
    now, delay, waits = 0.0, ipsecnet.FIRST_RETRY, []
    for _ in range(7):
        due, delay = ipsecnet.next_retry(now, delay)
        waits.append(due - now)
        now = due
    assert waits == [4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]
