"""Regressions for what the fuzz of the Docker-facing calls found
(tests/unit/test_fuzz_http.py): each was a 500 with a Python exception in the
message, or a bad value accepted and stored. Now each is refused at the edge,
with a message naming the field and what is valid, and nothing is stored."""

import json
import sqlite3

import pytest

from tests.unit.shim_client import Client, app_in

NET, EP = "a" * 64, "b" * 64


@pytest.fixture
def shim(tmp_path):
    post = Client(app_in(tmp_path))

    def stored():
        with sqlite3.connect(tmp_path / "state" / "state.db") as db:
            return db.execute("SELECT kind, key, value FROM objects ORDER BY kind, key").fetchall()

    post.stored = stored
    return post


@pytest.mark.parametrize("ipv4,fragment", [
    ([{"Pool": "10.80.0.0/24", "Gateway": "garbage"}], "IPv4Data[0].Gateway 'garbage' is not an IPv4 address"),
    ([{"Pool": "10.80.0.0/24", "Gateway": "10.99.0.1/24"}], "is not inside pool 10.80.0.0/24"),
    ([{"Pool": "10.80.0.0/24", "AuxAddresses": {"a": "x"}}], "AuxAddresses['a'] 'x' is not an IPv4 address"),
    ([{"Pool": "10.80.0.0/24", "AuxAddresses": ["10.80.0.5"]}], "AuxAddresses must be a map"),
    ([{"Pool": 5}], "IPv4Data[0].Pool 5 is not an IPv4 subnet"),
    ([{"Pool": None}], "IPv4Data[0].Pool None is not an IPv4 subnet"),
    ([{"Pool": "fd00::/64"}], "is not an IPv4 subnet"),
    ([{"Pool": "10.80.0.0/32"}], "too small"),
])
def test_create_network_refuses_bad_ipam_data(shim, ipv4, fragment):
    status, answer = shim("/NetworkDriver.CreateNetwork", {"NetworkID": NET, "IPv4Data": ipv4})
    assert status == 400 and fragment in answer["Err"], answer
    assert shim.stored() == []


def test_a_body_nested_too_deeply_is_bad_json(shim):
    status, answer = shim("/IpamDriver.RequestPool", b"[" * 5000 + b"]" * 5000)
    assert status == 400 and "not valid JSON" in answer["Error"]


@pytest.fixture
def known_endpoint(shim, tmp_path):
    """A network and an endpoint in the state, as CreateNetwork/CreateEndpoint
    would leave them (CreateNetwork itself would make a bridge in this namespace)."""
    from cnm_shim.state import ENDPOINT, NETWORK, State
    state = State(str(tmp_path / "state"))
    state.put(NETWORK, NET, {"id": NET, "driver": "rancher-bridge", "backend": "bridge", "options": {},
                             "cni_name": "rancher-" + NET[:12], "bridge": "rb-" + NET[:12], "conflist": {},
                             "docker_ipam": False, "bridge_created": False})
    state.put(ENDPOINT, State.endpoint_key(NET, EP), {"network_id": NET, "endpoint_id": EP, "address": "10.80.0.5/24",
                                                      "address6": "", "mac": "02:42:0a:50:00:05", "result": None})
    return state


@pytest.mark.parametrize("iface,fragment", [
    ({"Address": "10.80.0.9/24", "MacAddress": "; rm -rf /"}, "Interface.MacAddress '; rm -rf /' is not a unicast MAC"),
    ({"Address": "10.80.0.9/24", "MacAddress": "01:00:5e:00:00:01"}, "is not a unicast MAC"),
    ({"Address": 5}, "Interface.Address 5 is not an IPv4 address in CIDR form"),
    ({"Address": "10.80.0.9/24", "AddressIPv6": "10.80.0.9/24"}, "Interface.AddressIPv6"),
])
def test_create_endpoint_refuses_bad_interface(shim, known_endpoint, iface, fragment):
    before = shim.stored()
    status, answer = shim("/NetworkDriver.CreateEndpoint", {"NetworkID": NET, "EndpointID": "c" * 64, "Interface": iface})
    assert status == 400 and fragment in answer["Err"], answer
    assert shim.stored() == before


def test_a_repeated_create_endpoint_keeps_the_endpoint(shim, known_endpoint):
    from cnm_shim.state import ENDPOINT, State
    key = State.endpoint_key(NET, EP)
    known_endpoint.put(ENDPOINT, key, dict(known_endpoint.get(ENDPOINT, key), result={"ips": []}))
    before = shim.stored()
    body = {"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": "10.80.0.5/24"}}
    assert shim("/NetworkDriver.CreateEndpoint", body) == (200, {"Interface": {"MacAddress": "02:42:0a:50:00:05"}})
    assert shim.stored() == before
    status, answer = shim("/NetworkDriver.CreateEndpoint", dict(body, Interface={"Address": "10.80.0.6/24"}))
    assert status == 400 and "exists already with other addresses" in answer["Err"]


@pytest.mark.parametrize("portmap,fragment", [
    ("abc", "portmap must be a list of objects"),
    ([{"Proto": 6, "Port": 80, "HostPort": "x"}], "portmap[0].HostPort 'x' must be an integer from 0 to 65535"),
    ([{"Proto": 6, "Port": 80, "HostPort": 8080, "HostPortEnd": 10 ** 12}], "HostPortEnd"),
    ([{"Proto": 6, "Port": 80, "HostPort": 8080, "HostPortEnd": 80}], "HostPortEnd 80 is below HostPort 8080"),
    ([{"Proto": 6, "Port": 80, "HostPort": 8080, "HostIP": "nope"}], "HostIP 'nope' is not an IP address"),
    ([{"Proto": True, "Port": 80, "HostPort": 8080}], "Proto True"),
])
def test_program_external_connectivity_refuses_bad_port_maps(shim, known_endpoint, portmap, fragment):
    before = shim.stored()
    status, answer = shim("/NetworkDriver.ProgramExternalConnectivity", {
        "NetworkID": NET, "EndpointID": EP, "Options": {"com.docker.network.portmap": portmap}})
    assert status == 400 and fragment in answer["Err"], answer
    assert shim.stored() == before


def test_a_pool_too_small_is_refused_at_request_pool(shim):
    status, answer = shim("/IpamDriver.RequestPool", {"AddressSpace": "RancherLocal", "Pool": "10.90.0.0/32"})
    assert status == 400 and "10.90.0.0/32" in answer["Error"] and "too small" in answer["Error"]
    assert shim.stored() == []


def test_a_repeated_request_pool_keeps_the_pool_gateway_and_counts_a_holder(shim):
    body = {"AddressSpace": "RancherLocal", "Pool": "10.91.0.0/24"}
    _, pool = shim("/IpamDriver.RequestPool", body)
    assert shim("/IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Options": {
        "RequestAddressType": "com.docker.network.gateway"}}) == (200, {"Address": "10.91.0.1/24", "Data": {}})
    before = [(kind, key, {k: v for k, v in json.loads(value).items() if k != "refs"})
              for kind, key, value in shim.stored()]
    assert shim("/IpamDriver.RequestPool", body) == (200, pool)  # a second network on the same --subnet
    after = [(kind, key, json.loads(value)) for kind, key, value in shim.stored()]
    assert [(kind, key, {k: v for k, v in value.items() if k != "refs"}) for kind, key, value in after] == before
    assert after[0][2]["refs"] == 2


@pytest.mark.parametrize("path,key", [("/NetworkDriver.CreateNetwork", "Err"), ("/IpamDriver.RequestPool", "Error")])
def test_a_body_of_20_mb_is_refused_before_it_is_read(shim, path, key):
    body = json.dumps({"NetworkID": NET, "Options": {"com.docker.network.generic": {"x": "a" * (20 << 20)}}})
    status, answer = shim(path, body.encode())
    assert status == 413, answer
    assert "larger than the plug-in accepts (1048576 bytes)" in answer["Err"] and answer[key] == answer["Err"]
    assert shim.stored() == []


def test_a_body_below_the_cap_is_still_read(shim):
    # a padded RequestPool of half the cap: the limit is far above Docker's own requests
    body = b" " * (512 << 10) + json.dumps({"AddressSpace": "RancherLocal", "Pool": "10.92.0.0/24"}).encode()
    status, answer = shim("/IpamDriver.RequestPool", body)
    assert status == 200 and answer["Pool"] == "10.92.0.0/24", answer


def gateway_of(shim, pool_body: dict, driver: str) -> str:
    """The gateway the IPAM of `driver` (the socket the call came in on) gives the pool."""
    environ = {"rancher.driver": driver}
    pool = shim.client.post("/IpamDriver.RequestPool", data=json.dumps(pool_body), environ_base=environ).get_json()
    answer = shim.client.post("/IpamDriver.RequestAddress", environ_base=environ, data=json.dumps({
        "PoolID": pool["PoolID"], "Options": {"RequestAddressType": "com.docker.network.gateway"}}))
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()["Address"]


def test_rancher_ipsecs_ipam_puts_the_gateway_in_this_hosts_ip_range_and_the_others_at_the_subnets_first(tmp_path):
    """Each host routes its IPsec tunnels from a gateway in its own block, its
    --ip-range; the other backends keep the subnet's first address."""
    shim = Client(app_in(tmp_path))
    body = {"AddressSpace": "RancherLocal", "Pool": "10.92.0.0/16", "SubPool": "10.92.3.0/24"}
    assert gateway_of(shim, body, "rancher-ipsec") == "10.92.3.1/16"
    assert gateway_of(shim, dict(body, Pool="10.93.0.0/16", SubPool="10.93.0.0/24"), "rancher-ipsec") == \
        "10.93.0.1/16"
    assert gateway_of(shim, dict(body, Pool="10.94.0.0/16", SubPool="10.94.3.0/24"), "rancher-bridge") == \
        "10.94.0.1/16"


def test_a_rate_limit_without_the_bandwidth_plugin_in_the_cni_path_fails_at_network_create(shim):
    """Found missing at `network create`, naming the plug-in and the path
    searched, before anything is made (this app's CNI path holds nothing)."""
    status, answer = shim("/NetworkDriver.CreateNetwork", {
        "NetworkID": "b" * 64, "IPv4Data": [{"Pool": "10.95.0.0/24", "Gateway": "10.95.0.1/24"}],
        "Options": {"com.docker.network.generic": {"bandwidth.ingress_rate": "10mbit"}}})
    assert status == 400, answer
    assert "the options ask for the CNI plug-in 'bandwidth'" in answer["Err"] and "searched CNI_PATH" in answer["Err"]
    assert "containernetworking-plugins" in answer["Err"]
    assert shim.stored() == []


def test_interface_tuning_without_the_tuning_plugin_in_the_cni_path_fails_at_network_create(shim):
    status, answer = shim("/NetworkDriver.CreateNetwork", {
        "NetworkID": "c" * 64, "IPv4Data": [{"Pool": "10.96.0.0/24", "Gateway": "10.96.0.1/24"}],
        "Options": {"com.docker.network.generic": {"tuning.mtu": "1300"}}})
    assert status == 400, answer
    assert "the options ask for the CNI plug-in 'tuning'" in answer["Err"] and "searched CNI_PATH" in answer["Err"]
    assert shim.stored() == []
