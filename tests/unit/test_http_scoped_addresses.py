"""Issue 15, item 1, on the Docker side through the Flask test client: a
scoped IPv6 address in any field Docker sends (pools, gateways, aux and
endpoint addresses, published ports' IPs, RequestPool, RequestAddress) is
refused with an Err naming the field and the scope ID, and nothing is stored."""

import pytest

from tests.unit.test_http_validation import EP, NET, known_endpoint, shim  # noqa: F401 (fixtures)

HOSTILE = "fd00:22::5%lo\nCOMMIT\n*filter\n-P INPUT ACCEPT"


@pytest.mark.parametrize("ipv6,field", [
    ([{"Pool": "fd00:22::%a b/64"}], "IPv6Data[0].Pool"),
    ([{"Pool": "fd00:22::/64", "Gateway": HOSTILE + "/64"}], "IPv6Data[0].Gateway"),
    ([{"Pool": "fd00:22::/64", "AuxAddresses": {"x": "fd00:22::9%evil/64"}}], "IPv6Data[0].AuxAddresses['x']"),
])
def test_create_network_refuses_scoped_ipam_data(shim, ipv6, field):
    status, answer = shim("/NetworkDriver.CreateNetwork", {"NetworkID": NET, "IPv6Data": ipv6,
                                                           "IPv4Data": [{"Pool": "10.80.0.0/24"}]})
    assert status == 400 and field in answer["Err"] and "scope ID" in answer["Err"], answer
    assert shim.stored() == []


def test_create_endpoint_refuses_a_scoped_address(shim, known_endpoint):
    before = shim.stored()
    status, answer = shim("/NetworkDriver.CreateEndpoint", {"NetworkID": NET, "EndpointID": "c" * 64, "Interface": {
        "Address": "10.80.0.9/24", "AddressIPv6": HOSTILE + "/64"}})
    assert status == 400 and "Interface.AddressIPv6" in answer["Err"] and "scope ID" in answer["Err"], answer
    assert shim.stored() == before


@pytest.mark.parametrize("path", ["/NetworkDriver.ProgramExternalConnectivity", "/NetworkDriver.Join"])
@pytest.mark.parametrize("key", ["HostIP", "IP"])
def test_published_ports_with_a_scoped_ip_are_refused(shim, known_endpoint, path, key):
    """The injection's way in: Docker's port map (-p '[::1%lo...]:8080:80')."""
    before = shim.stored()
    status, answer = shim(path, {"NetworkID": NET, "EndpointID": EP, "SandboxKey": "", "Options": {
        "com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostPort": 8080, key: HOSTILE}]}})
    assert status == 400 and f"com.docker.network.portmap[0].{key}" in answer["Err"], answer
    assert "scope ID" in answer["Err"], answer
    assert shim.stored() == before


@pytest.mark.parametrize("body,field", [
    ({"AddressSpace": "RancherLocal", "Pool": "fd00:22::%evil/64", "V6": True}, "pool"),
    ({"AddressSpace": "RancherLocal", "Pool": "fd00:22::/64", "SubPool": "fd00:22::%x/80", "V6": True}, "ip-range"),
])
def test_request_pool_refuses_a_scoped_pool(shim, body, field):
    status, answer = shim("/IpamDriver.RequestPool", body)
    assert status == 400 and field in answer["Error"] and "scope ID" in answer["Error"], answer
    assert shim.stored() == []


def test_request_address_refuses_a_scoped_copy_of_a_held_address(shim):
    """fd00:22::5%evil was handed out while fd00:22::5 was held."""
    _, pool = shim("/IpamDriver.RequestPool", {"AddressSpace": "RancherLocal", "Pool": "fd00:22::/64", "V6": True})
    assert shim("/IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "fd00:22::5"}) == (
        200, {"Address": "fd00:22::5/64", "Data": {}})
    status, answer = shim("/IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "fd00:22::5%evil"})
    assert status == 400 and "requested address" in answer["Error"] and "scope ID" in answer["Error"], answer
