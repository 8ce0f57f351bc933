"""rancher-flat in real namespaces: an upstream switch and router made by the
test (a namespace behind a veth standing in for the NIC), a metadata bridge with
a metadata service, and containers on the business subnet."""

import json
import os
import re
import time

import pytest

from cni_backend.plugins.flat import load_network
from cni_backend import flatnet
from cni_backend.net import flat_fastpath, sysctls, tags
from tests.conftest import ns_exec, ping, run, unique
from tests.packets import arp_requests_for, capture, ipv4_from
from tests.rigs import router_with_uplink

pytestmark = pytest.mark.netns

SUBNET, ROUTER, HOST_IP, LINK_IP, MD_IP = "192.168.77.0/24", "192.168.77.1", "192.168.77.10", "192.168.77.2", "169.254.169.250"


@pytest.fixture
def rig(make_netns, tmp_path, docker_host_firewall):
    """router namespace with the switch; the uplink veth; the metadata bridge,
    a metadata service namespace and another namespace on that bridge; the
    host's firewall as Docker leaves it."""
    router, uplink = router_with_uplink(make_netns, f"{ROUTER}/24", f"{HOST_IP}/24")
    metadata, other, md_bridge = make_netns(), make_netns(), unique("md")
    run("ip", "route", "add", "198.51.100.0/24", "via", ROUTER, "dev", uplink)
    run("ip", "link", "add", md_bridge, "type", "bridge")
    run("ip", "addr", "add", "169.254.169.1/24", "dev", md_bridge)
    run("ip", "link", "set", md_bridge, "up")
    for ns, address in ((metadata, MD_IP), (other, "169.254.169.9")):
        host_end = unique("m")
        run("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
        run("ip", "link", "set", host_end, "master", md_bridge, "up")
        ns_exec(ns, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
        ns_exec(ns, "ip", "link", "set", "eth0", "up")
        ns_exec(ns, "ip", "route", "add", "default", "via", "169.254.169.1")
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("metadata-ok\n")
    server = __import__("subprocess").Popen(["ip", "netns", "exec", metadata, "busybox", "httpd", "-f", "-p", "80",
                                             "-h", str(www)])
    yield {"router": router, "uplink": uplink, "md_bridge": md_bridge, "other": other}
    server.kill()
    server.wait()
    run("ip", "link", "del", md_bridge, check=False)
    run("ip", "link", "del", uplink, check=False)


def flat_config(env, rig, **extra):
    bridge = unique("fl")
    env.bridges.append(bridge)
    config = {"cniVersion": "1.0.0", "name": unique("flat"), "type": "rancher-flat", "bridge": bridge,
              "parent": rig["uplink"], "stateDir": str(env.state),
              "metadata": {"ip": MD_IP, "linkIP": LINK_IP, "bridge": rig["md_bridge"]},
              "ipam": {"type": "rancher-ipam", "dataDir": str(env.state),
                       "ranges": [[{"subnet": SUBNET, "rangeStart": "192.168.77.100",
                                    "rangeEnd": "192.168.77.150", "gateway": ROUTER}]]}}
    config.update(extra)
    return config


def ebtables_rules():
    """Rules and our chains (the built-in chains of a table that did not exist
    before stay, empty: ebtables makes them on first use)."""
    return [line for line in run("ebtables-save").stdout.splitlines() if line.startswith("-A") or "RFLAT" in line]


def uplink_state(uplink):
    link = json.loads(run("ip", "-j", "-d", "addr", "show", "dev", uplink).stdout)[0]
    routes = json.loads(run("ip", "-j", "route", "show", "dev", uplink).stdout)
    return {"master": link.get("master"), "addresses": sorted(a["local"] for a in link["addr_info"] if a["scope"] == "global"),
            "routes": sorted((r["dst"], r.get("gateway")) for r in routes)}


def test_flat_network_end_to_end(fresh_host_sysctls, cni_daemon_env, make_netns, rig):
    """From a fresh host's sysctls (forwarding off, no dockerd ever ran): the
    plug-in turns on the forwarding its metadata link needs."""
    env = cni_daemon_env
    assert sysctls.read("net/ipv4/ip_forward") == "0"
    before = uplink_state(rig["uplink"])
    ebtables_before = ebtables_rules()
    config = flat_config(env, rig)
    a, b = make_netns(), make_netns()
    code, ra = env.exec("ADD", config, a, container_id="ca")
    assert code == 0, ra
    _, rb = env.exec("ADD", config, b, container_id="cb")
    ip_a, ip_b = (r["ips"][0]["address"].split("/")[0] for r in (ra, rb))
    assert LINK_IP not in (ip_a, ip_b)
    assert sysctls.read("net/ipv4/ip_forward") == "1", "the metadata link is routed: ADD turns forwarding on"

    # the host's address moved from the uplink to the flat bridge, the uplink is a port
    assert uplink_state(rig["uplink"])["master"] == config["bridge"]
    assert HOST_IP in run("ip", "-o", "addr", "show", "dev", config["bridge"]).stdout

    # business network: router <-> containers, container <-> container, no NAT
    assert ping(rig["router"], ip_a) and ping(a, ROUTER) and ping(a, ip_b)
    routes = ns_exec(a, "ip", "route").stdout
    assert f"default via {ROUTER}" in routes and f"{MD_IP} via {LINK_IP}" in routes

    # metadata over the link; nothing else on that bridge; no ARP for the link address upstream
    with capture(rig["router"], "wan0", seconds=3) as frames:
        ns_exec(a, "ip", "neigh", "flush", "all")
        fetched = ns_exec(a, "wget", "-q", "-T", "3", "-t", "1", "-O", "-", f"http://{MD_IP}/", check=False)
    assert fetched.stdout == "metadata-ok\n", fetched.stderr
    assert arp_requests_for(frames, LINK_IP) == [], "an ARP request for the link address left the host"
    ns_exec(a, "ip", "route", "add", "169.254.169.9/32", "via", LINK_IP)
    assert not ping(a, "169.254.169.9"), "the link let through traffic to another address"
    ns_exec(a, "ip", "route", "replace", "169.254.169.9/32", "via", HOST_IP)
    assert not ping(a, "169.254.169.9"), "the host routed a container into the metadata bridge"

    # anti-spoofing: a forged source IP never reaches the router
    ns_exec(b, "ip", "addr", "add", "192.168.77.140/24", "dev", "eth0")
    with capture(rig["router"], "wan0", seconds=3) as frames:
        ns_exec(b, "ping", "-c", "2", "-W", "1", "-I", "192.168.77.140", ROUTER, check=False)
    assert ipv4_from(frames, "192.168.77.140") == []
    ns_exec(b, "ip", "addr", "del", "192.168.77.140/24", "dev", "eth0")
    ns_exec(b, "ip", "link", "set", "eth0", "address", "02:00:00:00:66:66")
    with capture(rig["router"], "wan0", seconds=3) as frames:
        ns_exec(b, "ping", "-c", "2", "-W", "1", ROUTER, check=False)
    assert ipv4_from(frames, ip_b) == [], "a forged source MAC reached the router"

    for netns, cid, result in ((a, "ca", ra), (b, "cb", rb)):
        assert env.exec("DEL", dict(config, prevResult=result), netns, container_id=cid)[0] == 0
    # the previous version's NOTRACK rule, as a host upgraded without a new ADD still has it: removal takes it too
    flat = load_network(config)
    for tool in ("iptables", "ip6tables"):
        run(tool, "-w", "-t", "raw", "-A", *flatnet._legacy_notrack_rule(flat))
    assert run("nft", "list", "table", "inet", flatnet._notrack_table(flat), check=False).returncode == 0
    flatnet.remove(flat)
    for tool in ("iptables-save", "ip6tables-save"):
        assert "NOTRACK" not in run(tool, "-t", "raw").stdout
    assert run("nft", "list", "table", "inet", flatnet._notrack_table(flat), check=False).returncode != 0
    assert uplink_state(rig["uplink"]) == before
    assert ebtables_rules() == ebtables_before
    assert LINK_IP not in run("ip", "addr", "show", "dev", rig["md_bridge"]).stdout
    assert str(load_network(config).table) not in run("ip", "rule").stdout


@pytest.mark.parametrize("change,fragment", [
    ({"parent": "rcnitnosuch0"}, "does not exist"),
    ({"metadata": {"linkIP": "10.9.9.9", "bridge": "x"}}, "outside the subnet"),
    ({"metadata": {"ip": MD_IP, "linkIP": LINK_IP, "bridge": "rcnitnomd0"}}, "rcnitnomd0 does not exist"),
])
def test_bad_flat_options_fail_clearly_and_change_nothing(cni_env, make_netns, rig, change, fragment):
    before = uplink_state(rig["uplink"])
    config = flat_config(cni_env, rig, **change)
    code, error = cni_env.exec("ADD", config, make_netns())
    assert code != 0 and fragment in error["msg"]
    assert uplink_state(rig["uplink"]) == before and cni_env.allocations() == []


def host_side(bridge: str) -> tuple:
    """The bridge's ports and every nftables rule (counters blanked)."""
    ports = sorted(line.split(":")[1].strip() for line in run("ip", "-o", "link", "show", "master", bridge)
                   .stdout.splitlines())
    ruleset = re.sub(r"counter packets \d+ bytes \d+", "counter", run("nft", "list", "ruleset").stdout)
    return ports, ruleset


@pytest.mark.parametrize("fast_path", [True, False])
def test_an_add_whose_firewall_check_fails_beside_the_attachment_leaves_nothing(direct_env, make_netns, rig,
                                                                                 tmp_path, fast_path):
    """The network's firewall half is checked while the container is attached:
    when it fails (ebtables-save failing, a tool outside the project), the
    attachment made meanwhile is undone."""
    config = flat_config(direct_env, rig, fastPath=fast_path)
    first = make_netns()
    code, result = direct_env.exec("ADD", config, first, container_id="c1")
    assert code == 0, result
    before, allocations = host_side(config["bridge"]), direct_env.allocations()
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    (fake / "ebtables-save").write_text("#!/bin/sh\necho 'table busy' >&2\nexit 1\n")
    (fake / "ebtables-save").chmod(0o755)
    code, error = direct_env.exec("ADD", config, make_netns(), container_id="c2",
                                  env={"PATH": f"{fake}:{os.environ['PATH']}"})
    assert code != 0 and error["code"] == 105 and "table busy" in error["details"], error
    assert host_side(config["bridge"]) == before and direct_env.allocations() == allocations
    assert direct_env.exec("DEL", dict(config, prevResult=result), first, container_id="c1")[0] == 0
    flatnet.remove(load_network(config))


def test_a_parent_serves_one_flat_network(cni_daemon_env, make_netns, rig):
    first = flat_config(cni_daemon_env, rig)
    netns = make_netns()
    _, result = cni_daemon_env.exec("ADD", first, netns)
    second = flat_config(cni_daemon_env, rig)
    code, error = cni_daemon_env.exec("ADD", second, make_netns())
    assert code != 0 and "already part of" in error["msg"]
    assert cni_daemon_env.exec("DEL", dict(first, prevResult=result), netns)[0] == 0
    lock = os.path.join(flatnet.LOCK_DIR, f"flat-{load_network(first).bridge}.lock")
    assert os.path.exists(lock)  # taken by the ADD
    flatnet.remove(load_network(first))
    assert not os.path.exists(lock), "the network's lock file goes with the network"


def test_containers_on_two_hosts_share_one_upstream(tmp_path, make_netns):
    """Two hosts (namespaces running the plug-ins themselves), each with its own
    uplink to the same switch, each with its own IPAM range of the subnet."""
    from tests.conftest import CNIEnv
    router = make_netns()
    ns_exec(router, "ip", "link", "add", "sw", "type", "bridge")
    ns_exec(router, "ip", "addr", "add", f"{ROUTER}/24", "dev", "sw")
    ns_exec(router, "ip", "link", "set", "sw", "up")
    containers = []
    for n, first in ((1, 100), (2, 150)):
        host = make_netns()
        ns_exec(host, "ip", "link", "add", "uplink", "type", "veth", "peer", "name", f"wan{n}", "netns", router)
        ns_exec(router, "ip", "link", "set", f"wan{n}", "master", "sw", "up")
        ns_exec(host, "ip", "link", "set", "uplink", "up")
        ns_exec(host, "ip", "link", "add", "docker0", "type", "bridge")
        ns_exec(host, "ip", "link", "set", "docker0", "up")
        (tmp_path / f"host{n}").mkdir()
        env = CNIEnv(tmp_path / f"host{n}", daemon=False)
        config = {"cniVersion": "1.0.0", "name": "flatnet", "type": "rancher-flat", "bridge": "flat0",
                  "parent": "uplink", "stateDir": str(env.state),
                  "metadata": {"ip": MD_IP, "linkIP": LINK_IP, "bridge": "docker0"},
                  "ipam": {"type": "rancher-ipam", "dataDir": str(env.state),
                           "ranges": [[{"subnet": SUBNET, "rangeStart": f"192.168.77.{first}",
                                        "rangeEnd": f"192.168.77.{first + 49}", "gateway": ROUTER}]]}}
        netns = make_netns()
        code, result = env.exec("ADD", config, netns, container_id=f"c{n}", host_netns=host)
        assert code == 0, result
        containers.append((env, config, netns, host, f"c{n}", result))
    (_, _, a, _, _, ra), (_, _, b, _, _, rb) = containers
    ip_a, ip_b = ra["ips"][0]["address"].split("/")[0], rb["ips"][0]["address"].split("/")[0]
    assert ip_a.startswith("192.168.77.1") and ip_b != ip_a
    assert ping(a, ip_b) and ping(b, ip_a) and ping(router, ip_a)
    for env, config, netns, host, container_id, result in containers:
        assert env.exec("DEL", dict(config, prevResult=result), netns, container_id=container_id, host_netns=host)[0] == 0
        assert env.allocations() == []


def test_vlan_sub_interface_or_a_clear_kernel_error(cni_env, make_netns, rig):
    before = uplink_state(rig["uplink"])
    config = flat_config(cni_env, rig, vlan=42)
    netns = make_netns()
    code, out = cni_env.exec("ADD", config, netns)
    if code != 0:
        assert out["code"] == 106 and "802.1q" in out["msg"]
        assert uplink_state(rig["uplink"]) == before and cni_env.allocations() == []
        pytest.skip("this kernel lacks 802.1q VLAN links: " + out["msg"])
    assert f"{rig['uplink'][:10]}.42" in run("ip", "-o", "link", "show", "master", config["bridge"]).stdout
    assert cni_env.exec("DEL", dict(config, prevResult=out), netns)[0] == 0
    flatnet.remove(load_network(config))
    assert uplink_state(rig["uplink"]) == before


def forward_counters(ip: str) -> int:
    """Packets counted by the container's iptables FORWARD rules: what the
    bridge handed to br_netfilter for it."""
    listing = run("iptables", "-w", "-L", "-v", "-x", "-n").stdout  # its rules are in a chain of its own
    return sum(int(line.split()[0]) for line in listing.splitlines() if f" {ip} " in f" {line} ")


def fast_path_packets(flat, tag: str) -> int:
    listing = json.loads(run("nft", "-j", "list", "chain", "netdev", f"rancher_flat_{flat.suffix}", tag).stdout)
    return sum(expr["counter"]["packets"] for entry in listing["nftables"] if "rule" in entry
               for expr in entry["rule"]["expr"] if "counter" in expr)


@pytest.mark.parametrize("fast_path", [True, False])
def test_fast_path_takes_router_traffic_off_the_bridge(cni_daemon_env, make_netns, rig, fast_path):
    """With the fast path, unicast between a container and the router never
    reaches br_netfilter (the gap to macvlan); traffic between containers and
    to the metadata link still crosses the bridge; DEL and network removal
    leave nothing of it."""
    env = cni_daemon_env
    config = flat_config(env, rig, fastPath=fast_path)
    flat = load_network(config)
    a, b = make_netns(), make_netns()
    _, ra = env.exec("ADD", config, a, container_id="ca")
    _, rb = env.exec("ADD", config, b, container_id="cb")
    ip_a, ip_b = (r["ips"][0]["address"].split("/")[0] for r in (ra, rb))
    assert ping(a, ROUTER) and ping(rig["router"], ip_a)
    bridged = forward_counters(ip_a)
    if fast_path:
        assert bridged == 0, "router traffic walked br_netfilter"
        assert fast_path_packets(flat, str(tags.of(tags.FLAT, config["name"], "ca", "eth0"))) > 0
    else:
        assert bridged > 0 and run("nft", "list", "table", "netdev", f"rancher_flat_{flat.suffix}",
                                   check=False).returncode != 0
    assert ping(a, ip_b) and forward_counters(ip_a) > bridged  # containers: over the bridge
    fetched = ns_exec(a, "wget", "-q", "-T", "3", "-t", "1", "-O", "-", f"http://{MD_IP}/", check=False)
    assert fetched.stdout == "metadata-ok\n", fetched.stderr
    assert env.exec("CHECK", dict(config, prevResult=ra), a, container_id="ca")[0] == 0

    mac_a = next(i["mac"] for i in ra["interfaces"] if i.get("sandbox"))
    assert env.exec("DEL", dict(config, prevResult=ra), a, container_id="ca")[0] == 0
    if fast_path:
        left = run("nft", "list", "table", "netdev", f"rancher_flat_{flat.suffix}").stdout
        assert mac_a not in left and left.count("hook ingress") == 2  # the uplink's and b's
    assert env.exec("DEL", dict(config, prevResult=rb), b, container_id="cb")[0] == 0
    flatnet.remove(flat)
    assert run("nft", "list", "table", "netdev", f"rancher_flat_{flat.suffix}", check=False).returncode != 0


def network_rules(flat) -> dict:
    """(chain, handle) -> packets counted, of the fast path's network chains (out, uplink)."""
    listing = json.loads(run("nft", "-j", "list", "table", "netdev", f"rancher_flat_{flat.suffix}").stdout)
    return {(entry["rule"]["chain"], entry["rule"]["handle"]):
            sum(expr["counter"]["packets"] for expr in entry["rule"]["expr"] if "counter" in expr)
            for entry in listing["nftables"] if entry.get("rule", {}).get("chain") in ("out", "uplink")}


def test_an_add_leaves_the_networks_fast_path_rules_alone_when_they_are_in_line(cni_daemon_env, make_netns, rig):
    """Every ADD ensures the network's table; rewriting rules that are in line
    would cost a grace period at nftables' commit and zero the uplink's counter."""
    env = cni_daemon_env
    config = flat_config(env, rig)
    flat = load_network(config)
    a, b = make_netns(), make_netns()
    _, ra = env.exec("ADD", config, a, container_id="ca")
    assert ping(rig["router"], ra["ips"][0]["address"].split("/")[0])
    before = network_rules(flat)
    assert len(before) == 2 and sum(before.values()) > 0
    _, rb = env.exec("ADD", config, b, container_id="cb")
    after = network_rules(flat)
    assert after.keys() == before.keys() and all(after[k] >= before[k] for k in before), (before, after)
    for netns, cid, result in ((a, "ca", ra), (b, "cb", rb)):
        assert env.exec("DEL", dict(config, prevResult=result), netns, container_id=cid)[0] == 0
    flatnet.remove(flat)


def test_the_networks_firewall_is_listed_again_only_after_a_commit_not_ours(direct_env, rig, tmp_path, monkeypatch):
    """Every ADD ensures its network's firewall (ebtables, NOTRACK, the fast
    path's table). While no one commits but our attachments' restores and
    anti-spoofing chains, what the last listing found in place still is, and
    it is not listed again; any other commit, to any rule (the network's own
    making too), makes the next one list, and put right what is missing."""
    from cni_backend import trace
    from cni_backend.net import iptables
    flat = load_network(flat_config(direct_env, rig))
    spans = tmp_path / "trace.jsonl"
    monkeypatch.setenv(trace.ENV, str(spans))  # the listings' own span, as `cnm-shim compare` reads it

    def listings() -> int:
        before = sum(s.get("tool") == "flat listings" for s in trace.spans(str(spans)))
        flatnet.ensure(flat)
        return sum(s.get("tool") == "flat listings" for s in trace.spans(str(spans))) - before

    def ours():  # an attachment's restore, which carries what the listings found
        with iptables.host_lock(), iptables.keeping_listings(1):
            run("iptables-restore", "-w", "--noflush",
                input="*filter\n:RCNI-T-SCRATCH - [0:0]\n-A RCNI-T-SCRATCH -j RETURN\nCOMMIT\n")

    try:
        steps = {"first (makes it)": listings(), "again (finds it)": listings(), "once more": listings()}
        ours()
        steps["after our restore"] = listings()
        jump = next(line for line in ebtables_rules() if line.startswith("-A FORWARD") and "RFLAT-" in line)
        run("ebtables", "-D", *jump.split()[1:])
        steps["after a jump was deleted by hand"] = listings()
        steps["jump back"] = jump in ebtables_rules()
        steps["again after that (finds it)"] = listings()
        steps["once more after that"] = listings()
        run("nft", "add", "table", "inet", "rcni_t_foreign")
        steps["after someone else's table"] = listings()
        assert steps == {"first (makes it)": 1, "again (finds it)": 1, "once more": 0, "after our restore": 0,
                         "after a jump was deleted by hand": 1, "jump back": True, "again after that (finds it)": 1,
                         "once more after that": 0, "after someone else's table": 1}, steps
    finally:
        run("nft", "delete", "table", "inet", "rcni_t_foreign", check=False)
        run("iptables", "-w", "-F", "RCNI-T-SCRATCH", check=False)
        run("iptables", "-w", "-X", "RCNI-T-SCRATCH", check=False)
        flatnet.remove(flat)


def bridge_fdb(bridge: str) -> dict:
    """MAC -> (port, state) of the bridge's entries for its ports."""
    entries = json.loads(run("bridge", "-j", "fdb", "show", "br", bridge).stdout)
    return {e["mac"]: (e["ifname"], e.get("state", "")) for e in entries if e.get("ifname") != bridge}


def test_the_bridge_still_knows_a_fast_path_container_after_ageing(cni_env, make_netns, rig):
    """The fast path hides a container's unicast from the bridge, so what the
    bridge learned would age out; its static entry stays, so frames from the
    host to the container are never flooded."""
    config = flat_config(cni_env, rig)
    a = make_netns()
    _, ra = cni_env.exec("ADD", config, a, container_id="ca")
    mac_a = next(i["mac"] for i in ra["interfaces"] if i.get("sandbox"))
    host_a = next(i["name"] for i in ra["interfaces"] if i["name"].startswith("veth"))
    run("ip", "link", "set", config["bridge"], "type", "bridge", "ageing_time", "100")  # 1 s
    assert ping(a, ROUTER)  # ARP crosses the bridge, the pings take the fast path
    time.sleep(3)
    fdb = bridge_fdb(config["bridge"])
    assert fdb.get(mac_a) == (host_a, "static"), fdb
    assert cni_env.exec("DEL", dict(config, prevResult=ra), a, container_id="ca")[0] == 0
    assert mac_a not in bridge_fdb(config["bridge"])
    flatnet.remove(load_network(config))


def test_stale_fast_path_entries_are_replaced_and_collected(cni_env, make_netns, rig):
    """An entry for a container's MAC left by an attachment whose DEL never
    came is replaced when the MAC is attached again (a repair does it here);
    GC removes the fast path of every attachment not in the valid list."""
    config = flat_config(cni_env, rig)
    flat = load_network(config)
    table = f"rancher_flat_{flat.suffix}"
    a, b = make_netns(), make_netns()
    _, ra = cni_env.exec("ADD", config, a, container_id="ca")
    _, rb = cni_env.exec("ADD", config, b, container_id="cb")
    tag_a, tag_b = (tags.of(tags.FLAT, config["name"], cid, "eth0") for cid in ("ca", "cb"))
    mac_a = next(i["mac"] for i in ra["interfaces"] if i.get("sandbox"))
    host_a = next(i["name"] for i in ra["interfaces"] if i["name"].startswith("veth"))
    run("nft", f"delete element netdev {table} ports {{ {mac_a} }}")
    run("nft", f'add element netdev {table} ports {{ {mac_a} comment "rcni-gone" : "{host_a}" }}')
    flat_fastpath.add_attachment(flat.suffix, tag_a, host_a, mac_a, [ra["ips"][0]["address"]], MD_IP)
    listing = run("nft", "list", "table", "netdev", table).stdout
    assert "rcni-gone" not in listing and listing.count(mac_a) == 3, listing  # local, ports, a's rule
    assert ping(a, ROUTER) and fast_path_packets(flat, str(tag_a)) > 0

    gc = dict(config, cniVersion="1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "cb", "ifname": "eth0"}]})
    code, out = cni_env.exec("GC", gc, env={"CNI_CONTAINERID": None, "CNI_IFNAME": None})
    assert (code, out) == (0, None), out
    listing = run("nft", "list", "table", "netdev", table).stdout
    assert str(tag_a) not in listing and mac_a not in listing and str(tag_b) in listing, listing
    assert cni_env.exec("DEL", dict(config, prevResult=rb), b, container_id="cb")[0] == 0
    flatnet.remove(flat)


def test_a_fast_path_made_by_the_previous_version_is_checked_collected_repaired_and_deleted(cni_env, make_netns, rig):
    """The previous version named an attachment's fast-path chain and
    commented its elements with a kind-less tag: CHECK accepts it, GC
    collects it when the attachment is gone, a repair replaces it, DEL removes it."""
    from cni_backend import repair
    config = flat_config(cni_env, rig)
    flat = load_network(config)
    table = f"rancher_flat_{flat.suffix}"
    a, b = make_netns(), make_netns()
    results = {"ca": cni_env.exec("ADD", config, a, container_id="ca")[1],
               "cb": cni_env.exec("ADD", config, b, container_id="cb")[1]}
    tag = {cid: tags.of(tags.FLAT, config["name"], cid, "eth0") for cid in results}

    def downgrade(cid):  # what the previous version's add_attachment made: the same, with the old tag
        result = results[cid]
        mac = next(i["mac"] for i in result["interfaces"] if i.get("sandbox"))
        host = next(i["name"] for i in result["interfaces"] if i["name"].startswith("veth"))
        flat_fastpath.remove_attachment(flat.suffix, tag[cid])
        flat_fastpath.add_attachment(flat.suffix, tag[cid].legacy, host, mac, [result["ips"][0]["address"]], MD_IP)

    def legacy_in(listing, cid):  # today's tag starts with the legacy one
        return re.search(rf"{tag[cid].legacy}(?![\w-])", listing) is not None

    for cid in results:
        downgrade(cid)
    listing = run("nft", "list", "table", "netdev", table).stdout
    assert "-flat" not in listing and all(legacy_in(listing, cid) for cid in results), listing
    for cid, netns in (("ca", a), ("cb", b)):
        assert cni_env.exec("CHECK", dict(config, prevResult=results[cid]), netns, container_id=cid)[0] == 0

    gc = dict(config, cniVersion="1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "ca", "ifname": "eth0"}]})
    assert cni_env.exec("GC", gc, env={"CNI_CONTAINERID": None, "CNI_IFNAME": None}) == (0, None)
    listing = run("nft", "list", "table", "netdev", table).stdout
    assert not legacy_in(listing, "cb") and legacy_in(listing, "ca"), listing

    plugin = {k: v for k, v in config.items() if k not in ("cniVersion", "name")}
    conflist = {"cniVersion": config["cniVersion"], "name": config["name"], "plugins": [plugin]}
    repair.restore_attachment(conflist, "ca", f"/var/run/netns/{a}", "eth0", [], {}, results["ca"])
    listing = run("nft", "list", "table", "netdev", table).stdout
    assert not legacy_in(listing, "ca") and listing.count(str(tag["ca"])) == 3, listing  # chain, local, ports
    assert ping(a, ROUTER) and fast_path_packets(flat, str(tag["ca"])) > 0

    downgrade("ca")
    assert cni_env.exec("DEL", dict(config, prevResult=results["ca"]), a, container_id="ca")[0] == 0
    assert "rcni-" not in run("nft", "list", "table", "netdev", table).stdout
    assert cni_env.exec("DEL", dict(config, prevResult=results["cb"]), b, container_id="cb")[0] == 0
    flatnet.remove(flat)
