"""The VXLAN registry trusts no etcd value: each attack on the agent's
view of who is where, refused (issue 15, item 5). The kernel side (FDB,
neighbours, the UDP port's guard) is in tests/netns/test_vxlan_registry.py."""

import base64
import ipaddress
import json
import logging
import subprocess
import sys

import pytest

from cni_backend import vxlan_registry as registry
from cni_backend.errors import CNIError
from cni_backend.ipam import config as ipam_config
from cni_backend.ipam.etcd_store import check_endpoints
from cni_backend.net import tags, vxlan_guard

ROOT = "/rancher-cni/vxlan/hosts/"
VNI = 1042
SUBNETS = [registry.Subnet(ipaddress.ip_network("10.42.0.0/16"), ipaddress.ip_address("10.42.0.1"))]
ME = "10.99.0.1"
HONEST, ATTACKER = "10.99.0.2", "10.99.0.3"


def vtep_row(host, revision=1, value=None):
    return (f"{ROOT}{host}/{VNI}/vtep", json.dumps(value if value is not None else {"vtep": host}).encode(), str(revision))


def endpoint_row(host, ip, mac, revision=2, vtep=None, key_ip=None):
    value = {"ip": ip, "mac": mac, "vtep": vtep or host}
    return (f"{ROOT}{host}/{VNI}/endpoints/{key_ip or ip}", json.dumps(value).encode(), str(revision))


HONEST_ROWS = [vtep_row(HONEST), endpoint_row(HONEST, "10.42.2.2", "02:42:0a:2a:02:02")]


def view(rows, local=None):
    return registry.select(ROOT, rows, VNI, SUBNETS, ME, local or {})


def assert_only_honest(result, bad_keys):
    assert {ip: (e.mac, e.vtep) for ip, e in result.endpoints.items()} == {"10.42.2.2": ("02:42:0a:2a:02:02", HONEST)}
    assert set(result.bad) == set(bad_keys)


def test_the_honest_hosts_entries_are_programmed():
    result = view(HONEST_ROWS)
    assert result.vteps == {HONEST} and list(result.endpoints) == ["10.42.2.2"] and result.bad == {}


def test_an_entry_claiming_the_gateway_ip_is_skipped():
    poison = endpoint_row(ATTACKER, "10.42.0.1", "02:00:00:00:00:66")
    result = view(HONEST_ROWS + [vtep_row(ATTACKER), poison])
    assert "10.42.0.1" not in result.endpoints
    assert "gateway" in result.bad[poison[0]]


def test_an_off_subnet_address_is_skipped():
    poison = endpoint_row(ATTACKER, "8.8.8.8", "02:00:00:00:00:66")
    result = view(HONEST_ROWS + [poison])
    assert "8.8.8.8" not in result.endpoints and "outside the network's subnets" in result.bad[poison[0]]


@pytest.mark.parametrize("ip", ["10.42.0.0", "10.42.255.255"])
def test_the_network_and_broadcast_addresses_are_skipped(ip):
    poison = endpoint_row(ATTACKER, ip, "02:00:00:00:00:66")
    assert ip not in view([poison]).endpoints


@pytest.mark.parametrize("mac", ["ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "00:00:00:00:00:00", "33:33:00:00:00:01",
                                 "02:42:0a:2a:02", "zz:zz:zz:zz:zz:zz", None, 7])
def test_a_broadcast_multicast_zero_or_malformed_mac_is_skipped(mac):
    poison = endpoint_row(ATTACKER, "10.42.3.3", mac)
    result = view(HONEST_ROWS + [poison])
    assert "10.42.3.3" not in result.endpoints and poison[0] in result.bad
    assert_only_honest(result, [poison[0]])


def test_a_key_without_vtep_is_skipped_and_every_other_host_still_programmed():
    """Today's code raised KeyError on it every round: nothing was programmed anywhere."""
    poison = vtep_row(ATTACKER, value={"nothing": "here"})
    result = view(HONEST_ROWS + [poison])
    assert_only_honest(result, [poison[0]])


def test_an_entry_naming_a_vtep_other_than_the_host_it_is_registered_under_is_skipped():
    """A host registers a container behind a foreign VTEP (the honest host's,
    or the gateway's): only the VTEP of the key's own host counts."""
    foreign = endpoint_row(ATTACKER, "10.42.3.3", "02:00:00:00:00:66", vtep=HONEST)
    foreign_vtep = vtep_row(ATTACKER, value={"vtep": "10.42.0.1"})
    result = view(HONEST_ROWS + [foreign, foreign_vtep])
    assert ATTACKER not in result.vteps and "10.42.0.1" not in result.vteps
    assert_only_honest(result, [foreign[0], foreign_vtep[0]])


def test_a_later_entry_cannot_override_another_hosts_container():
    """Same address or same MAC as the honest host's container, registered
    after it: the earliest claim wins, whatever the key order."""
    same_ip = endpoint_row(ATTACKER, "10.42.2.2", "02:00:00:00:00:66", revision=9)
    same_mac = endpoint_row(ATTACKER, "10.42.3.3", "02:42:0a:2a:02:02", revision=9)
    for rows in ([*HONEST_ROWS, vtep_row(ATTACKER), same_ip, same_mac], [same_mac, same_ip, *HONEST_ROWS]):
        result = view(rows)
        assert "already registered by host 10.99.0.2" in result.bad[same_ip[0]]
        assert_only_honest(result, [same_ip[0], same_mac[0]])


def test_a_remote_claim_on_this_hosts_own_container_is_skipped():
    local = {"10.42.1.2": "02:42:0a:2a:01:02"}
    same_ip = endpoint_row(ATTACKER, "10.42.1.2", "02:00:00:00:00:66")
    same_mac = endpoint_row(ATTACKER, "10.42.3.3", "02:42:0a:2a:01:02")
    result = view(HONEST_ROWS + [same_ip, same_mac], local)
    assert_only_honest(result, [same_ip[0], same_mac[0]])


@pytest.mark.parametrize("key_ip, value_ip", [("10.42.3.3", "10.42.3.4"), ("10.042.3.3", "10.042.3.3"),
                                              ("10.42.3.3/16", "10.42.3.3/16")])
def test_an_address_that_differs_from_its_key_or_is_not_canonical_is_skipped(key_ip, value_ip):
    poison = endpoint_row(ATTACKER, value_ip, "02:00:00:00:00:66", key_ip=key_ip)
    assert view([poison]).endpoints == {} and list(view([poison]).bad) == [poison[0]]


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255", "gateway", "fd00::1"])
def test_a_host_prefix_that_is_no_unicast_vtep_is_skipped(host):
    poison = vtep_row(host)
    assert view([poison]).vteps == set() and poison[0] in view([poison]).bad


def test_an_oversized_or_non_object_value_is_skipped():
    rows = [(f"{ROOT}{ATTACKER}/{VNI}/vtep", b"[" * 5000, "3"), (f"{ROOT}{ATTACKER}/{VNI}/endpoints/x", b"42", "3")]
    assert view(rows).bad.keys() == {r[0] for r in rows}


def test_another_vnis_entries_are_ignored_without_a_warning():
    other = (f"{ROOT}{HONEST}/7/vtep", json.dumps({"vtep": HONEST}).encode(), "1")
    assert view([other]) == registry.View(set(), {}, {})


def test_without_a_known_subnet_no_remote_endpoint_is_programmed():
    result = registry.select(ROOT, HONEST_ROWS, VNI, [], ME, {})
    assert result.endpoints == {} and "none known on this host yet" in next(iter(result.bad.values()))


class FakeEtcd:
    """What the agent reads: rows as etcd3gw's get_prefix returns them."""

    def __init__(self, rows):
        self.rows = rows

    def get_prefix(self, prefix):
        return [(value, {"key": key.encode(), "create_revision": revision})
                for key, value, revision in self.rows if key.startswith(prefix)]


def test_each_bad_key_is_warned_about_once_not_every_round(tmp_path, caplog):
    poison = vtep_row(ATTACKER, value={"nothing": "here"})
    etcd = FakeEtcd(HONEST_ROWS + [poison])
    agent = registry.Agent(lambda: etcd, "/rancher-cni", VNI, ME, str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="rancher-cni"):
        for _ in range(3):
            assert list(agent.view(SUBNETS).endpoints) == ["10.42.2.2"]
    warnings = [r.getMessage() for r in caplog.records if poison[0] in r.getMessage()]
    assert len(warnings) == 1 and "is not 10.99.0.3" in warnings[0]
    etcd.rows = HONEST_ROWS  # gone, then back: worth one more warning
    agent.view(SUBNETS)
    etcd.rows = HONEST_ROWS + [poison]
    with caplog.at_level(logging.WARNING, logger="rancher-cni"):
        agent.view(SUBNETS)
    assert len([r for r in caplog.records if poison[0] in r.getMessage()]) == 2


def test_the_agent_registers_under_its_own_host_prefix(tmp_path):
    registry.record_endpoint(str(tmp_path), VNI, "c1-eth0", ["10.42.1.2/16"], "02:42:0A:2A:01:02")

    class Recording(FakeEtcd):
        def lease(self, ttl):
            return type("Lease", (), {"id": 1, "refresh": lambda self: ttl})()

        def transaction(self, txn):
            for op in txn["success"]:
                put = op["request_put"]
                assert put["lease"] == 1, "every key under the host's one lease"
                self.rows.append((base64.b64decode(put["key"]).decode(), base64.b64decode(put["value"]), "1"))
            return {"succeeded": True}

    etcd = Recording([])
    registry.Agent(lambda: etcd, "/rancher-cni", VNI, ME, str(tmp_path)).register()
    assert sorted(k for k, _, _ in etcd.rows) == [f"{ROOT}{ME}/{VNI}/endpoints/10.42.1.2", f"{ROOT}{ME}/{VNI}/vtep"]
    # what this host wrote is what every other host accepts from it
    other = registry.select(ROOT, etcd.rows, VNI, SUBNETS, HONEST, {})
    assert other.bad == {} and other.vteps == {ME} and other.endpoints["10.42.1.2"].mac == "02:42:0a:2a:01:02"


def test_local_records_of_the_current_format_are_read_and_a_broken_one_is_passed_over(tmp_path):
    registry.record_endpoint(str(tmp_path), VNI, "c1-eth0", ["10.42.1.2/16", "fd00:42::2/64"], "02:42:0a:2a:01:02")
    directory = tmp_path / "vxlan" / str(VNI)
    (directory / "broken-eth0.json").write_text('{"mac": "02:00:00:00:00:01"}')
    (directory / "junk-eth0.json").write_text("not json")
    registry.record_network(str(tmp_path), VNI, [(ipaddress.ip_network("10.42.0.0/16"), ipaddress.ip_address("10.42.0.1"))])
    assert registry.local_endpoints(str(tmp_path), VNI) == {"10.42.1.2": "02:42:0a:2a:01:02",
                                                             "fd00:42::2": "02:42:0a:2a:01:02"}
    bridge = [ipaddress.ip_interface("fd00:42::1/64")]
    assert set(registry.local_subnets(str(tmp_path), VNI, bridge)) == {
        SUBNETS[0], registry.Subnet(ipaddress.ip_network("fd00:42::/64"), ipaddress.ip_address("fd00:42::1"))}


def test_the_port_guard_accepts_each_peer_then_drops_the_rest_of_the_vni():
    lines = vxlan_guard.rules(VNI, 4789, ["10.99.0.3", "10.99.0.2", "10.99.0.2"])
    tag = str(tags.for_vtep(VNI))
    assert [line.split(" -j ")[-1] for line in lines] == ["ACCEPT", "ACCEPT", "DROP"]
    assert lines[0].startswith("-A INPUT -s 10.99.0.2/32 ") and lines[1].startswith("-A INPUT -s 10.99.0.3/32 ")
    assert all("--dport 4789 " in line and f"=1042 " in line and f"--comment {tag} " in line for line in lines)
    assert tags.parse(tag).kinds == {tags.VTEP}
    for bad in (["10.99.0.2 -j ACCEPT"], ["fd00::1"], ["10.99.0.2\n*filter"]):
        with pytest.raises(ValueError):
            vxlan_guard.rules(VNI, 4789, bad)


def test_with_an_ipset_the_port_guard_is_one_accept_on_the_vnis_set_then_the_drop():
    lines = vxlan_guard.set_rules(VNI, 4789)
    tag = str(tags.for_vtep(VNI))
    assert [line.split(" -j ")[-1] for line in lines] == ["ACCEPT", "DROP"]
    assert "-m set --match-set rcni-vtep-1042 src " in lines[0] and " -s " not in lines[0]
    assert all("--dport 4789 " in line and "=1042 " in line and f"--comment {tag} " in line for line in lines)
    assert vxlan_guard.set_name(16777215) == "rcni-vtep-16777215"
    for vni in (0, 16777216, "1042; x"):
        with pytest.raises(ValueError):
            vxlan_guard.set_name(vni)


@pytest.mark.parametrize("bad", ["10.99.0.2 -j ACCEPT", "fd00::1", "10.99.0.2\n*filter", "10.99.0.256"])
def test_a_bad_peer_address_is_refused_before_the_guard_reaches_the_kernel(bad):
    # refused before the feature is even asked for: nothing needs root here
    for call in (lambda: vxlan_guard.update(VNI, 4789, [], [bad]), lambda: vxlan_guard.update(VNI, 4789, [bad], []),
                 lambda: vxlan_guard.ensure(VNI, 4789, [bad])):
        with pytest.raises(ValueError):
            call()


# -- plain http etcd -------------------------------------------------------------------------

def test_plain_http_etcd_is_refused_without_insecure_etcd():
    with pytest.raises(CNIError) as refused:
        check_endpoints(["https://10.0.0.1:2379", "http://10.0.0.2:2379"], insecure=False)
    assert "http://10.0.0.2:2379 is plain http: refused" in refused.value.msg
    assert "--insecure-etcd" in refused.value.details and "--etcd-ca" in refused.value.details
    assert check_endpoints(["http://10.0.0.2:2379"], insecure=True) == ("http://10.0.0.2:2379",)
    assert check_endpoints(["https://10.0.0.1:2379"], insecure=False) == ("https://10.0.0.1:2379",)


@pytest.mark.parametrize("endpoint", ["ftp://10.0.0.1:2379", "https://", "https://10.0.0.1:x", "10.0.0.1:2379",
                                      "https://10.0.0.1:2379/v3/kv", "unix:///run/etcd.sock"])
def test_an_etcd_endpoint_that_is_no_http_url_is_refused(endpoint):
    with pytest.raises(CNIError, match="is not a URL such as https://"):
        check_endpoints([endpoint], insecure=True)


def test_the_ipam_config_refuses_plain_http_etcd_unless_insecure_etcd_is_true():
    section = {"ranges": [[{"subnet": "10.62.0.0/24"}]], "etcdEndpoints": ["http://10.0.0.2:2379"]}
    with pytest.raises(CNIError) as refused:
        ipam_config.load(section, {})
    assert "plain http" in refused.value.msg and '"insecureEtcd": true' in refused.value.details
    assert ipam_config.load(dict(section, insecureEtcd=True), {}).etcd_endpoints == ("http://10.0.0.2:2379",)


@pytest.mark.parametrize("command", [["vxlan-agent"], ["serve", "--plugin-dir", "/nonexistent-rcnit"],
                                     ["doctor"]])
def test_the_command_line_refuses_plain_http_etcd_with_a_clear_message(command):
    argv = [sys.executable, "-m", "cnm_shim.cli", *command, "--etcd-endpoints", "http://127.0.0.1:9"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)})
    assert done.returncode != 0
    assert "etcd endpoint http://127.0.0.1:9 is plain http: refused" in done.stderr + done.stdout
    assert "--insecure-etcd" in done.stderr + done.stdout


def test_serve_settings_reach_the_conflists_ipam_section_and_back():
    """--insecure-etcd and the etcd user, rendered by the Docker side and read
    by rancher-ipam: the same settings on both sides."""
    from cnm_shim import render
    tls = {"ca": "/etc/r/ca.pem", "cert": "/etc/r/h.pem", "key": "/etc/r/h.key", "user": "rancher-host-10.0.0.2",
           "password_file": "/etc/r/etcd.password"}
    data = [{"Pool": "10.62.0.0/24", "Gateway": "10.62.0.1/24", "AddressSpace": "", "AuxAddresses": {}}]
    section = render.ipam_section(data, [], "/var/lib/rancher-cni", {}, ("http://10.0.0.1:2379",), tls, True)
    assert section["insecureEtcd"] is True and section["etcdUser"] == "rancher-host-10.0.0.2"
    assert section["etcdPasswordFile"] == "/etc/r/etcd.password" and section["etcdCaFile"] == "/etc/r/ca.pem"
    assert ipam_config.load(section, {}).etcd_tls == tls
    del section["insecureEtcd"]
    with pytest.raises(CNIError, match="plain http"):
        ipam_config.load(section, {})


def test_the_view_followed_change_by_change_is_what_select_finds_from_every_row():
    """The agent keeps its view up to date from the watch's changes without
    selecting from every row again (`Agent._follow`): after each of 3,000
    random changes (hosts and endpoints coming and going, addresses and MACs
    claimed twice, this host's own addresses and MACs claimed, values changed,
    broken entries) the followed view is exactly select() over every row."""
    import random
    agent = registry.Agent(lambda: object(), "/rancher-cni", VNI, ME, "/nonexistent")
    agent.local = {"10.42.1.2": "02:42:0a:2a:01:02"}
    rng = random.Random(20)
    revision, rows = 10, {}

    def full():
        return registry.select(ROOT, [(k, v, r) for k, (v, r) in rows.items()], VNI, SUBNETS, ME, agent.local)

    def start():
        agent.rows = dict(rows)
        view = agent.view(SUBNETS, [(k, v, r) for k, (v, r) in rows.items()])
        macs = {mac: ME for mac in agent.local.values()}
        macs.update((e.mac, e.vtep) for e in view.endpoints.values())
        agent.current = (view, macs, list(SUBNETS), dict(agent.local))

    start()
    followed = 0
    for _ in range(3000):
        changes = {}
        for _ in range(rng.choice((1, 1, 2, 5))):
            revision += 1
            host = f"10.99.0.{rng.randrange(2, 6)}"
            kind = rng.random()
            if kind < 0.15:
                key, value, _ = vtep_row(host, revision)
            else:
                ip = f"10.42.{rng.randrange(1, 3)}.{rng.randrange(2, 9)}"
                mac = f"02:42:0a:2a:0{rng.randrange(1, 3)}:0{rng.randrange(2, 9)}"
                key, value, _ = endpoint_row(host, ip, mac, revision,
                                             vtep="10.99.0.9" if kind > 0.97 else None)
            if key in rows and rng.random() < 0.6:
                changes[key] = None
            else:
                changes[key] = (value, str(revision if key not in rows or rng.random() < 0.5 else rows[key][1]))
        if agent._follow(changes):
            followed += 1
        else:
            agent.current = None
        for key, row in changes.items():
            if row is None:
                rows.pop(key, None)
            else:
                rows[key] = row
        agent.rows = dict(rows)
        if agent.current is None:
            start()
        want, got = full(), agent.current[0]
        assert (got.vteps, got.endpoints, set(got.bad)) == (want.vteps, want.endpoints, set(want.bad))
    assert followed > 300   # many changes were followed, not selected again (most conflict here)
