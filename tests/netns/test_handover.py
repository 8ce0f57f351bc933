"""RANCHER_HANDOVER_IFNAME: the container's end of the veth made, unconfigured,
in the plug-in's own namespace, where Docker (up to 27) takes it at Join.

Each test gives the plug-in a namespace of its own to be "the host" (`ip
netns exec`), so the interfaces, bridge and routes it makes there are read
back from the kernel and go with that namespace."""

import json

import pytest

from cni_backend.plugins.bridge import HANDOVER_ARG
from tests.conftest import ns_exec

pytestmark = pytest.mark.netns

MAC = "02:42:0a:7b:00:09"


def links(netns: str) -> dict:
    return {link["ifname"]: link for link in json.loads(ns_exec(netns, "ip", "-j", "-d", "link", "show").stdout)}


def global_addresses(netns: str, ifname: str) -> list:
    out = json.loads(ns_exec(netns, "ip", "-j", "addr", "show", "dev", ifname).stdout)
    return [a["local"] for a in out[0]["addr_info"] if a["scope"] == "global"]


def handover_env(name: str) -> dict:
    return {"CNI_ARGS": f"IgnoreUnknown=1;{HANDOVER_ARG}={name}"}


def test_the_interface_is_made_in_the_plugins_own_namespace_unconfigured(direct_env, make_netns):
    host = make_netns()
    config = direct_env.bridge_config()
    config["runtimeConfig"] = {"mac": MAC}
    config["capabilities"] = {"mac": True}
    code, result = direct_env.exec("ADD", config, host, host_netns=host, env=handover_env("rcnho0"))
    assert code == 0, result
    found = links(host)
    handed = found["rcnho0"]
    assert handed["address"] == MAC and "UP" not in handed["flags"]
    assert global_addresses(host, "rcnho0") == []  # Docker sets the addresses, inside the sandbox
    routes = ns_exec(host, "ip", "route", "show").stdout
    assert "rcnho0" not in routes and "default" not in routes
    # its peer is a port of the bridge, as for any container
    peer = next(name for name, link in found.items() if name.startswith("veth"))
    assert found[peer].get("master") == config["bridge"] and found[peer].get("link") == "rcnho0"
    assert result["ips"][0]["address"].startswith("10.123.0.")
    assert result["interfaces"][2] == {"name": "eth0", "mac": MAC, "mtu": 1500, "sandbox": f"/var/run/netns/{host}"}
    assert direct_env.allocations() != []
    # the runtime's DEL, without a namespace (the interface was moved on and back), takes both ends
    assert direct_env.exec("DEL", dict(config, prevResult=result), None, host_netns=host)[0] == 0
    assert "rcnho0" not in links(host) and peer not in links(host)


@pytest.mark.parametrize("name,fragment", [
    ("all", "is not an interface name"),
    ("a/b", "is not an interface name"),
    ("sixteen-chars-xx", "is not an interface name"),
])
def test_a_bad_name_is_refused_and_nothing_is_made(direct_env, make_netns, name, fragment):
    host = make_netns()
    before = set(links(host))
    config = direct_env.bridge_config()
    code, error = direct_env.exec("ADD", config, host, host_netns=host, env=handover_env(name))
    assert code != 0 and fragment in error["msg"] and HANDOVER_ARG in error["msg"]
    assert set(links(host)) == before and direct_env.allocations() == []


def test_another_namespace_is_refused_and_nothing_is_made(direct_env, make_netns):
    """The arg never makes an unconfigured interface in a container's namespace."""
    host, container = make_netns(), make_netns()
    before = set(links(host)), set(links(container))
    config = direct_env.bridge_config()
    code, error = direct_env.exec("ADD", config, container, host_netns=host, env=handover_env("rcnho1"))
    assert code != 0 and error["code"] == 7 and "another one" in error["msg"]
    assert (set(links(host)), set(links(container))) == before and direct_env.allocations() == []
