"""Docker's messages, typed (cnm_shim/cnm.py): what a request becomes once
read at the edge, and the JSON each response gives Docker. The expected wire
dicts are the ones the untyped handlers answered."""

import pytest

from cnm_shim import cnm, ports
from cnm_shim.errors import DriverError
from cnm_shim.translate import join_answer

NET, EP = "a" * 64, "b" * 64
RESULT = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "veth1"}, {"name": "eth0", "sandbox": "/x"}],
    "ips": [{"address": "10.60.0.5/24", "gateway": "10.60.0.1", "interface": 1},
            {"address": "fd00:60::5/64", "gateway": "fd00:60::1", "interface": 1}],
    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.99.0.0/16", "gw": "10.60.0.254"}, {"dst": "192.168.7.0/24"}],
}


def test_join_answers_the_interface_the_ipv4_gateway_and_the_static_routes():
    """No IPv6 default route in the result: no GatewayIPv6, though the address has a gateway."""
    assert join_answer(RESULT, "rcbbbbbbbbbbbb").to_wire() == {
        "InterfaceName": {"SrcName": "rcbbbbbbbbbbbb", "DstPrefix": "eth"},
        "Gateway": "10.60.0.1",
        "StaticRoutes": [{"Destination": "10.99.0.0/16", "RouteType": 0, "NextHop": "10.60.0.254"},
                         {"Destination": "192.168.7.0/24", "RouteType": 1}],
    }
    both = dict(RESULT, routes=[{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
    assert join_answer(both, "rc1").to_wire() == {"InterfaceName": {"SrcName": "rc1", "DstPrefix": "eth"},
                                                  "Gateway": "10.60.0.1", "GatewayIPv6": "fd00:60::1",
                                                  "StaticRoutes": []}


def test_published_ports_are_typed_once_as_the_host_ports_asked_for():
    portmap = [{"Proto": 6, "Port": 80, "HostPort": 8080, "HostPortEnd": 8081},
               {"Proto": 17, "Port": 53, "HostPort": 5353, "HostIP": "127.0.0.1"},
               {"Proto": 132, "Port": 9, "HostPort": 0}]
    request = cnm.JoinRequest.from_wire({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/x",
                                         "Options": {cnm.PORT_MAP: portmap}})
    assert (request.sandbox_key, request.port_map[0]) == ("/x", cnm.PortBinding(6, "", 80, "", 8080, 8081))
    assert [r.as_dict() for r in request.port_requests] == [r.as_dict() for r in ports.requests(portmap)]
    again = cnm.ExternalConnectivityRequest.from_wire({"NetworkID": NET, "EndpointID": EP,
                                                       "Options": {cnm.PORT_MAP: portmap}})
    assert again.port_requests == request.port_requests


def test_create_endpoint_answers_the_mac_only_when_the_driver_chose_it():
    assert cnm.CreateEndpointResponse("02:42:0a:3c:00:05").to_wire() == {"Interface": {"MacAddress": "02:42:0a:3c:00:05"}}
    assert cnm.CreateEndpointResponse().to_wire() == {}
    # an address only where Docker gave none (--ipam-driver null on rancher-conflist)
    assert cnm.CreateEndpointResponse("", "10.156.0.3/24").to_wire() == {"Interface": {"Address": "10.156.0.3/24"}}
    assert cnm.CreateEndpointResponse("02:42:0a:9c:00:03", "10.156.0.3/24").to_wire() == {
        "Interface": {"MacAddress": "02:42:0a:9c:00:03", "Address": "10.156.0.3/24"}}


def test_a_create_network_request_is_typed_once():
    request = cnm.CreateNetworkRequest.from_wire({
        "NetworkID": NET, "Options": {"com.docker.network.generic": {"backend": "flat", "parent": "eth1"}},
        "IPv4Data": [{"AddressSpace": "RancherLocal", "Pool": "10.60.0.0/24", "Gateway": "10.60.0.1/24",
                      "AuxAddresses": {"metadata-link": "10.60.0.2/24"}}]})
    assert request.generic == {"backend": "flat", "parent": "eth1"} and request.ipv6_data == ()
    assert request.ipv4_data == (cnm.IPAMData("10.60.0.0/24", "RancherLocal", "10.60.0.1/24",
                                              {"metadata-link": "10.60.0.2/24"}),)


@pytest.mark.parametrize("kind,body,message", [
    (cnm.EndpointRequest, {"NetworkID": NET}, "EndpointID None is missing or not a valid ID"),
    (cnm.NetworkRequest, {"NetworkID": NET, "Options": []}, "Options must be a JSON object"),
    (cnm.JoinRequest, {"NetworkID": NET, "EndpointID": EP, "SandboxKey": 5}, "SandboxKey must be a string"),
    (cnm.AddressRequest, {"PoolID": 7}, "PoolID must be a string"),
    (cnm.RequestPoolRequest, {"Options": "x"}, "Options must be a JSON object"),
])
def test_a_malformed_request_is_refused_naming_the_field(kind, body, message):
    with pytest.raises(DriverError, match=message):
        kind.from_wire(body)


def test_ipam_responses_read_like_their_json():
    pool = cnm.RequestPoolResponse("RancherLocal/10.60.0.0/24", "10.60.0.0/24")
    assert pool.to_wire() == {"PoolID": "RancherLocal/10.60.0.0/24", "Pool": "10.60.0.0/24", "Data": {}}
    assert pool["PoolID"] == "RancherLocal/10.60.0.0/24"
    assert cnm.RequestAddressResponse("10.60.0.7/24").to_wire() == {"Address": "10.60.0.7/24", "Data": {}}
