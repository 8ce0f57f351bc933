"""The conflist a Docker network stands for (cnm_shim/render.py and each
backend's renderer): from Docker's IPAM data and the `-o` options, the exact
JSON the shim runs and CNI runtimes get exported."""

import json
import re

import pytest

from cnm_shim import backends, options, render
from cnm_shim.errors import DriverError

DATA_DIR = "/var/lib/rancher-cni"
V4 = {"Pool": "10.1.0.0/24", "Gateway": "10.1.0.1/24", "AuxAddresses": {"printer": "10.1.0.250/24"}}
V6 = {"Pool": "fd00:1::/64", "Gateway": "fd00:1::1/64"}


def ipam(ipv4=(V4,), ipv6=(), sub_pools=None, **kw):
    return render.ipam_section(list(ipv4), list(ipv6), DATA_DIR, sub_pools or {}, **kw)


def conflist_for(backend, raw_options, section=None):
    """What CreateNetwork renders for `docker network create -d <driver> -o ...`."""
    entry = backends.get(backend)
    opts = options.parse(entry.driver, backend, raw_options)
    return render.conflist("rancher-0123456789ab", entry.render(opts["bridge"] or entry.bridge_prefix + "0123456789ab",
                                                                opts, section or ipam()))


# -- the ipam section ----------------------------------------------------------

def test_ipam_keeps_dockers_subnet_gateway_and_aux_addresses():
    assert ipam() == {"type": "rancher-ipam", "ranges": [[{"subnet": "10.1.0.0/24", "gateway": "10.1.0.1"}]],
                      "exclude": ["10.1.0.250"], "dataDir": DATA_DIR}


def test_dual_stack_is_one_range_set_per_family_ipv4_first():
    section = ipam(ipv4=[V4], ipv6=[V6])
    assert section["ranges"] == [[{"subnet": "10.1.0.0/24", "gateway": "10.1.0.1"}],
                                 [{"subnet": "fd00:1::/64", "gateway": "fd00:1::1"}]]


def test_ipv6_only_without_a_gateway():
    assert ipam(ipv4=[], ipv6=[{"Pool": "fd00:2::/64"}])["ranges"] == [[{"subnet": "fd00:2::/64"}]]


def test_an_ip_range_limits_where_cni_runtimes_allocate():
    section = ipam(sub_pools={"10.1.0.0/24": "10.1.0.128/25"})
    assert section["ranges"] == [[{"subnet": "10.1.0.0/24", "gateway": "10.1.0.1",
                                   "rangeStart": "10.1.0.128", "rangeEnd": "10.1.0.255"}]]


def test_etcd_endpoints_and_tls_files_are_passed_on():
    section = ipam(etcd_endpoints=("https://10.9.0.1:2379", "https://10.9.0.2:2379"),
                   etcd_tls={"ca": "/etc/rancher/ca.pem", "cert": "/etc/rancher/host.pem", "key": "/etc/rancher/host.key"})
    assert section["etcdEndpoints"] == ["https://10.9.0.1:2379", "https://10.9.0.2:2379"]
    assert (section["etcdCaFile"], section["etcdCertFile"], section["etcdKeyFile"]) == \
        ("/etc/rancher/ca.pem", "/etc/rancher/host.pem", "/etc/rancher/host.key")
    assert "etcdEndpoints" not in ipam()


def test_a_network_without_a_pool_is_refused_saying_what_to_give():
    with pytest.raises(DriverError) as error:
        ipam(ipv4=[], ipv6=[])
    assert str(error.value) == "the network has no IPAM pool; give --subnet or use an IPAM driver that assigns one"


@pytest.mark.parametrize("data, shown", [({"Pool": "10.1.0.300/24"}, "'10.1.0.300/24'"),
                                         ({"Pool": "10.1.0.5/24"}, "'10.1.0.5/24'"),  # host bits set
                                         ({}, "None")])
def test_a_malformed_pool_is_refused_naming_it(data, shown):
    with pytest.raises(DriverError) as error:
        ipam(ipv4=[data])
    assert str(error.value) == f"invalid IPAM pool {shown}"


# -- the conflist per backend ----------------------------------------------------

def test_bridge_defaults():
    assert conflist_for("bridge", {}) == {
        "cniVersion": "1.0.0", "name": "rancher-0123456789ab",
        "plugins": [{
            "type": "rancher-bridge", "bridge": "rb-0123456789ab",
            "isGateway": True, "isDefaultGateway": True, "ipMasq": True,
            "hairpinMode": False, "promiscMode": False, "macspoofchk": False,
            "capabilities": {"ips": True, "mac": True}, "ipam": ipam(),
        }],
    }


def test_bridge_options_reach_the_plugin():
    plugin = conflist_for("bridge", {"com.docker.network.bridge.name": "br-lab", "mtu": "1450", "ip_masq": "false",
                                     "hairpin": "on", "promisc": "yes", "macspoofchk": "1", "vlan": "42"})["plugins"][0]
    assert plugin == {
        "type": "rancher-bridge", "bridge": "br-lab",
        "isGateway": True, "isDefaultGateway": True, "ipMasq": False,
        "hairpinMode": True, "promiscMode": True, "macspoofchk": True,
        "capabilities": {"ips": True, "mac": True}, "ipam": ipam(), "mtu": 1450, "vlan": 42,
    }


def test_flat_without_and_with_the_metadata_link():
    assert conflist_for("flat", {"parent": "eth1"})["plugins"] == [{
        "type": "rancher-flat", "bridge": "rf-0123456789ab", "parent": "eth1", "hairpinMode": False,
        "fastPath": True, "stateDir": DATA_DIR, "capabilities": {"ips": True, "mac": True}, "ipam": ipam(),
    }]
    plugin = conflist_for("flat", {"parent": "eth1", "vlan": "100", "mtu": "1500", "fast_path": "false",
                                   "metadata_link_ip": "10.1.0.2"})["plugins"][0]
    assert (plugin["vlan"], plugin["mtu"], plugin["fastPath"]) == (100, 1500, False)
    assert plugin["metadata"] == {"ip": "169.254.169.250", "linkIP": "10.1.0.2", "bridge": "docker0"}


def test_vxlan_with_peers_floods_to_them():
    assert conflist_for("vxlan", {"vni": "7", "peers": "192.0.2.2, 192.0.2.3", "vtep_dev": "eth1"})["plugins"] == [{
        "type": "rancher-vxlan", "bridge": "rv-0123456789ab", "vni": 7, "peers": ["192.0.2.2", "192.0.2.3"],
        "isGateway": True, "isDefaultGateway": True, "ipMasq": True, "stateDir": DATA_DIR,
        "capabilities": {"ips": True, "mac": True}, "ipam": ipam(), "vtepDev": "eth1",
    }]


def test_vxlan_learns_its_peers_from_etcd_only_when_given_none():
    section = ipam(etcd_endpoints=("https://10.9.0.1:2379",))
    learning = conflist_for("vxlan", {}, section)["plugins"][0]
    assert (learning["vni"], learning["peers"], learning["etcdEndpoints"]) == (1042, [], ["https://10.9.0.1:2379"])
    assert "etcdEndpoints" not in conflist_for("vxlan", {"peers": "192.0.2.2"}, section)["plugins"][0]


IPSEC_POOL = {"Pool": "10.42.0.0/16", "Gateway": "10.42.1.1/16"}
IPSEC_OPTIONS = {"peers": "192.0.2.2,192.0.2.3", "ipsec.psk_file": "/etc/rancher-cni/ipsec.psk"}


def ipsec_section(pool=IPSEC_POOL):
    return ipam(ipv4=(pool,), sub_pools={"10.42.0.0/16": "10.42.1.0/24"})


def test_an_ipsec_network_is_this_hosts_block_its_peers_and_the_key_files_path_never_the_key():
    plugin = conflist_for("ipsec", dict(IPSEC_OPTIONS, **{"ipsec.esp_proposal": "AES256-SHA256"}),
                          ipsec_section())["plugins"][0]
    assert plugin == {
        "type": "rancher-ipsec", "bridge": "ri-0123456789ab", "peers": ["192.0.2.2", "192.0.2.3"],
        "pskFile": "/etc/rancher-cni/ipsec.psk", "ikeProposal": "aes128-sha256-modp2048",
        "espProposal": "aes256-sha256", "ikeRekeyTime": 14400, "childRekeyTime": 3600, "isGateway": True, "isDefaultGateway": True, "ipMasq": True,
        "stateDir": DATA_DIR, "capabilities": {"ips": True, "mac": True}, "ipam": ipsec_section()}
    assert plugin["ipam"]["ranges"] == [[{"subnet": "10.42.0.0/16", "gateway": "10.42.1.1",
                                          "rangeStart": "10.42.1.0", "rangeEnd": "10.42.1.255"}]]


@pytest.mark.parametrize("raw, section, message", [
    (IPSEC_OPTIONS, None, "this host's block of it: create it with --ipam-driver rancher-ipsec"),
    ({"ipsec.psk_file": "/etc/k"}, "block", "give the other hosts with -o peers=IP,IP"),
    ({"peers": "192.0.2.2"}, "block", "option ipsec.psk_file is required: the pre-shared key file"),
    (dict(IPSEC_OPTIONS, **{"ipsec.psk_file": "etc/k"}), "block", "is not an absolute path"),
    (dict(IPSEC_OPTIONS, **{"ipsec.psk_file": "/etc/../k"}), "block", "is not an absolute path"),
    (dict(IPSEC_OPTIONS, **{"ipsec.psk_file": "/etc/k\nx"}), "block", "is not an absolute path"),
    (dict(IPSEC_OPTIONS, **{"ipsec.ike_proposal": "aes128;modp"}), "block", "is not an IPsec proposal"),
    (dict(IPSEC_OPTIONS, **{"ipsec.esp_proposal": "aes128-sha256\n}"}), "block", "is not an IPsec proposal"),
    # the managed plug-in serving bridge, asked for -o backend=ipsec: its IPAM
    # put the gateway at the subnet's first address, outside this host's block
    (IPSEC_OPTIONS, "gateway outside", "the gateway 10.42.0.1 is outside this host's block 10.42.1.0/24 "
                                       "(its --ip-range), from which the tunnels are routed: give --gateway 10.42.1.1"),
])
def test_an_ipsec_network_without_its_block_peers_or_a_sound_key_file_is_refused(raw, section, message):
    sections = {None: None, "block": ipsec_section(),
                "gateway outside": ipsec_section(dict(IPSEC_POOL, Gateway="10.42.0.1/16"))}
    with pytest.raises(DriverError, match=re.escape(message)):
        conflist_for("ipsec", raw, sections[section])


def test_with_etcd_an_ipsec_network_may_leave_out_the_key_file_and_the_peers():
    section = ipam(ipv4=(IPSEC_POOL,), sub_pools={"10.42.0.0/16": "10.42.1.0/24"},
                   etcd_endpoints=("https://10.9.0.1:2379",))
    plugin = conflist_for("ipsec", {"underlay": "192.0.2.1"}, section)["plugins"][0]
    assert "pskFile" not in plugin and plugin["peers"] == [] and plugin["underlay"] == "192.0.2.1"
    assert plugin["ipam"]["etcdEndpoints"] == ["https://10.9.0.1:2379"], "the plug-in finds etcd there"
    # the CNI side reads it so: the key from etcd into the state dir, the peers from the registry
    from cni_backend.plugins import ipsec as ipsec_plugin
    net = ipsec_plugin.load_network(dict(plugin, name="n"))
    assert net.registry and net.key_store.endpoints == ("https://10.9.0.1:2379",)
    assert net.psk_file.startswith(DATA_DIR + "/ipsec/keys/") and net.psk_file.endswith(".psk")
    given = ipsec_plugin.load_network(dict(conflist_for("ipsec", IPSEC_OPTIONS, section)["plugins"][0], name="n"))
    assert given.key_store is None and not given.registry and given.psk_file == "/etc/rancher-cni/ipsec.psk"
    with pytest.raises(DriverError, match=re.escape("or with the peers from etcd, this host's address with "
                                                    "-o underlay=IP")):
        conflist_for("ipsec", {}, section)


RENDERING = sorted(name for name, entry in backends.REGISTRY.items() if not entry.takes_conflist)


@pytest.mark.parametrize("backend", RENDERING)
def test_every_backends_conflist_is_plain_json(backend):
    raw = {"flat": {"parent": "eth1"}, "ipsec": IPSEC_OPTIONS}.get(backend, {})
    conf = conflist_for(backend, raw, ipsec_section() if backend == "ipsec" else None)
    assert json.loads(json.dumps(conf)) == conf


# -- what CNI runtimes get, and the ports list -----------------------------------

def test_the_exported_conflist_chains_portmap_after_the_network_and_leaves_it_as_it_was():
    conf = conflist_for("bridge", {})
    exported = render.exported(conf)
    assert exported["plugins"] == conf["plugins"] + [
        {"type": "rancher-portmap", "capabilities": {"portMappings": True}, "snat": True}]
    assert (exported["cniVersion"], exported["name"]) == (conf["cniVersion"], conf["name"])
    assert len(conf["plugins"]) == 1


def test_the_ports_conflist_runs_portmap_alone_under_its_own_name():
    assert render.ports_conflist(conflist_for("bridge", {})) == {
        "cniVersion": "1.0.0", "name": "rancher-0123456789ab-ports",
        "plugins": [{"type": "rancher-portmap", "capabilities": {"portMappings": True}, "snat": True}]}


# -- meta plug-ins chained after ours ---------------------------------------------

@pytest.mark.parametrize("backend", RENDERING)
def test_rate_limits_chain_the_reference_bandwidth_plugin_after_any_backends_own(backend):
    raw = {"flat": {"parent": "eth1"}, "ipsec": IPSEC_OPTIONS}.get(backend, {})
    raw = dict(raw, **{"bandwidth.ingress_rate": "20mbit", "bandwidth.egress_rate": "1Gbit",
                       "bandwidth.egress_burst": "2mbit"})
    entry = backends.get(backend)
    opts = options.parse(entry.driver, backend, raw)
    conf = render.conflist("rancher-0123456789ab", entry.render("rx-test", opts, ipsec_section() if backend == "ipsec"
                                                                else ipam()), render.meta_plugins(opts))
    assert [p["type"] for p in conf["plugins"]] == [entry.cni_type, "bandwidth"]
    assert conf["plugins"][1] == {"type": "bandwidth", "ingressRate": 20_000_000, "ingressBurst": 2_000_000,
                                  "egressRate": 1_000_000_000, "egressBurst": 2_000_000}
    assert render.exported(conf)["plugins"][-1]["type"] == "rancher-portmap", "CNI runtimes get the same chain"


def test_no_rate_no_bandwidth_plugin_and_a_small_rate_still_passes_a_full_frame():
    assert render.meta_plugins(options.parse("rancher-bridge", "bridge", {})) == []
    [plugin] = render.meta_plugins(options.parse("rancher-bridge", "bridge", {"bandwidth.ingress_rate": "64kbit"}))
    assert plugin == {"type": "bandwidth", "ingressRate": 64_000, "ingressBurst": render.MIN_BURST_BITS}


@pytest.mark.parametrize("raw, message", [
    ({"bandwidth.ingress_rate": "fast"}, "is not a rate: a positive number of bits with an optional unit"),
    ({"bandwidth.ingress_rate": "0"}, "is not a rate"),
    ({"bandwidth.ingress_rate": "-5mbit"}, "is not a rate"),
    ({"bandwidth.ingress_rate": "20mbps"}, "is not a rate"),
    ({"bandwidth.ingress_rate": "99999tbit"}, "is not a rate"),
    ({"bandwidth.egress_rate": "1mbit\n"}, "is not a rate"),
    ({"bandwidth.egress_burst": "1mbit"}, "bandwidth.egress_burst needs bandwidth.egress_rate"),
])
def test_a_bad_rate_is_refused_naming_the_option_and_the_units(raw, message):
    with pytest.raises(DriverError, match=re.escape(message)):
        render.meta_plugins(options.parse("rancher-bridge", "bridge", raw))


def test_an_ipsec_networks_rekey_times_reach_its_conflist():
    plugin = conflist_for("ipsec", dict(IPSEC_OPTIONS, **{"ipsec.ike_rekey_time": "900",
                                                          "ipsec.child_rekey_time": "300"}), ipsec_section())
    assert (plugin["plugins"][0]["ikeRekeyTime"], plugin["plugins"][0]["childRekeyTime"]) == (900, 300)


@pytest.mark.parametrize("backend", RENDERING)
def test_tuning_chains_the_reference_tuning_plugin_with_only_the_keys_set(backend):
    raw = {"flat": {"parent": "eth1"}, "ipsec": IPSEC_OPTIONS}.get(backend, {})
    raw = dict(raw, **{"tuning.mtu": "1300", "tuning.promisc": "false"})
    entry = backends.get(backend)
    opts = options.parse(entry.driver, backend, raw)
    conf = render.conflist("rancher-0123456789ab", entry.render("rx-test", opts, ipsec_section() if backend == "ipsec"
                                                                else ipam()), render.meta_plugins(opts))
    assert conf["plugins"][1:] == [{"type": "tuning", "mtu": 1300, "promisc": False}]


def test_tuning_and_rate_limits_together_chain_tuning_first():
    opts = options.parse("rancher-bridge", "bridge", {"tuning.allmulti": "on", "bandwidth.egress_rate": "1mbit"})
    assert [p["type"] for p in render.meta_plugins(opts)] == ["tuning", "bandwidth"]
    assert render.meta_plugins(opts)[0] == {"type": "tuning", "allmulti": True}


def test_tuning_keeps_its_saved_values_where_the_shim_finds_and_removes_them():
    opts = options.parse("rancher-bridge", "bridge", {"tuning.mtu": "1300"})
    conf = render.conflist("rancher-0123456789ab", {"type": "rancher-bridge"},
                           render.meta_plugins(opts, "/run/rancher-cnm/tuning"))
    assert conf["plugins"][1] == {"type": "tuning", "mtu": 1300, "dataDir": "/run/rancher-cnm/tuning"}
    assert render.tuning_backup(conf, "ab" * 32, "eth0") == "/run/rancher-cnm/tuning/" + "ab" * 32 + "_eth0.json"
    assert render.tuning_backup(render.conflist("x", {"type": "rancher-bridge"}), "ab" * 32, "eth0") is None


def test_the_reference_firewall_chains_first_with_iptables_and_our_bridge_yields_to_it():
    opts = options.parse("rancher-bridge", "bridge", {"firewall": "true", "tuning.mtu": "1300"})
    conf = render.conflist("rancher-0123456789ab", backends.get("bridge").render("rx-test", opts, ipam()),
                           render.meta_plugins(opts))
    assert conf["plugins"][1:] == [{"type": "firewall", "backend": "iptables"}, {"type": "tuning", "mtu": 1300}]
    assert conf["plugins"][0]["firewallChained"] is True and render.chains_firewall(conf)
    plain = options.parse("rancher-bridge", "bridge", {})
    assert "firewallChained" not in backends.get("bridge").render("rx-test", plain, ipam())
    assert not render.chains_firewall(render.conflist("x", {"type": "rancher-bridge"}, render.meta_plugins(plain)))


def test_the_reference_firewall_is_refused_on_an_exported_conflist_saying_why():
    opts = options.parse("rancher-bridge", "bridge", {"firewall": "true", "cni.export": "true"})
    with pytest.raises(DriverError, match="option firewall=true cannot go with cni.export=true: after the firewall "
                                          "plug-in's ADD the shim puts this driver's isolation back above"):
        render.meta_plugins(opts)


@pytest.mark.parametrize("backend, raw, section", [
    ("bridge", {}, None), ("flat", {"parent": "eth1", "fast_path": "false"}, None), ("vxlan", {}, None),
    ("ipsec", IPSEC_OPTIONS, "ipsec")])
def test_every_backend_of_ours_chains_the_reference_firewall_with_its_ingress_policy(backend, raw, section):
    section = ipsec_section() if section == "ipsec" else None
    policy = "open" if backend == "flat" else "same-bridge"
    opts = options.parse(f"rancher-{backend}", backend, dict(raw, **{"firewall": "true",
                                                                    "firewall.ingress_policy": policy}))
    conf = conflist_for(backend, dict(raw, firewall="true"), section)
    conf = render.conflist(conf["name"], conf["plugins"][0], render.meta_plugins(opts))
    assert conf["plugins"][0]["firewallChained"] is True and render.chains_firewall(conf)
    assert conf["plugins"][1] == {"type": "firewall", "backend": "iptables", "ingressPolicy": policy}
    plain = conflist_for(backend, raw, section)["plugins"][0]
    assert "firewallChained" not in plain


def test_the_plugins_own_ingress_policy_default_is_left_to_it():
    opts = options.parse("rancher-vxlan", "vxlan", {"firewall": "true"})
    assert render.meta_plugins(opts) == [{"type": "firewall", "backend": "iptables"}]


def test_an_ingress_policy_without_the_firewall_is_refused_saying_what_it_needs():
    opts = options.parse("rancher-vxlan", "vxlan", {"firewall.ingress_policy": "same-bridge"})
    with pytest.raises(DriverError, match="option firewall.ingress_policy=same-bridge needs firewall=true"):
        render.meta_plugins(opts)


def test_the_firewall_on_flat_needs_the_fast_path_off_saying_why():
    with pytest.raises(DriverError, match="rancher-flat: option firewall=true needs fast_path=false: with the fast "
                                          "path the containers' unicast with the business network skips the bridge"):
        conflist_for("flat", {"parent": "eth1", "firewall": "true"})


def test_the_reference_portmap_chains_last_declaring_port_mappings_with_snat():
    opts = dict(options.parse("rancher-bridge", "bridge", {"portmap": "reference", "bandwidth.ingress_rate": "1mbit",
                                                           "firewall": "true"}), internal=False)
    chained = render.meta_plugins(opts)
    assert [p["type"] for p in chained] == ["firewall", "bandwidth", "portmap"]
    assert chained[-1] == {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}
    assert render.meta_plugins(dict(opts, portmap="rancher"))[-1]["type"] == "bandwidth", "rancher: its own list"


@pytest.mark.parametrize("extra, message", [
    ({"internal": True}, "option portmap=reference cannot go with --internal: an internal network publishes no ports "
                         "(valid: leave portmap out, or portmap=rancher)"),
    ({"cni.export": True}, "option portmap=reference cannot go with cni.export=true: the exported conflist chains "
                           "rancher-portmap for CNI runtimes"),
])
def test_the_reference_portmap_is_refused_where_it_cannot_publish_saying_why(extra, message):
    opts = {**options.parse("rancher-bridge", "bridge", {"portmap": "reference"}), "internal": False, **extra}
    with pytest.raises(DriverError) as error:
        render.meta_plugins(opts)
    assert str(error.value).startswith(message), error.value


def test_an_ipsec_network_chains_the_reference_portmap_last_after_its_own_plugin():
    opts = dict(options.parse("rancher-ipsec", "ipsec", dict(IPSEC_OPTIONS, portmap="reference")), internal=False)
    conf = conflist_for("ipsec", dict(IPSEC_OPTIONS, portmap="reference"), ipsec_section())
    conf = render.conflist(conf["name"], conf["plugins"][0], render.meta_plugins(opts))
    assert [p["type"] for p in conf["plugins"]] == ["rancher-ipsec", "portmap"]
    assert conf["plugins"][-1] == {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}
    assert "portmap" not in conf["plugins"][0], "the ipsec plug-in's own config is as without it"
