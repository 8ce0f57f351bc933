import pytest

from cni_backend import version
from cni_backend.errors import CNIError

RESULT_1_1 = {
    "cniVersion": "1.1.0",
    "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "mtu": 1450, "sandbox": "/run/netns/x"}],
    "ips": [{"address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 0},
            {"address": "fd00::2/64", "interface": 0}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1", "mtu": 1400, "table": 100}],
    "dns": {"nameservers": ["10.0.0.53"]},
}


@pytest.mark.parametrize("target", ["0.3.1", "0.4.0"])
def test_old_versions_get_ip_version_field_and_lose_1_1_fields(target):
    out = version.convert_result(version.normalize_result(RESULT_1_1), target)
    assert out["cniVersion"] == target
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
    assert "mtu" not in out["interfaces"][0]
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}]


def test_1_0_0_has_no_ip_version_and_no_1_1_fields():
    out = version.convert_result(version.normalize_result(RESULT_1_1), "1.0.0")
    assert all("version" not in ip for ip in out["ips"])
    assert "mtu" not in out["interfaces"][0] and "table" not in out["routes"][0]


def test_1_1_0_keeps_everything():
    out = version.convert_result(version.normalize_result(RESULT_1_1), "1.1.0")
    assert out["interfaces"][0]["mtu"] == 1450 and out["routes"][0]["table"] == 100


def test_round_trip_through_0_3_1_keeps_addresses():
    old = version.convert_result(version.normalize_result(RESULT_1_1), "0.3.1")
    back = version.normalize_result(old)
    assert [ip["address"] for ip in back["ips"]] == ["10.0.0.2/24", "fd00::2/64"]
    assert all("version" not in ip for ip in back["ips"])


@pytest.mark.parametrize("bad", ["0.2.0", "2.0.0", "", "1.0", "one"])
def test_unsupported_versions_are_code_1(bad):
    with pytest.raises(CNIError) as err:
        version.require_supported(bad)
    assert err.value.code == 1


def test_highest_supported_picks_from_cniVersions():
    assert version.highest_supported(["0.3.1", "1.0.0", "9.9.9"]) == "1.0.0"
    assert version.highest_supported(["0.1.0"]) is None
