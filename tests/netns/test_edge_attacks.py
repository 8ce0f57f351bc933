"""Issue 15, items 1 and 2, against the real plug-ins and the kernel: rule
text injected through an IPv6 scope ID, the host's loopback opened to LAN
neighbours by route_localnet, and hostile interface names in prevResult.
Each test reads the kernel back (ip6tables-save, sysctls, packets)."""

import json
import os
import subprocess
import sys

import pytest

from cni_backend import flatnet
from cni_backend.net import sysctls
from cni_backend.plugins.flat import load_network
from tests.conftest import ns_exec, run, unique
from tests.netns.test_flat import HOST_IP, flat_config, rig  # noqa: F401 (rig: a fixture)
from tests.rigs import http_get, wait_for_http

pytestmark = pytest.mark.netns

# "::1%1" is a scoped address ip6tables accepts, so on the code before the fix
# each line below reached ip6tables-restore intact and the script was valid:
# a filter table section, and a chain of our name with an ACCEPT in it (the
# last line takes the rest of our DNAT rule: "/128 -p tcp ...").
INJECTED_CHAIN = "RANCHER-CNI-PWN"
HOSTILE_HOST_IP = ("::1%1\nCOMMIT\n*filter\n:" + INJECTED_CHAIN + " - [0:0]\n-A " + INJECTED_CHAIN
                   + " -j ACCEPT\nCOMMIT\n*nat\n-A RANCHER-CNI-HOSTPORT -d ::1")


def ip6tables_state() -> dict:
    saved = run("ip6tables-save").stdout
    return {"chains": sorted(line[1:].split()[0] for line in saved.splitlines() if line.startswith(":")),
            "rules": sorted(line for line in saved.splitlines() if line.startswith("-A"))}


def dual_stack_bridge(env) -> dict:
    config = env.bridge_config(subnet="10.128.0.0/24")
    config["ipam"]["ranges"] = [[{"subnet": "10.128.0.0/24"}], [{"subnet": "fd00:128::/64"}]]
    return config


def cni_cli(env, *argv):
    return subprocess.run([sys.executable, "-m", "cnm_shim.cli", "cni", *argv, "--conf-dir", str(env.conf_dir),
                           "--cache-dir", str(env.cache), "--cni-path", str(env.bin)],
                          capture_output=True, text=True, env=env.env)


@pytest.mark.parametrize("route", ["runtime capability args", "plugin socket"])
def test_a_scoped_host_ip_cannot_inject_a_table_into_ip6tables_restore(cni_daemon_env, make_netns, route):
    """A hostIP whose scope ID holds newlines, in runtimeConfig.portMappings
    (`cnm-shim cni add --cap-args`, as a runtime passes it) or in a port map
    sent straight to rancher-portmap (the daemon's socket): refused with a
    message naming the scope ID; ip6tables holds no new chain and no rule."""
    env = cni_daemon_env
    config = dual_stack_bridge(env)
    netns = make_netns()
    ports = {"portMappings": [{"hostPort": 18182, "containerPort": 80, "protocol": "tcp", "hostIP": HOSTILE_HOST_IP}]}
    before = ip6tables_state()
    if route == "runtime capability args":
        plugin = {k: v for k, v in config.items() if k not in ("cniVersion", "name")}
        conf = {"cniVersion": "1.0.0", "name": config["name"],
                "plugins": [plugin, {"type": "rancher-portmap", "capabilities": {"portMappings": True}}]}
        (env.conf_dir / "10-ports.conflist").write_text(json.dumps(conf))
        added = cni_cli(env, "add", config["name"], netns, "--cap-args", json.dumps(ports))
        failed, message = added.returncode != 0, added.stderr + added.stdout
        after = ip6tables_state()
        cni_cli(env, "del", config["name"], netns)
    else:
        code, result = env.exec("ADD", config, netns)
        assert code == 0, result
        portmap = {"cniVersion": "1.1.0", "name": config["name"], "type": "rancher-portmap",
                   "runtimeConfig": ports, "prevResult": result}
        code, error = env.exec("ADD", portmap, netns)
        failed, message = code != 0, json.dumps(error)
        after = ip6tables_state()
        env.exec("DEL", portmap, netns)
        assert env.exec("DEL", dict(config, prevResult=result), netns)[0] == 0
    assert INJECTED_CHAIN not in after["chains"], after
    assert not [r for r in after["rules"] if r not in before["rules"] and "RANCHER-CNI-HOSTPORT" in r], after
    assert failed and "scope ID" in message, message


@pytest.fixture
def loopback_service(tmp_path):
    """A service of the host's bound to 127.0.0.1 only (what route_localnet
    must never expose): its port."""
    www = tmp_path / "loopback-www"
    www.mkdir()
    (www / "index.html").write_text("loopback-only\n")
    server = subprocess.Popen(["busybox", "httpd", "-f", "-p", "127.0.0.1:18383", "-h", str(www)])
    wait_for_http("http://127.0.0.1:18383/")
    yield 18383
    server.kill()
    server.wait()


def test_published_ports_on_a_flat_network_do_not_open_the_hosts_loopback_to_lan_neighbours(
        cni_daemon_env, make_netns, rig, loopback_service, tmp_path):  # noqa: F811 (rig)
    """A port published on a flat network sets route_localnet on the flat
    bridge, which holds the host's LAN address. A LAN neighbour (the router
    namespace) then sends to 127.0.0.1 through the bridge: no answer from the
    service bound there (CVE-2020-8558). The host itself still reaches the
    published port on 127.0.0.1; DEL of the last published port puts
    route_localnet back to 0."""
    env = cni_daemon_env
    config = flat_config(env, rig)
    container = make_netns()
    code, result = env.exec("ADD", config, container)
    assert code == 0, result
    www = tmp_path / "container-www"
    www.mkdir()
    (www / "index.html").write_text("published\n")
    server = subprocess.Popen(["ip", "netns", "exec", container, "busybox", "httpd", "-f", "-p", "80", "-h", str(www)])
    portmap = {"cniVersion": "1.0.0", "name": config["name"], "type": "rancher-portmap", "prevResult": result,
               "runtimeConfig": {"portMappings": [{"hostPort": 18282, "containerPort": 80, "protocol": "tcp"}]}}
    route_localnet = f"net/ipv4/conf/{config['bridge']}/route_localnet"
    try:
        code, out = env.exec("ADD", portmap, container)
        assert code == 0, out
        assert sysctls.read(route_localnet) == "1"
        assert wait_for_http("http://127.0.0.1:18282/") == "published\n"  # the host: through route_localnet

        # the neighbour: 127.0.0.1 routed to the host's LAN address (its own lo is down: no local
        # route), and its own route_localnet on, to take the replies that come from 127.0.0.1
        router = rig["router"]
        ns_exec(router, "ip", "route", "add", "127.0.0.1/32", "via", HOST_IP, "dev", "sw")
        for scope in ("all", "sw"):
            ns_exec(router, "sysctl", "-qw", f"net.ipv4.conf.{scope}.route_localnet=1")
        asked = ns_exec(router, "wget", "-q", "-T", "3", "-t", "1", "-O", "-",
                        f"http://127.0.0.1:{loopback_service}/", check=False)
        assert "loopback-only" not in asked.stdout, "a LAN neighbour reached a service bound to the host's 127.0.0.1"
        assert asked.returncode != 0
        counters = run("iptables", "-w", "-t", "raw", "-L", "RANCHER-CNI-LOCALNET", "-v", "-x", "-n").stdout
        assert any(int(line.split()[0]) > 0 for line in counters.splitlines()[2:]), counters
    finally:
        server.kill()
        server.wait()
        assert env.exec("DEL", portmap, container)[0] == 0
    assert sysctls.read(route_localnet) == "0", "the last published port went, route_localnet stayed on"
    assert "RANCHER-CNI-LOCALNET" not in run("iptables-save", "-t", "raw").stdout
    assert env.exec("DEL", dict(config, prevResult=result), container)[0] == 0
    flatnet.remove(load_network(config))
    with pytest.raises(OSError):
        http_get("http://127.0.0.1:18282/")


def _sysctl_values(names) -> dict:
    return {name: sysctls.read(f"net/ipv4/conf/{name}/route_localnet") for name in names}


@pytest.mark.parametrize("hostile,fragment", [
    ("../../../../tmp/rcnitx", "is not an interface name"),
    ("all", "is not an interface name"),
    ("default", "is not an interface name"),
    ("rcnitnosuch0", "does not exist on this host"),
    ("lo", "not a bridge"),
    ("VETH", "is a veth, not a bridge"),   # a NIC-like link of the host, made by the test
])
def test_hostile_interface_names_in_prev_result_are_refused_and_write_nothing(cni_daemon_env, make_netns, tmp_path,
                                                                            hostile, fragment):
    """prevResult's first host interface gets route_localnet. A name that
    climbs out of /proc/sys, that means every interface, that does not exist
    or that is not a bridge (the host's NIC) is refused, and no sysctl and no
    file changes."""
    env = cni_daemon_env
    veth = unique("nic")
    run("ip", "link", "add", veth, "type", "veth", "peer", "name", veth + "p")
    try:
        name = veth if hostile == "VETH" else hostile
        watched = ["all", "default", "lo", veth]
        before = _sysctl_values(watched)
        netns = make_netns()
        prev = {"cniVersion": "1.1.0",
                "interfaces": [{"name": name}, {"name": "eth0", "sandbox": f"/var/run/netns/{netns}"}],
                "ips": [{"address": "10.128.0.5/24", "interface": 1}]}
        portmap = {"cniVersion": "1.1.0", "name": unique("net"), "type": "rancher-portmap", "prevResult": prev,
                   "runtimeConfig": {"portMappings": [{"hostPort": 18283, "containerPort": 80, "protocol": "tcp"}]}}
        code, error = env.exec("ADD", portmap, netns)
        after = _sysctl_values(watched)
        rules = run("iptables-save").stdout
        env.exec("DEL", portmap, netns)
    finally:
        run("ip", "link", "del", veth, check=False)
    assert code != 0 and error["code"] == 7 and fragment in error["msg"], error
    assert after == before
    assert "RANCHER-CNI" not in rules
    assert not os.path.exists("/tmp/rcnitx") and not os.path.exists("/proc/tmp/rcnitx")


def test_the_flat_bridge_keeps_the_uplinks_mac_when_a_lower_mac_joins(cni_daemon_env, make_netns, rig):  # noqa: F811
    """The fast path knows the bridge's MAC as the host's. A bridge that took
    the uplink's MAC from its first port follows the lowest port MAC: the
    metadata link's random one, half the time, after which the host's
    replies to its containers (published ports on 127.0.0.1 among them) left
    through the uplink. The MAC is set explicitly (addr_assign_type 3) and stays."""
    env = cni_daemon_env
    config = flat_config(env, rig)
    container = make_netns()
    code, result = env.exec("ADD", config, container)
    assert code == 0, result
    low = unique("lo")
    try:
        uplink_mac = open(f"/sys/class/net/{rig['uplink']}/address").read().strip()
        bridge = config["bridge"]
        assert open(f"/sys/class/net/{bridge}/addr_assign_type").read().strip() == "3"
        run("ip", "link", "add", low, "address", "02:00:00:00:00:01", "type", "veth", "peer", "name", low + "p")
        run("ip", "link", "set", low, "master", bridge)
        assert open(f"/sys/class/net/{bridge}/address").read().strip() == uplink_mac
    finally:
        run("ip", "link", "del", low, check=False)
        assert env.exec("DEL", dict(config, prevResult=result), container)[0] == 0
        flatnet.remove(load_network(config))


def test_route_localnet_lasts_as_long_as_a_guard_and_is_left_as_found(cni_daemon_env, make_netns):
    """route_localnet stays on while any published port's guard stays on the
    bridge, goes back to 0 when DEL or GC takes the last one, and is left at 1
    where something else (dockerd, on docker0) had set it."""
    env = cni_daemon_env
    config = env.bridge_config(subnet="10.129.0.0/24")
    path = f"net/ipv4/conf/{config['bridge']}/route_localnet"

    def guards() -> int:
        return run("iptables-save", "-t", "raw").stdout.count(f"-i {config['bridge']} ")

    def portmap(result, port):
        return {"cniVersion": "1.1.0", "name": config["name"], "type": "rancher-portmap", "prevResult": result,
                "runtimeConfig": {"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]}}

    a, b = make_netns(), make_netns()
    ra = env.exec("ADD", config, a, container_id="ca")[1]
    rb = env.exec("ADD", config, b, container_id="cb")[1]
    assert env.exec("ADD", portmap(ra, 18301), a, container_id="ca")[0] == 0
    assert env.exec("ADD", portmap(rb, 18302), b, container_id="cb")[0] == 0
    assert (sysctls.read(path), guards()) == ("1", 2)
    assert env.exec("DEL", portmap(ra, 18301), a, container_id="ca")[0] == 0
    assert (sysctls.read(path), guards()) == ("1", 1), "b's published port still needs it"
    gc = dict(portmap(rb, 18302), **{"cni.dev/valid-attachments": []})
    gc.pop("prevResult")
    assert env.exec("GC", gc, env={"CNI_CONTAINERID": None, "CNI_IFNAME": None}) == (0, None)
    assert (sysctls.read(path), guards()) == ("0", 0), "GC took the last guard and left route_localnet on"

    sysctls.ensure(path, "1", "as dockerd does on docker0 with its userland proxy off")
    assert env.exec("ADD", portmap(ra, 18301), a, container_id="ca")[0] == 0
    assert env.exec("DEL", portmap(ra, 18301), a, container_id="ca")[0] == 0
    assert (sysctls.read(path), guards()) == ("1", 0), "a setting we did not make was undone"
    for netns, cid, result in ((a, "ca", ra), (b, "cb", rb)):
        assert env.exec("DEL", dict(config, prevResult=result), netns, container_id=cid)[0] == 0
