"""Issue 15, item 1, without root: the shared address parser refuses IPv6
scope IDs (which `ipaddress` accepts with spaces and newlines) at every CNI
edge, and the iptables-restore writer refuses any line that would carry
whitespace or a control character into a script."""

import ipaddress
import json

import pytest

from cni_backend import skel, version
from cni_backend.errors import CNIError, INTERNAL, INVALID_CONFIG
from cni_backend.ipam import allocator, config
from cni_backend.ipam.store import SQLiteStore
from cni_backend.net import iptables
from cni_backend.plugins import portmap

SCOPED = ["fd00:22::5%evil", "::1%lo\nCOMMIT\n*filter\n-P INPUT ACCEPT", "fe80::1%eth0", "fd00::5%a b", "::1%1"]


@pytest.mark.parametrize("value", SCOPED)
def test_the_parser_refuses_every_scoped_address_naming_the_scope(value):
    from cni_backend import addresses
    for parse, text in ((addresses.address, value), (addresses.interface, value + "/64"),
                        (addresses.network, value.split("%")[0] + "%x/64")):
        with pytest.raises(ValueError) as err:
            parse(text, "hostIP")
        assert "hostIP" in str(err.value) and "scope ID" in str(err.value)


@pytest.mark.parametrize("parse,value,expected", [
    ("address", "10.22.0.5", "10.22.0.5"),
    ("address", "fd00:22::5", "fd00:22::5"),
    ("interface", "fd00:22::5/64", "fd00:22::5/64"),
    ("network", "10.22.0.0/16", "10.22.0.0/16"),
])
def test_the_parser_takes_plain_addresses(parse, value, expected):
    from cni_backend import addresses
    assert str(getattr(addresses, parse)(value)) == expected


@pytest.mark.parametrize("value", [5, b"\x0a\x00\x00\x01", None, "10.0.0.1\n", " 10.0.0.1", "10.0.0.1 ", "1.2.3"])
def test_the_parser_refuses_what_is_not_a_plain_address_string(value):
    from cni_backend import addresses
    with pytest.raises(ValueError) as err:
        addresses.address(value, "gateway", 4)
    assert "gateway" in str(err.value) and "such as 10.22.0.5" in str(err.value)


@pytest.mark.parametrize("line", [
    "-A RANCHER-CNI-HOSTPORT -d ::1%lo\nCOMMIT",
    "-A RANCHER-CNI-HOSTPORT -d ::1\r-j ACCEPT",
    "-A X -m comment --comment a\tb -j DROP",
    "-A X -m comment --comment a\x00 -j DROP",
    "-A X -m comment --comment a\x0bb -j DROP",
    "-A X -m comment --comment a\u2028b -j DROP",
    "-A X -m comment --comment a\x85b -j DROP",
])
def test_the_restore_writer_refuses_a_line_with_whitespace_or_control_characters(line):
    with pytest.raises(CNIError) as err:
        iptables.script_text(["*nat", "-A RANCHER-CNI-HOSTPORT -p tcp -j RETURN", line, "COMMIT"])
    assert err.value.code == INTERNAL and "refusing" in err.value.msg


def test_the_restore_writer_refuses_before_running_anything():
    """append_fast writes the script before it starts any command: without
    root, any command run would fail differently; the refusal comes first."""
    with pytest.raises(CNIError) as err:
        iptables.append_fast(6, {"nat": ["-A RANCHER-CNI-HOSTPORT -d ::1%lo\nCOMMIT\n*filter\n-P INPUT ACCEPT"]})
    assert err.value.code == INTERNAL and "refusing" in err.value.msg


def test_the_restore_writer_writes_ordinary_rules():
    script = iptables.script_text(["*nat", "-A RANCHER-CNI-HOSTPORT -d ::1/128 -p tcp -j RETURN", "COMMIT"])
    assert script == "*nat\n-A RANCHER-CNI-HOSTPORT -d ::1/128 -p tcp -j RETURN\nCOMMIT\n"


def _request(config: dict, command="ADD"):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/opt/cni/bin"}
    return skel.build_request(env, json.dumps(config).encode())


def test_a_scoped_host_ip_in_port_mappings_is_refused_naming_the_scope():
    req = _request({"cniVersion": "1.1.0", "name": "n", "type": "rancher-portmap", "runtimeConfig": {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "hostIP": SCOPED[1]}]}})
    with pytest.raises(CNIError) as err:
        portmap.load_mappings(req)
    assert err.value.code == INVALID_CONFIG and "portMappings: hostIP" in err.value.msg and "scope ID" in err.value.msg


PREV = {"cniVersion": "1.1.0", "interfaces": [{"name": "rcnibr0"}, {"name": "eth0", "sandbox": "/var/run/netns/x"}],
        "ips": [{"address": "fd00:22::5/64", "gateway": "fd00:22::1", "interface": 1}],
        "routes": [{"dst": "::/0", "gw": "fd00:22::1"}]}


@pytest.mark.parametrize("path,value,fragment", [
    (("ips", 0, "address"), "fd00:22::5%evil/64", "ips[0].address"),
    (("ips", 0, "gateway"), "fd00:22::1%x\nCOMMIT", "ips[0].gateway"),
    (("routes", 0, "dst"), "fd00::%a b/64", "routes[0].dst"),
    (("routes", 0, "gw"), "fe80::1%eth0", "routes[0].gw"),
    (("interfaces", 0, "name"), "../../../../tmp/x", "interfaces[0].name"),
    (("interfaces", 0, "name"), "br0\n-j ACCEPT", "interfaces[0].name"),
    (("interfaces", 0, "mac"), "02:42:0a:00:00:01 } accept", "interfaces[0].mac"),
    (("ips", 0, "interface"), "1", "ips[0].interface"),
])
def test_a_hostile_prev_result_is_refused_naming_the_field(path, value, fragment):
    prev = json.loads(json.dumps(PREV))
    prev[path[0]][path[1]][path[2]] = value
    req = _request({"cniVersion": "1.1.0", "name": "n", "type": "rancher-portmap", "prevResult": prev})
    with pytest.raises(CNIError) as err:
        req.prev_result
    assert err.value.code == INVALID_CONFIG and err.value.msg.startswith("prevResult: ") and fragment in err.value.msg


def test_a_plain_prev_result_reads_as_before():
    assert version.normalize_result(PREV)["ips"] == PREV["ips"]


def test_a_scoped_copy_of_a_held_address_is_not_handed_out(tmp_path):
    """fd00:22::5%evil was allocated while fd00:22::5 was held: the store's
    key is the text, and the scoped text is another key."""
    conf = config.load({"ranges": [[{"subnet": "fd00:22::/64"}]], "dataDir": str(tmp_path)}, {})
    store = SQLiteStore(str(tmp_path))
    store.run(lambda txn: allocator.allocate(txn, conf, ("n", "c1", "eth0"), [ipaddress.ip_address("fd00:22::5")]))
    for args, args_cni, runtime in (({"IP": "fd00:22::5%evil"}, {}, {}), ({}, {"ips": ["fd00:22::5%evil"]}, {}),
                                    ({}, {}, {"ips": ["fd00:22::5%evil/64"]})):
        with pytest.raises(CNIError) as err:
            allocator.requested_ips(args, args_cni, runtime)
        assert err.value.code == INVALID_CONFIG and "scope ID" in err.value.msg
    assert [a.ip for a in store.run(lambda txn: list(txn.allocated("fd00:22::/64").values()))] == ["fd00:22::5"]


@pytest.mark.parametrize("rng,field", [
    ({"subnet": "fd00:22::%evil/64"}, "subnet"),
    ({"subnet": "fd00:22::/64", "gateway": "fd00:22::1%x y"}, "gateway"),
    ({"subnet": "fd00:22::/64", "rangeStart": "fd00:22::10%x"}, "rangeStart"),
    ({"subnet": "fd00:22::/64", "rangeEnd": "fd00:22::20%x"}, "rangeEnd"),
])
def test_scoped_addresses_in_ipam_ranges_are_refused(rng, field):
    with pytest.raises(CNIError) as err:
        config.load({"ranges": [[rng]]}, {})
    assert err.value.code == INVALID_CONFIG and field in err.value.msg and "scope ID" in err.value.msg


@pytest.mark.parametrize("ipam,field", [
    ({"ranges": [[{"subnet": "10.0.0.0/24"}]], "exclude": ["fd00::5%x"]}, "exclude entry"),
    ({"ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": [{"dst": "fd00::%x/64"}]}, "route dst"),
    ({"ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": [{"dst": "::/0", "gw": "fe80::1%eth0"}]}, "route gw"),
])
def test_scoped_addresses_elsewhere_in_the_ipam_section_are_refused(ipam, field):
    with pytest.raises(CNIError) as err:
        config.load(ipam, {"ipRanges": None})
    assert err.value.code == INVALID_CONFIG and field in err.value.msg and "scope ID" in err.value.msg


@pytest.mark.parametrize("name,valid", [
    ("eth0", True), ("a" * 15, True), ("é" * 7, True),
    ("\x80\x80\U00010000\U00010000\U00010000", False),  # 5 characters, 16 bytes: netlink answered ERANGE (code 104)
    ("à", False),        # UTF-8 c3 a0: the kernel's isspace() takes 0xa0
    ("\ud800", False),   # a lone surrogate (JSON can hold one): no name at all
])
def test_an_interface_name_is_measured_and_checked_in_bytes_as_the_kernel_does(name, valid):
    """Found by the fuzz of hostile prevResult interface names."""
    from cni_backend.ifnames import is_ifname
    assert is_ifname(name) is valid


def test_a_registry_entry_with_a_scoped_address_is_skipped():
    """The VXLAN registry is an edge too: 'fd00:42::5%x' is written the
    canonical way by ipaddress (the scope stays in str()) and lies in the
    subnet, so it passed every check."""
    from cni_backend import vxlan_registry as registry
    subnets = [registry.Subnet(ipaddress.ip_network("fd00:42::/64"), ipaddress.ip_address("fd00:42::1"))]
    root, host = "/rancher-cni/vxlan/hosts/", "10.99.0.3"
    rows = [(f"{root}{host}/1042/vtep", json.dumps({"vtep": host}).encode(), "1")]
    for n, ip in enumerate(["fd00:42::5%x", "fd00:42::6%a\nb"]):
        rows.append((f"{root}{host}/1042/endpoints/{ip}",
                     json.dumps({"ip": ip, "mac": "02:00:00:00:00:66", "vtep": host}).encode(), str(n + 2)))
    result = registry.select(root, rows, 1042, subnets, "10.99.0.1", {})
    assert result.endpoints == {} and len(result.bad) == 2
    assert all("scope ID" in str(reason) for reason in result.bad.values()), result.bad


@pytest.mark.parametrize("check,value", [
    ("check_unicast", "fd00:42::5%x\ninclude /etc/shadow"),
    ("check_unicast", "fe80::1%eth0"),
    ("check_subnets", ["fd00:42::%x y/64"]),
])
def test_an_ipsec_address_with_a_scope_id_is_refused(check, value):
    """The IPsec tunnel's addresses reach strongSwan's config files: a scope
    ID, newlines and all, passed `ipaddress` and was written out as text."""
    from cni_backend import ipsec_tunnels
    with pytest.raises(CNIError) as err:
        getattr(ipsec_tunnels, check)(value, "remote address")
    assert err.value.code == INVALID_CONFIG and "scope ID" in err.value.msg
