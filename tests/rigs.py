"""Test topologies shared by several layers: an upstream switch and router in
a namespace, reached through an uplink veth that stands in for a host NIC; and
waiting for an HTTP service to answer."""

import time
import urllib.request

from tests.conftest import ns_exec, run, unique


def router_with_uplink(make_netns, router_cidr: str, host_cidr: str) -> tuple:
    """(router namespace, uplink name): the router's switch `sw` holds
    `router_cidr`; the uplink (in our namespace) holds `host_cidr`."""
    router, uplink = make_netns(), unique("up")
    run("ip", "link", "add", uplink, "type", "veth", "peer", "name", "wan0", "netns", router)
    for argv in (("ip", "link", "add", "sw", "type", "bridge"), ("ip", "link", "set", "wan0", "master", "sw", "up"),
                 ("ip", "addr", "add", router_cidr, "dev", "sw"), ("ip", "link", "set", "sw", "up")):
        ns_exec(router, *argv)
    run("ip", "addr", "add", host_cidr, "dev", uplink)
    run("ip", "link", "set", uplink, "up")
    return router, uplink


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return reply.read().decode()


def wait_for_http(url: str, timeout: float = 10) -> str:
    """The body, once the service answers; fails the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return http_get(url)
        except OSError:
            assert time.monotonic() < deadline, f"{url} never answered"
            time.sleep(0.1)
