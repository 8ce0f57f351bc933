"""rancher-ipsec's etcd state, the rules alone (cni_backend/ipsec_registry.py):
what a key read from etcd must be, and which host entries become peers."""

import base64
import json

import pytest

from cni_backend import ipsec_registry as registry

ROOT = "/rancher-cni/ipsec/hosts/"
SUBNET = "10.42.0.0/16"
PART = "10.42.0.0%2F16"


def row(host, block, revision, underlay=None, subnet_part=PART):
    return (f"{ROOT}{host}/{subnet_part}", json.dumps({"underlay": underlay or host, "block": block}).encode(),
            revision)


def test_a_key_is_32_bytes_in_base64_and_nothing_else():
    good = base64.b64encode(bytes(range(32)))
    assert registry.parse_key(good) == good and registry.parse_key(good.decode()) == good
    for bad in (good[:-1], good + b"\n", b" " + good[1:], base64.b64encode(bytes(33)), b"", None,
                good.replace(b"A", b"-")):
        with pytest.raises(ValueError) as refused:
            registry.parse_key(bad)
        assert "AAECAwQF" not in str(refused.value), "the message never shows the value"


def test_the_earliest_block_wins_and_none_overlaps_this_hosts():
    rows = [row("10.99.0.3", "10.42.2.0/25", 7), row("10.99.0.2", "10.42.2.0/24", 5),
            row("10.99.0.4", "10.42.1.0/24", 3), row("10.99.0.1", "10.42.9.0/24", 1),
            row("10.99.0.5", "10.42.5.0/24", 9, subnet_part="10.43.0.0%2F16")]
    peers, bad = registry.select(ROOT, rows, SUBNET, "10.99.0.1", "10.42.1.0/24")
    assert {h: str(b) for h, b in peers.items()} == {"10.99.0.2": "10.42.2.0/24"}
    assert "registered earlier by host 10.99.0.2" in bad[rows[0][0]]
    assert "overlaps this host's block" in bad[rows[2][0]]
    assert rows[3][0] not in bad and rows[4][0] not in bad, "our own entry and another subnet's are not judged"


def test_the_key_file_is_named_by_the_subnet_in_the_state_dir():
    path = registry.key_file("/var/lib/rancher-cni", "10.42.0.0/16")
    assert path.startswith("/var/lib/rancher-cni/ipsec/keys/") and path.endswith(".psk")
    assert path == registry.key_file("/var/lib/rancher-cni", "10.42.0.0/16")
    assert path != registry.key_file("/var/lib/rancher-cni", "10.43.0.0/16")
    assert registry.EtcdSettings(("https://e:2379",)).key(SUBNET) == "/rancher-cni/ipsec/keys/10.42.0.0%2F16"
