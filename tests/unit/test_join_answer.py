"""Join's answer to Docker (cnm_shim/translate.py `join_answer`): from the CNI
ADD result, the interface Docker moves into the sandbox, the gateway(s) it
sets as default routes, and the other routes as StaticRoutes (libnetwork's
RouteType: 0 = via a next hop, 1 = connected).

Docker installs a default route for Gateway / GatewayIPv6, so one is given
only where the plug-in made the container's default route in that family."""

from cnm_shim.translate import join_answer

SRC = "rc0123456789ab"
INTERFACE = {"SrcName": SRC, "DstPrefix": "eth"}


def result(ips=(), routes=()):
    """A CNI result as rancher-bridge returns it (interface 2: the container's)."""
    return {"cniVersion": "1.0.0", "interfaces": [{"name": "rb-web"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/x"}],
            "ips": [dict(ip, interface=2) for ip in ips], "routes": list(routes), "dns": {}}


def test_ipv4_default_gateway():
    answer = join_answer(result(ips=[{"address": "10.1.0.5/24", "gateway": "10.1.0.1"}],
                                routes=[{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]), SRC)
    assert answer == {"InterfaceName": INTERFACE, "Gateway": "10.1.0.1", "StaticRoutes": []}


def test_ipv6_default_gateway():
    answer = join_answer(result(ips=[{"address": "fd00:1::5/64", "gateway": "fd00:1::1"}],
                                routes=[{"dst": "::/0", "gw": "fd00:1::1"}]), SRC)
    assert answer == {"InterfaceName": INTERFACE, "GatewayIPv6": "fd00:1::1", "StaticRoutes": []}


def test_dual_stack_gives_both_gateways():
    answer = join_answer(result(ips=[{"address": "10.1.0.5/24", "gateway": "10.1.0.1"},
                                     {"address": "fd00:1::5/64", "gateway": "fd00:1::1"}],
                                routes=[{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "::/0", "gw": "fd00:1::1"}]),
                         SRC)
    assert answer == {"InterfaceName": INTERFACE, "Gateway": "10.1.0.1", "GatewayIPv6": "fd00:1::1", "StaticRoutes": []}


def test_no_default_route_no_gateway_even_when_the_subnet_has_one():
    """isDefaultGateway false: the container keeps its default route elsewhere."""
    answer = join_answer(result(ips=[{"address": "10.1.0.5/24", "gateway": "10.1.0.1"}]), SRC)
    assert answer == {"InterfaceName": INTERFACE, "StaticRoutes": []}


def test_a_default_route_in_one_family_gives_only_that_familys_gateway():
    answer = join_answer(result(ips=[{"address": "10.1.0.5/24", "gateway": "10.1.0.1"},
                                     {"address": "fd00:1::5/64", "gateway": "fd00:1::1"}],
                                routes=[{"dst": "::/0", "gw": "fd00:1::1"}]), SRC)
    assert answer == {"InterfaceName": INTERFACE, "GatewayIPv6": "fd00:1::1", "StaticRoutes": []}


def test_a_default_route_without_an_address_gateway_gives_the_routes_next_hop():
    """static IPAM (and others) put the gateway in the default route only:
    without it Docker would send the container out through docker_gwbridge."""
    answer = join_answer(result(ips=[{"address": "10.1.0.5/24"}], routes=[{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]), SRC)
    assert answer == {"InterfaceName": INTERFACE, "Gateway": "10.1.0.1", "StaticRoutes": []}
    answer = join_answer(result(ips=[{"address": "10.1.0.5/24"}], routes=[{"dst": "0.0.0.0/0"}]), SRC)
    assert answer == {"InterfaceName": INTERFACE, "StaticRoutes": []}, "no next hop anywhere: no gateway"


def test_other_routes_are_static_routes_via_their_next_hop_or_connected():
    """flat's metadata route goes via the link address; a route without gw is on-link."""
    answer = join_answer(result(ips=[{"address": "192.168.50.10/24", "gateway": "192.168.50.1"}],
                                routes=[{"dst": "0.0.0.0/0", "gw": "192.168.50.1"},
                                        {"dst": "169.254.169.250/32", "gw": "192.168.50.2"},
                                        {"dst": "10.99.0.0/16"},
                                        {"dst": "fd00:99::/48", "gw": "fe80::1"}]), SRC)
    assert answer == {
        "InterfaceName": INTERFACE, "Gateway": "192.168.50.1",
        "StaticRoutes": [
            {"Destination": "169.254.169.250/32", "RouteType": 0, "NextHop": "192.168.50.2"},
            {"Destination": "10.99.0.0/16", "RouteType": 1},
            {"Destination": "fd00:99::/48", "RouteType": 0, "NextHop": "fe80::1"},
        ],
    }


def test_an_empty_result_names_only_the_interface():
    assert join_answer({}, SRC) == {"InterfaceName": INTERFACE, "StaticRoutes": []}
