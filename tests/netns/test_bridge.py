"""rancher-bridge and rancher-ipam through their real executables, in real
namespaces: addresses, routes, rules and IPAM entries are read back from the
kernel and the store, never taken from the plug-in's word."""

import concurrent.futures
import ipaddress
import json
import os
import re

import pytest

from cni_backend import networks
from cni_backend.ipam.store import SQLiteStore
from cni_backend.net import iptables
from tests.conftest import ns_exec, ping, run, unique

pytestmark = pytest.mark.netns


def addresses_in(netns, ifname="eth0"):
    out = json.loads(ns_exec(netns, "ip", "-j", "addr", "show", "dev", ifname).stdout)
    return {f"{a['local']}/{a['prefixlen']}" for a in out[0]["addr_info"] if a["scope"] == "global"}


def tagged_rules():
    """Rules that belong to one attachment (not the shared isolation rules)."""
    rules = []
    for tool in ("iptables-save", "ip6tables-save"):
        rules += [l for l in run(tool).stdout.splitlines() if "rcni-" in l and "rcni-isolation" not in l
                  and " -j RCNI-" not in l]  # not the jumps to each attachment's own chains
    return rules


def test_two_namespaces_on_one_network_ping_each_other(cni_env, make_netns):
    config = cni_env.bridge_config()
    a, b = make_netns(), make_netns()
    code_a, result_a = cni_env.exec("ADD", config, a, container_id="ca")
    code_b, result_b = cni_env.exec("ADD", config, b, container_id="cb")
    assert (code_a, code_b) == (0, 0), (result_a, result_b)
    ip_a = result_a["ips"][0]["address"]
    ip_b = result_b["ips"][0]["address"]
    assert addresses_in(a) == {ip_a} and addresses_in(b) == {ip_b} and ip_a != ip_b
    assert ping(a, ip_b.split("/")[0]) and ping(b, ip_a.split("/")[0])
    sandbox = result_a["interfaces"][2]
    assert sandbox["name"] == "eth0" and sandbox["sandbox"] == f"/var/run/netns/{a}" and sandbox["mac"]
    for netns, cid in ((a, "ca"), (b, "cb")):
        assert cni_env.exec("DEL", dict(config, prevResult=result_a), netns, container_id=cid)[0] == 0


def test_del_is_idempotent_and_works_when_the_netns_is_gone(cni_env, make_netns):
    config = cni_env.bridge_config()
    a, b = make_netns(), make_netns()
    assert cni_env.exec("ADD", config, a, container_id="ca")[0] == 0
    code, result_b = cni_env.exec("ADD", config, b, container_id="cb")
    assert code == 0 and len(tagged_rules()) == 4
    for _ in range(2):
        assert cni_env.exec("DEL", config, a, container_id="ca") == (0, None)
    run("ip", "netns", "del", b)
    for _ in range(2):
        assert cni_env.exec("DEL", dict(config, prevResult=result_b), b, container_id="cb") == (0, None)
    assert cni_env.allocations() == [] and tagged_rules() == []


def test_check_passes_then_fails_when_an_address_is_removed_by_hand(cni_env, make_netns):
    config = cni_env.bridge_config()
    a = make_netns()
    _, result = cni_env.exec("ADD", config, a)
    checked = dict(config, prevResult=result)
    assert cni_env.exec("CHECK", checked, a) == (0, None)
    ns_exec(a, "ip", "addr", "del", result["ips"][0]["address"], "dev", "eth0")
    code, error = cni_env.exec("CHECK", checked, a)
    assert code != 0 and error["code"] == 109 and "missing" in error["msg"]
    assert cni_env.exec("DEL", checked, a)[0] == 0


def test_fifty_parallel_adds_get_distinct_addresses_and_del_frees_them(cni_daemon_env, make_netns):
    env = cni_daemon_env
    config = env.bridge_config(subnet="10.124.0.0/24")
    namespaces = [make_netns() for _ in range(50)]

    def attach(i):
        return env.exec("ADD", config, namespaces[i], container_id=f"c{i}")

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(attach, range(50)))
    assert [code for code, _ in results] == [0] * 50, [r for c, r in results if c]
    addresses = {r["ips"][0]["address"] for _, r in results}
    assert len(addresses) == 50 and len(env.allocations()) == 50
    assert ping(namespaces[0], results[49][1]["ips"][0]["address"].split("/")[0])

    def detach(i):
        return env.exec("DEL", dict(config, prevResult=results[i][1]), namespaces[i], container_id=f"c{i}")

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        assert [code for code, _ in pool.map(detach, range(50))] == [0] * 50
    assert env.allocations() == [] and tagged_rules() == []


@pytest.mark.parametrize("case,stdin,env,code", [
    ("garbage stdin", b"\x00{not json", {}, 6),
    ("missing CNI_CONTAINERID", None, {"CNI_CONTAINERID": None}, 4),
    ("unknown version", None, {}, 1),
])
def test_bad_input_gets_the_spec_error_code_and_changes_nothing(cni_env, make_netns, case, stdin, env, code):
    config = cni_env.bridge_config()
    if case == "unknown version":
        config["cniVersion"] = "0.2.0"
    netns = make_netns()
    got, error = cni_env.exec("ADD", config, netns, stdin=stdin, env=env)
    assert got != 0 and error["code"] == code and error["msg"]
    assert set(error) == {"cniVersion", "code", "msg", "details"}
    assert cni_env.allocations() == [] and tagged_rules() == []
    assert "eth0" not in ns_exec(netns, "ip", "-o", "link").stdout


def test_add_is_undone_when_a_later_step_fails(cni_env, make_netns):
    # A route whose gateway is not on any link makes the kernel refuse it, after
    # IPAM, the veth, the bridge port and the addresses were already made.
    config = cni_env.bridge_config()
    config["ipam"]["routes"] = [{"dst": "192.0.2.0/24", "gw": "198.51.100.1"}]
    netns = make_netns()
    code, error = cni_env.exec("ADD", config, netns)
    assert code != 0 and error["code"] == 104 and "192.0.2.0/24" in error["msg"]
    assert cni_env.allocations() == [] and tagged_rules() == []
    assert "eth0" not in ns_exec(netns, "ip", "-o", "link").stdout
    ports = run("ip", "-o", "link", "show", "master", config["bridge"]).stdout
    assert ports.strip() == ""


def test_a_repeated_add_fails_and_keeps_the_first_attachment(cni_env, make_netns):
    config = cni_env.bridge_config()
    netns = make_netns()
    _, first = cni_env.exec("ADD", config, netns)
    code, error = cni_env.exec("ADD", config, netns)
    assert code != 0 and error["code"] == 103
    assert [a[3] for a in cni_env.allocations()] == [first["ips"][0]["address"].split("/")[0]]
    assert addresses_in(netns) == {first["ips"][0]["address"]}
    assert cni_env.exec("DEL", dict(config, prevResult=first), netns)[0] == 0


def test_gateway_default_route_masquerade_mtu_and_mac(cni_env, make_netns):
    config = cni_env.bridge_config(isDefaultGateway=True, ipMasq=True, mtu=1400, hairpinMode=True,
                                   promiscMode=True, runtimeConfig={"mac": "02:42:ac:11:00:99"})
    netns = make_netns()
    code, result = cni_env.exec("ADD", config, netns)
    assert code == 0, result
    bridge = json.loads(run("ip", "-j", "-d", "addr", "show", "dev", config["bridge"]).stdout)[0]
    assert {a["local"] for a in bridge["addr_info"]} >= {"10.123.0.1"}
    assert "PROMISC" in bridge["flags"]
    link = json.loads(ns_exec(netns, "ip", "-j", "link", "show", "eth0").stdout)[0]
    assert link["mtu"] == 1400 and link["address"] == "02:42:ac:11:00:99"
    assert result["interfaces"][2]["mac"] == "02:42:ac:11:00:99"
    routes = json.loads(ns_exec(netns, "ip", "-j", "route").stdout)
    assert {"dst": "default", "gateway": "10.123.0.1"}.items() <= routes[0].items()
    port = json.loads(run("ip", "-j", "-d", "link", "show", result["interfaces"][1]["name"]).stdout)[0]
    assert port["linkinfo"]["info_slave_data"]["hairpin"] is True
    # the attachment's masquerade rules, in its own chain jumped to from ours
    [own] = re.findall(r"-j (RCNI-\w+)$", run("iptables", "-t", "nat", "-S", "RANCHER-CNI-MASQ").stdout, re.M)
    nat = run("iptables", "-t", "nat", "-S", own).stdout
    assert "MASQUERADE" in nat and result["ips"][0]["address"].split("/")[0] in nat
    assert ping(netns, "10.123.0.1")
    assert cni_env.exec("DEL", dict(config, prevResult=result), netns)[0] == 0
    assert tagged_rules() == []


def test_dual_stack_namespaces_ping_over_ipv6(cni_env, make_netns):
    config = cni_env.bridge_config()
    config["ipam"]["ranges"].append([{"subnet": "fd00:123::/64"}])
    a, b = make_netns(), make_netns()
    _, ra = cni_env.exec("ADD", config, a, container_id="ca")
    _, rb = cni_env.exec("ADD", config, b, container_id="cb")
    v6_b = [ip["address"] for ip in rb["ips"] if ":" in ip["address"]][0]
    assert ipaddress.ip_interface(v6_b) in {ipaddress.ip_interface(x) for x in addresses_in(b)}
    assert ns_exec(a, "ping", "-6", "-c", "1", "-W", "3", v6_b.split("/")[0], check=False).returncode == 0
    assert any("ip6" in r or ":" in r for r in tagged_rules())
    for netns, cid, result in ((a, "ca", ra), (b, "cb", rb)):
        assert cni_env.exec("DEL", dict(config, prevResult=result), netns, container_id=cid)[0] == 0


def test_requested_address_from_cni_args_and_a_clash(cni_env, make_netns):
    config = cni_env.bridge_config()
    a, b = make_netns(), make_netns()
    code, result = cni_env.exec("ADD", config, a, container_id="ca", env={"CNI_ARGS": "IgnoreUnknown=1;IP=10.123.0.77"})
    assert code == 0 and result["ips"][0]["address"] == "10.123.0.77/24"
    rules_of_a = tagged_rules()
    code, error = cni_env.exec("ADD", dict(config, args={"cni": {"ips": ["10.123.0.77"]}}), b, container_id="cb")
    assert code != 0 and error["code"] == 101 and "in use" in error["msg"]
    assert "eth0" not in ns_exec(b, "ip", "-o", "link").stdout
    assert tagged_rules() == rules_of_a and len(rules_of_a) == 2
    assert cni_env.exec("DEL", config, a, container_id="ca")[0] == 0


def test_an_existing_non_bridge_with_the_bridge_name_is_a_clear_error(cni_env, make_netns):
    config = cni_env.bridge_config()
    run("ip", "link", "add", config["bridge"], "type", "veth", "peer", "name", unique("p"))
    code, error = cni_env.exec("ADD", config, make_netns())
    assert code != 0 and "not a bridge" in error["msg"] and cni_env.allocations() == []


def test_macspoofchk_drops_frames_with_another_source_mac(cni_env, make_netns):
    config = cni_env.bridge_config(macspoofchk=True)
    a, b = make_netns(), make_netns()
    _, ra = cni_env.exec("ADD", config, a, container_id="ca")
    _, rb = cni_env.exec("ADD", config, b, container_id="cb")
    target = rb["ips"][0]["address"].split("/")[0]
    assert ping(a, target)
    assert ra["interfaces"][1]["name"] in run("nft", "list", "table", "bridge", "rancher_cni").stdout
    ns_exec(a, "ip", "link", "set", "eth0", "address", "02:00:00:00:be:ef")
    ns_exec(a, "ip", "neigh", "flush", "all")
    assert not ping(a, target)
    for netns, cid in ((a, "ca"), (b, "cb")):
        assert cni_env.exec("DEL", config, netns, container_id=cid)[0] == 0
    assert "rancher_cni" not in run("nft", "list", "tables").stdout


def test_vlan_needs_bridge_vlan_filtering(cni_env, make_netns):
    config = cni_env.bridge_config(vlan=100)
    netns = make_netns()
    code, out = cni_env.exec("ADD", config, netns)
    if code != 0:
        assert out["code"] == 106 and "vlan_filtering" in out["msg"]
        assert cni_env.allocations() == []
        pytest.skip("this kernel lacks bridge VLAN filtering: " + out["msg"])
    vlans = run("bridge", "-j", "vlan", "show", "dev", out["interfaces"][1]["name"]).stdout
    assert '"vlan":100' in vlans.replace(" ", "")
    assert cni_env.exec("DEL", config, netns)[0] == 0


def test_gc_releases_attachments_not_in_the_valid_list(cni_env, make_netns):
    config = cni_env.bridge_config()
    namespaces = [make_netns() for _ in range(3)]
    for i, netns in enumerate(namespaces):
        assert cni_env.exec("ADD", config, netns, container_id=f"c{i}")[0] == 0
    gc = dict(config, **{"cni.dev/valid-attachments": [{"containerID": "c0", "ifname": "eth0"}]})
    assert len(tagged_rules()) == 6
    assert cni_env.exec("GC", gc, env={"CNI_CONTAINERID": None, "CNI_IFNAME": None}) == (0, None)
    assert [a[1] for a in cni_env.allocations()] == ["c0"]
    assert len(tagged_rules()) == 2  # only c0's rules are left
    for i, netns in enumerate(namespaces):
        assert cni_env.exec("DEL", config, netns, container_id=f"c{i}")[0] == 0


def test_status_and_version(cni_env):
    config = cni_env.bridge_config()
    assert cni_env.exec("STATUS", config, env={"CNI_CONTAINERID": None, "CNI_IFNAME": None}) == (0, None)
    code, out = cni_env.exec("VERSION", config, stdin=b"")
    assert code == 0 and "1.1.0" in out["supportedVersions"]


def test_two_networks_are_isolated_unless_a_namespace_is_on_both(cni_env, make_netns):
    red = cni_env.bridge_config(subnet="10.127.1.0/24")
    blue = cni_env.bridge_config(subnet="10.127.2.0/24")
    a, b = make_netns(), make_netns()
    _, ra = cni_env.exec("ADD", red, a, container_id="ca")
    _, rb = cni_env.exec("ADD", blue, b, container_id="cb")
    target = rb["ips"][0]["address"].split("/")[0]
    ns_exec(a, "ip", "route", "add", "10.127.2.0/24", "via", "10.127.1.1")
    assert ping(a, "10.127.1.1") and not ping(a, target), "red reached blue through the host"
    ns_exec(a, "ip", "route", "del", "10.127.2.0/24")
    _, second = cni_env.exec("ADD", blue, a, container_id="ca", ifname="eth1")
    assert ping(a, target), "a namespace on both networks reaches blue directly"
    for config, netns, cid, ifname in ((red, a, "ca", "eth0"), (blue, a, "ca", "eth1"), (blue, b, "cb", "eth0")):
        assert cni_env.exec("DEL", config, netns, container_id=cid, ifname=ifname)[0] == 0
    assert "RANCHER-CNI" not in run("iptables-save").stdout


@pytest.mark.parametrize("path", ["/dev/null", "/proc/self/ns/uts", "/", "/nonexistent/netns"])
def test_add_into_what_is_not_a_network_namespace_is_code_3(cni_env, path):
    """Found by the CNI fuzz in CI: /dev/null reached setns(2) and came back as code 100."""
    code, answer = cni_env.exec("ADD", cni_env.bridge_config(), netns=path)
    assert code != 0 and answer["code"] == 3 and "network namespace" in answer["msg"], answer
    assert cni_env.allocations() == []


def shared_rules():
    """Our chains, their jumps and the isolation rules: what a network's attachments share."""
    return sorted(line for tool in ("iptables-save", "ip6tables-save") for line in run(tool).stdout.splitlines()
                  if ("RANCHER-CNI" in line or "rcnibr-" in line) and "RCNI-" not in line)


HOLDS = {"CNI_ARGS": "IgnoreUnknown=1;RANCHER_NETWORK_HOLDS_RULES=true"}


def test_a_network_that_holds_its_shared_rules_keeps_them_until_it_is_released(direct_env, make_netns, tmp_path):
    """The shim's DEL at DeleteEndpoint (RANCHER_NETWORK_HOLDS_RULES): the
    network's last DEL leaves the chains and isolation rules its attachments
    shared, in line as doctor sees it; its next first ADD appends to them
    without listing the tables (an iptables-save that fails is never run);
    another network's last DEL leaves them; the network's removal
    (networks.forget) takes them."""
    cni_env = direct_env
    held, other = cni_env.bridge_config(), cni_env.bridge_config(subnet="10.127.3.0/24")
    try:
        a, b = make_netns(), make_netns()
        assert shared_rules() == []
        code, result = cni_env.exec("ADD", held, a, container_id="ca")
        assert code == 0, result
        shared = shared_rules()
        code, error = cni_env.exec("DEL", dict(held, prevResult=result), a, container_id="ca",
                                   env={"CNI_ARGS": "RANCHER_NETWORK_HOLDS_RULES=yes"})
        assert code != 0 and error["code"] == 7 and "RANCHER_NETWORK_HOLDS_RULES" in error["msg"], error
        assert len(tagged_rules()) == 2, "a refused DEL changed nothing"
        assert cni_env.exec("DEL", dict(held, prevResult=result), a, container_id="ca", env=HOLDS) == (0, None)
        assert tagged_rules() == [] and shared_rules() == shared
        assert iptables.derived_drift() == []

        fake = tmp_path / "fake-bin"
        fake.mkdir()
        for tool in ("iptables-save", "ip6tables-save"):
            (fake / tool).write_text("#!/bin/sh\necho 'listed' >&2\nexit 1\n")
            (fake / tool).chmod(0o755)
        code, result = cni_env.exec("ADD", held, a, container_id="ca", env={"PATH": f"{fake}:{os.environ['PATH']}"})
        assert code == 0, result
        assert len(tagged_rules()) == 2 and shared_rules() == shared
        assert cni_env.exec("DEL", dict(held, prevResult=result), a, container_id="ca", env=HOLDS) == (0, None)

        code, result_b = cni_env.exec("ADD", other, b, container_id="cb")
        assert code == 0 and shared_rules() != shared
        assert cni_env.exec("DEL", dict(other, prevResult=result_b), b, container_id="cb") == (0, None)
        assert shared_rules() == shared and iptables.derived_drift() == []
    finally:  # failed half-way too: the hold ends with the network
        networks.forget(held["name"], SQLiteStore(str(cni_env.state)))
    assert shared_rules() == [] and iptables.derived_drift() == []
