"""`docker network create -o key=value` (cnm_shim/options.py): typed values
with defaults, Docker's aliases, and for every bad key or value the message
`docker` shows, naming the option and what is valid."""

import pytest

from cnm_shim import options
from cnm_shim.errors import DriverError


NO_LIMITS = {"bandwidth.ingress_rate": None, "bandwidth.ingress_burst": None, "bandwidth.egress_rate": None,
             "bandwidth.egress_burst": None, "tuning.mtu": None, "tuning.promisc": None, "tuning.allmulti": None}
TUNING = "tuning.allmulti, tuning.mtu, tuning.promisc, "
NO_FIREWALL = {"firewall": False, "firewall.ingress_policy": None}
FIREWALL = "firewall, firewall.ingress_policy, "
LIMITS = "bandwidth.egress_burst, bandwidth.egress_rate, bandwidth.ingress_burst, bandwidth.ingress_rate, "


def refused(driver, backend, raw) -> str:
    with pytest.raises(DriverError) as error:
        options.parse(driver, backend, raw)
    return str(error.value)


# -- defaults and typed values ----------------------------------------------------

def test_bridge_defaults():
    assert options.parse("rancher-bridge", "bridge", {}) == {
        "bridge": None, "bridge.shared": False, "mtu": None, "ip_masq": True, "hairpin": False, "promisc": False,
        "macspoofchk": False, "vlan": 0, "cni.export": False, "cni.name": None, "portmap": "rancher",
        **NO_FIREWALL, **NO_LIMITS}


def test_flat_defaults_with_its_required_parent():
    assert options.parse("rancher-flat", "flat", {"parent": "eth1"}) == {
        "parent": "eth1", "vlan": 0, "bridge": None, "mtu": None, "hairpin": False,
        "metadata_ip": "169.254.169.250", "metadata_link_ip": None, "metadata_bridge": "docker0", "fast_path": True,
        "cni.export": False, "cni.name": None, **NO_FIREWALL, **NO_LIMITS}


def test_vxlan_defaults():
    assert options.parse("rancher-vxlan", "vxlan", {}) == {
        "vni": 1042, "vtep_dev": None, "peers": [], "bridge": None, "mtu": None, "ip_masq": True,
        "cni.export": False, "cni.name": None, "portmap": "rancher", **NO_FIREWALL, **NO_LIMITS}


def test_values_are_typed():
    parsed = options.parse("rancher-vxlan", "vxlan", {"vni": "16777215", "mtu": "9000", "ip_masq": "Off",
                                                      "peers": " 192.0.2.2,,192.0.2.3 ", "vtep_dev": "bond0.12",
                                                      "cni.export": "YES", "cni.name": "lab-net_1.v2"})
    assert parsed == {"vni": 16777215, "vtep_dev": "bond0.12", "peers": ["192.0.2.2", "192.0.2.3"], "bridge": None,
                      "mtu": 9000, "ip_masq": False, "cni.export": True, "cni.name": "lab-net_1.v2", "portmap": "rancher",
                      **NO_FIREWALL, **NO_LIMITS}


@pytest.mark.parametrize("text, value", [("1", True), ("true", True), (" Yes ", True), ("ON", True),
                                         ("0", False), ("False", False), ("no", False), ("off", False)])
def test_boolean_spellings(text, value):
    assert options.parse("rancher-bridge", "bridge", {"hairpin": text})["hairpin"] is value


def test_dockers_aliases_set_the_option_they_stand_for():
    parsed = options.parse("rancher-bridge", "bridge", {"com.docker.network.driver.mtu": "1450",
                                                        "com.docker.network.bridge.name": "br-lab"})
    assert (parsed["mtu"], parsed["bridge"]) == (1450, "br-lab")


# -- what the user sees for bad input -------------------------------------------

def test_an_unknown_option_lists_the_valid_ones():
    assert refused("rancher-bridge", "bridge", {"colour": "blue"}) == (
        "rancher-bridge: unknown option 'colour'; valid options: backend, " + LIMITS +
        "bridge, bridge.shared, cni.export, cni.name, " + FIREWALL + "hairpin, ip_masq, macspoofchk, mtu, portmap, "
        "promisc, " + TUNING + "vlan")


def test_an_option_of_another_backend_is_unknown_here():
    assert refused("rancher-flat", "flat", {"parent": "eth1", "peers": "192.0.2.2"}) == (
        "rancher-flat: unknown option 'peers'; valid options: backend, " + LIMITS + "bridge, cni.export, cni.name, fast_path, " + FIREWALL +
        "hairpin, metadata_bridge, metadata_ip, metadata_link_ip, mtu, parent, " + TUNING + "vlan")
    assert refused("rancher-vxlan", "vxlan", {"parent": "eth1"}).startswith(
        "rancher-vxlan: unknown option 'parent'; valid options: backend, " + LIMITS + "bridge, cni.export, cni.name, " +
        FIREWALL + "ip_masq, mtu, peers, portmap, " + TUNING + "vni, vtep_dev")


@pytest.mark.parametrize("driver, backend, raw, message", [
    ("rancher-bridge", "bridge", {"ip_masq": "maybe"},
     "rancher-bridge: option ip_masq='maybe' is not a boolean (use true or false)"),
    ("rancher-bridge", "bridge", {"mtu": "67"}, "rancher-bridge: option mtu='67' must be an integer from 68 to 65535"),
    ("rancher-bridge", "bridge", {"mtu": "65536"},
     "rancher-bridge: option mtu='65536' must be an integer from 68 to 65535"),
    ("rancher-bridge", "bridge", {"mtu": "1.5e3"},
     "rancher-bridge: option mtu='1.5e3' must be an integer from 68 to 65535"),
    ("rancher-bridge", "bridge", {"mtu": "0x5dc"},
     "rancher-bridge: option mtu='0x5dc' must be an integer from 68 to 65535"),
    ("rancher-bridge", "bridge", {"mtu": ""}, "rancher-bridge: option mtu='' must be an integer from 68 to 65535"),
    ("rancher-bridge", "bridge", {"vlan": "4095"}, "rancher-bridge: option vlan='4095' must be an integer from 0 to 4094"),
    ("rancher-bridge", "bridge", {"vlan": "-1"}, "rancher-bridge: option vlan='-1' must be an integer from 0 to 4094"),
    ("rancher-vxlan", "vxlan", {"vni": "0"}, "rancher-vxlan: option vni='0' must be an integer from 1 to 16777215"),
    ("rancher-vxlan", "vxlan", {"vni": "16777216"},
     "rancher-vxlan: option vni='16777216' must be an integer from 1 to 16777215"),
    ("rancher-bridge", "bridge", {"bridge": "b" * 16},
     f"rancher-bridge: option bridge='{'b' * 16}' is not a valid interface name (at most 15 characters)"),
    ("rancher-bridge", "bridge", {"bridge": "br 0"},
     "rancher-bridge: option bridge='br 0' is not a valid interface name (at most 15 characters)"),
    ("rancher-bridge", "bridge", {"bridge": "../x"},
     "rancher-bridge: option bridge='../x' is not a valid interface name (at most 15 characters)"),
    ("rancher-bridge", "bridge", {"bridge": "-br"},
     "rancher-bridge: option bridge='-br' is not a valid interface name (at most 15 characters)"),
    ("rancher-bridge", "bridge", {"bridge": "br0\n"},
     "rancher-bridge: option bridge='br0\\n' is not a valid interface name (at most 15 characters)"),
    ("rancher-bridge", "bridge", {"cni.name": "my net"},
     "rancher-bridge: option cni.name='my net' is not a valid CNI network name"),
    ("rancher-bridge", "bridge", {"cni.name": "n" * 64},
     f"rancher-bridge: option cni.name='{'n' * 64}' is not a valid CNI network name"),
    ("rancher-flat", "flat", {"parent": "eth1", "metadata_ip": "fd00::1"},
     "rancher-flat: option metadata_ip='fd00::1' is not an IPv4 address"),
    ("rancher-flat", "flat", {"parent": "eth1", "metadata_link_ip": "10.1.0.2/24"},
     "rancher-flat: option metadata_link_ip='10.1.0.2/24' is not an IPv4 address"),
    ("rancher-flat", "flat", {"parent": "eth 1"}, "rancher-flat: option parent='eth 1' is not a valid interface name"),
    ("rancher-vxlan", "vxlan", {"peers": "192.0.2.2,not-a-host"},
     "rancher-vxlan: option peers='not-a-host' is not an IPv4 address"),
    ("rancher-vxlan", "vxlan", {"peers": "192.0.2.2,2001:db8::2"},
     "rancher-vxlan: option peers='2001:db8::2' is not an IPv4 address"),
])
def test_a_bad_value_names_the_option_the_value_and_what_is_valid(driver, backend, raw, message):
    assert refused(driver, backend, raw) == message


def test_a_bad_value_given_through_an_alias_is_shown_as_the_user_wrote_it():
    assert refused("rancher-bridge", "bridge", {"com.docker.network.driver.mtu": "9"}) == \
        "rancher-bridge: option com.docker.network.driver.mtu='9' must be an integer from 68 to 65535"


def test_a_missing_required_option_says_what_to_give():
    assert refused("rancher-flat", "flat", {}) == (
        "rancher-flat: option parent is required: the host interface facing the business network, e.g. -o parent=eth1")


def test_options_that_are_not_a_map_are_refused():
    assert refused("rancher-bridge", "bridge", ["mtu=1450"]) == "rancher-bridge: driver options must be a map of strings"


# -- -o backend= -------------------------------------------------------------------

def test_backend_option_picks_the_backend_and_is_removed_from_the_rest():
    assert options.choose_backend("rancher-bridge", "bridge", {"backend": " VXLAN ", "vni": "7"}) == \
        ("vxlan", {"vni": "7"})
    assert options.choose_backend("rancher-bridge", "bridge", {"mtu": "1450"}) == ("bridge", {"mtu": "1450"})


# -- how defaults are shown ---------------------------------------------------------

def test_default_text_is_what_a_user_would_write():
    assert options.default_text(options.IP_MASQ) == "true"
    assert options.default_text(options.HAIRPIN) == "false"
    assert options.default_text(options.MTU) == "none"
    assert options.default_text(options.Option("peers", options.ipv4_list, [], "")) == "none"
    assert options.default_text(options.Option("vni", None, 1042, "")) == "1042"
    assert options.default_text(options.Option("parent", None, None, ""), required={"parent": "e.g."}) == "required"


def test_describe_names_the_driver_and_the_aliases():
    text = options.describe("bridge")
    assert text.splitlines()[0] == \
        "rancher-bridge (or -o backend=bridge): docker network create -d rancher-bridge -o OPTION=VALUE ..."
    assert text.splitlines()[-1] == \
        "  aliases: com.docker.network.driver.mtu = mtu, com.docker.network.bridge.name = bridge"


# -- the reference tuning plug-in's settings (render.meta_plugins chains it) --------

def test_tuning_values_are_typed_and_absent_ones_stay_unset():
    parsed = options.parse("rancher-bridge", "bridge", {"tuning.mtu": "1300", "tuning.promisc": "yes",
                                                        "tuning.allmulti": "off"})
    assert (parsed["tuning.mtu"], parsed["tuning.promisc"], parsed["tuning.allmulti"]) == (1300, True, False)
    assert options.parse("rancher-bridge", "bridge", {})["tuning.promisc"] is None, "unset: the plug-in leaves it"


@pytest.mark.parametrize("raw, message", [
    ({"tuning.mtu": "67"}, "rancher-bridge: option tuning.mtu='67' must be an integer from 68 to 65535"),
    ({"tuning.mtu": "65536"}, "rancher-bridge: option tuning.mtu='65536' must be an integer from 68 to 65535"),
    ({"tuning.mtu": "1300;"}, "rancher-bridge: option tuning.mtu='1300;' must be an integer from 68 to 65535"),
    ({"tuning.txqlen": "2000"}, "rancher-bridge: unknown option 'tuning.txqlen'"),
    ({"tuning.promisc": "maybe"}, "rancher-bridge: option tuning.promisc='maybe' is not a boolean (use true or false)"),
    ({"tuning.allmulti": ""}, "rancher-bridge: option tuning.allmulti='' is not a boolean (use true or false)"),
])
def test_a_bad_tuning_value_names_the_option_and_the_valid_range(raw, message):
    assert refused("rancher-bridge", "bridge", raw).startswith(message)


@pytest.mark.parametrize("backend, raw", [("bridge", {}), ("flat", {"parent": "eth1"}), ("vxlan", {})])
@pytest.mark.parametrize("key", ["tuning.sysctl.net.ipv4.conf.eth0.arp_ignore", "tuning.sysctl.net.core.somaxconn",
                                 "tuning.sysctl.../../../etc/passwd", "tuning.sysctl."])
def test_a_tuning_sysctl_is_refused_saying_why_and_what_works_instead(backend, raw, key):
    driver = "rancher-" + backend
    message = refused(driver, backend, dict(raw, **{key: "1"}))
    assert message.startswith(f"{driver}: option {key!r}: the tuning plug-in's sysctls cannot be set on a Docker "
                              "container's interface")
    assert "resets an interface's net.ipv4.conf / net.ipv6.conf settings when it changes namespace" in message
    assert "docker run --sysctl net.ipv4.conf.eth0.NAME=VALUE" in message


DRIVERS = [("bridge", {}), ("flat", {"parent": "eth1"}), ("vxlan", {}), ("ipsec", {})]


@pytest.mark.parametrize("backend, raw", DRIVERS)
@pytest.mark.parametrize("value, chained", [("true", True), ("FALSE", False), ("on", True)])
def test_every_backend_of_ours_offers_the_reference_firewall(backend, raw, value, chained):
    assert options.parse(f"rancher-{backend}", backend, dict(raw, firewall=value))["firewall"] is chained


def test_a_firewall_value_that_is_not_a_boolean_says_so():
    assert refused("rancher-bridge", "bridge", {"firewall": "maybe"}) == (
        "rancher-bridge: option firewall='maybe' is not a boolean (use true or false)")


@pytest.mark.parametrize("backend, raw", DRIVERS)
@pytest.mark.parametrize("value, policy", [("open", "open"), ("same-bridge", "same-bridge"), (" Same-Bridge ",
                                                                                             "same-bridge")])
def test_the_ingress_policy_is_offered_with_the_plugins_two_values(backend, raw, value, policy):
    if backend == "flat" and policy == "same-bridge":
        return  # refused there: test_same_bridge_is_refused_on_flat_saying_why
    parsed = options.parse(f"rancher-{backend}", backend, dict(raw, **{"firewall": "true",
                                                                      "firewall.ingress_policy": value}))
    assert parsed["firewall.ingress_policy"] == policy


@pytest.mark.parametrize("backend, raw", DRIVERS)
@pytest.mark.parametrize("value", ["closed", "same_bridge", "", "open\n-A FORWARD -j ACCEPT", "x" * 300])
def test_a_bad_ingress_policy_says_so_listing_the_valid_values(backend, raw, value):
    driver = f"rancher-{backend}"
    message = refused(driver, backend, dict(raw, **{"firewall": "true", "firewall.ingress_policy": value}))
    assert message == (f"{driver}: option firewall.ingress_policy={value[:100]!r} is not an ingress policy of the "
                       "reference firewall plug-in; valid values: open, same-bridge")


def test_same_bridge_is_refused_on_flat_saying_why():
    message = refused("rancher-flat", "flat", {"parent": "eth1", "firewall": "true",
                                               "firewall.ingress_policy": "same-bridge"})
    assert message.startswith("rancher-flat: option firewall.ingress_policy=same-bridge: not offered on this "
                              "driver's networks: the flat bridge is this host's uplink")
    assert "'-o BRIDGE -j DROP', with no exception for replies" in message and message.endswith(
        "Use ingress_policy=open (the default)")


@pytest.mark.parametrize("backend, raw", DRIVERS)
@pytest.mark.parametrize("key", ["firewall.backend", "firewall.iptablesAdminChainName", "firewall.ingressPolicy",
                                 "firewall.firewalldZone"])
def test_the_reference_firewalls_other_settings_are_refused_saying_why(backend, raw, key):
    driver = f"rancher-{backend}"
    message = refused(driver, backend, dict(raw, **{"firewall": "true", key: "x"}))
    assert message.startswith(f"{driver}: option {key!r}: of the reference firewall plug-in's settings only "
                              "-o firewall=true (or false) and -o firewall.ingress_policy are offered")
    assert "backend is iptables (firewalld is not used)" in message and "admin chain is CNI-ADMIN" in message


def test_an_option_merely_starting_like_firewall_is_just_unknown():
    assert refused("rancher-bridge", "bridge", {"firewalls": "1"}).startswith(
        "rancher-bridge: unknown option 'firewalls'; valid options:")


# -- -o portmap: rancher-portmap or the reference portmap -----------------------------

@pytest.mark.parametrize("value, chosen", [("reference", "reference"), (" Reference ", "reference"),
                                           ("rancher", "rancher")])
def test_rancher_bridge_offers_the_reference_portmap(value, chosen):
    assert options.parse("rancher-bridge", "bridge", {"portmap": value})["portmap"] == chosen


def test_a_portmap_value_that_is_neither_says_which_are_valid():
    assert refused("rancher-bridge", "bridge", {"portmap": "kube"}) == (
        "rancher-bridge: option portmap='kube' is not one of: rancher, reference (rancher: this driver's "
        "rancher-portmap; reference: the reference portmap plug-in from the CNI path)")


@pytest.mark.parametrize("key", ["portmap.snat", "portmap.markMasqBit", "portmap.conditionsV4"])
def test_the_reference_portmaps_own_settings_are_refused(key):
    message = refused("rancher-bridge", "bridge", {"portmap": "reference", key: "1"})
    assert message.startswith(f"rancher-bridge: unknown option {key!r}: the reference portmap plug-in takes no "
                              "settings here"), message


def test_the_reference_portmap_is_refused_on_rancher_flat_saying_why():
    message = refused("rancher-flat", "flat", {"parent": "eth1", "portmap": "reference"})
    assert message.startswith("rancher-flat: option portmap=reference is not offered on this driver's networks, only "
                              "on rancher-bridge, rancher-vxlan and rancher-ipsec (valid here: portmap=rancher, the "
                              "default"), message
    assert "guards the route_localnet the reference portmap turns on and leaves on" in message
    assert "fast path that skips the bridge's netfilter hooks" in message and "IPsec" not in message, message
    assert "portmap" not in options.parse("rancher-flat", "flat", {"parent": "eth1", "portmap": "rancher"}), \
        "the default: nothing to set"
    assert refused("rancher-flat", "flat", {"parent": "eth1", "portmap": "other"}).startswith(
        "rancher-flat: option portmap='other' is not one of: rancher, reference")
    assert refused("rancher-flat", "flat", {"parent": "eth1", "portmap.snat": "1"}).startswith(
        "rancher-flat: unknown option 'portmap.snat': the reference portmap plug-in takes no settings here; only "
        "-o portmap=rancher or -o portmap=reference (rancher-bridge, rancher-vxlan, rancher-ipsec)")


@pytest.mark.parametrize("value, chosen", [("reference", "reference"), (" Reference ", "reference"),
                                           ("rancher", "rancher"), (None, "rancher")])
def test_rancher_ipsec_offers_the_reference_portmap(value, chosen):
    raw = {} if value is None else {"portmap": value}
    assert options.parse("rancher-ipsec", "ipsec", raw)["portmap"] == chosen
    assert refused("rancher-ipsec", "ipsec", {"portmap": "kube"}).startswith(
        "rancher-ipsec: option portmap='kube' is not one of: rancher, reference")
    assert refused("rancher-ipsec", "ipsec", {"portmap": "reference", "portmap.snat": "1"}).startswith(
        "rancher-ipsec: unknown option 'portmap.snat': the reference portmap plug-in takes no settings here")


def test_rancher_vxlan_offers_the_reference_portmap_too():
    assert options.parse("rancher-vxlan", "vxlan", {"portmap": "reference"})["portmap"] == "reference"
