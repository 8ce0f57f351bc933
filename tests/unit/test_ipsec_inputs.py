"""What the IPsec tunnel layer refuses before anything reaches charon or a
file: non-unicast peers, paths that could break out of strongswan.conf, keys
others can read, proposals the user-space data path cannot run."""

import os

import pytest

from cni_backend import ipsec_tunnels
from cni_backend.errors import CNIError, INVALID_CONFIG


def write_psk(path, mode=0o600, key=b"0123456789abcdef0123"):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    os.write(fd, key)
    os.close(fd)
    os.chmod(path, mode)
    return str(path)


def tunnel(tmp_path, **override):
    conf = dict(name="net1", local_address="10.99.7.1", remote_address="10.99.7.2",
                local_subnets=["10.77.0.0/26"], remote_subnets=["10.77.0.64/26"],
                psk_file=str(tmp_path / "psk"))
    conf.update(override)
    return ipsec_tunnels.Tunnel.from_config(**conf)


@pytest.mark.parametrize("address", ["224.0.0.5", "0.0.0.0", "127.0.0.1", "255.255.255.255", "::",
                                     "ff02::1", "240.0.0.1", "10.99.7.2\n", "10.99.7.2 }", "host.example"])
def test_a_peer_must_be_a_unicast_ip_address(tmp_path, address):
    with pytest.raises(CNIError) as e:
        tunnel(tmp_path, remote_address=address)
    assert e.value.code == INVALID_CONFIG and "peer address" in e.value.msg


def test_a_peer_cannot_be_this_host(tmp_path):
    with pytest.raises(CNIError, match="own address"):
        tunnel(tmp_path, remote_address="10.99.7.1")


@pytest.mark.parametrize("path", ["relative/psk", "/tmp/a b", "/tmp/x\n}", "/tmp/../etc/shadow",
                                  '/tmp/"q"', "/tmp/{x}", "/tmp//x"])
def test_paths_with_characters_that_could_break_a_config_file_are_refused(tmp_path, path):
    with pytest.raises(CNIError, match="PSK file"):
        tunnel(tmp_path, psk_file=path)
    with pytest.raises(CNIError, match="state directory"):
        ipsec_tunnels.Charon(path)


@pytest.mark.parametrize("name", ["Net1", "net_1", "-net", "a" * 33, "net\n1", "net{"])
def test_connection_names_are_short_lower_case_words(tmp_path, name):
    with pytest.raises(CNIError, match="connection name"):
        tunnel(tmp_path, name=name)


@pytest.mark.parametrize("subnets", ["10.77.0.0/26", [], ["10.77.0.1/26"], ["10.77.0.0/26\n"]])
def test_traffic_selectors_are_subnets_in_cidr_form(tmp_path, subnets):
    with pytest.raises(CNIError, match="local subnets"):
        tunnel(tmp_path, local_subnets=subnets)


def test_libipsec_refuses_aead_esp_proposals_and_says_what_works(tmp_path):
    with pytest.raises(CNIError) as e:
        tunnel(tmp_path, esp_proposal="aes128gcm16-modp2048")
    assert "kernel-libipsec" in e.value.msg and "aes128-sha256" in e.value.msg
    assert tunnel(tmp_path, esp_proposal="aes256-sha256").esp_proposal == "aes256-sha256"
    kernel = ipsec_tunnels.Tunnel.from_config(
        datapath="xfrm", name="net1", local_address="10.99.7.1", remote_address="10.99.7.2",
        local_subnets=["10.77.0.0/26"], remote_subnets=["10.77.0.64/26"], psk_file="/tmp/psk",
        esp_proposal="aes128gcm16")
    assert kernel.esp_proposal == "aes128gcm16"


@pytest.mark.parametrize("proposal", ["aes128-sha256\n", "aes128;sha256", "AES128", "", "aes128--sha256", "a}"])
def test_proposals_are_algorithm_names_joined_by_dashes(tmp_path, proposal):
    with pytest.raises(CNIError, match="IKE proposal"):
        tunnel(tmp_path, ike_proposal=proposal)


def test_the_psk_file_must_be_readable_by_its_owner_only(tmp_path):
    path = write_psk(tmp_path / "psk", mode=0o640, key=b"very-secret-key-material")
    with pytest.raises(CNIError) as e:
        ipsec_tunnels.read_psk(path)
    assert "0600" in e.value.msg and "0640" in e.value.msg
    assert "very-secret" not in e.value.msg + e.value.details
    os.chmod(path, 0o600)
    assert ipsec_tunnels.read_psk(path) == b"very-secret-key-material"


def test_the_psk_file_may_not_be_a_link_or_short(tmp_path):
    target = write_psk(tmp_path / "psk")
    os.symlink(target, tmp_path / "link")
    with pytest.raises(CNIError, match="cannot open"):
        ipsec_tunnels.read_psk(str(tmp_path / "link"))
    short = write_psk(tmp_path / "short", key=b"tooshort\n")
    with pytest.raises(CNIError, match="16 to 4096 bytes"):
        ipsec_tunnels.read_psk(short)


@pytest.mark.parametrize("content", [
    b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
    b"root:$y$j9T$abcdefgh:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",
    b"correct horse battery staple\n",
    b"key-with-a-nul\x00-inside-it",
])
def test_a_file_that_is_not_one_word_of_printable_text_is_not_taken_for_a_key(tmp_path, content):
    """A mistyped -o ipsec.psk_file= naming another root-only secret of the
    host (an SSH key, the password file) must not become a key offered to
    whoever `peers` names; nothing of the content is in the message."""
    path = write_psk(tmp_path / "psk", key=content)
    with pytest.raises(CNIError, match="one line of printable characters") as e:
        ipsec_tunnels.read_psk(path)
    assert content[:12].decode(errors="replace") not in e.value.msg + e.value.details


def test_the_connection_uses_udp_encapsulation_and_the_given_selectors(tmp_path):
    conn = tunnel(tmp_path).vici_connection()["net1"]
    assert conn["encap"] == "yes" and conn["proposals"] == ["aes128-sha256-modp2048"]
    child = conn["children"]["net1"]
    assert child["esp_proposals"] == ["aes128-sha256"]
    assert (child["local_ts"], child["remote_ts"]) == (["10.77.0.0/26"], ["10.77.0.64/26"])
    assert child["start_action"] == "start"  # 10.99.7.1 < 10.99.7.2: this side initiates
    other = tunnel(tmp_path, local_address="10.99.7.2", remote_address="10.99.7.1").vici_connection()["net1"]
    assert other["children"]["net1"]["start_action"] == "none"


def test_strongswan_conf_loads_only_the_measured_plugins():
    conf = ipsec_tunnels.strongswan_conf("/run/rancher-cni/ipsec", "libipsec")
    load = next(line for line in conf.splitlines() if line.strip().startswith("load ="))
    assert load.split("=", 1)[1].split() == (ipsec_tunnels.DATAPATH_PLUGINS["libipsec"] + " "
                                             + ipsec_tunnels.CRYPTO_PLUGINS).split()
    assert "socket = unix:///run/charon.vici" in conf
    assert conf.count("{") == conf.count("}")
    with pytest.raises(CNIError, match="data path"):
        ipsec_tunnels.strongswan_conf("/run/x", "gcm")
