"""The IPsec backend: one subnet across hosts, each host its own block of it,
the hosts joined by IPsec tunnels that the host's charon negotiates with each
peer (`rancher-ipsec`; the article's default network).

Each host hands out addresses from its own block of the subnet, its
`--ip-range`, and routes its tunnels from a gateway inside that block; so the
network needs this backend's IPAM driver, which sees the `--ip-range` (Docker's
own IPAM does not tell drivers about it) and puts the gateway in it."""

import ipaddress
import re

from .. import options
from ..errors import DriverError
from ..options import Option
from .base import Backend, LoadedHost

_PROPOSAL = re.compile(r"[a-z0-9]{1,32}(-[a-z0-9]{1,32}){0,15}\Z")
_PATH = re.compile(r"/[A-Za-z0-9._/-]{1,200}\Z")
PSK_EXAMPLE = ("the pre-shared key file, the same on every host, e.g. -o ipsec.psk_file=/etc/rancher-cni/ipsec.psk "
               "(make one with: head -c 32 /dev/urandom | base64 > FILE; chmod 600 FILE)")
BLOCK_HINT = ("--ipam-driver rancher-ipsec --subnet 10.42.0.0/16 --ip-range 10.42.1.0/24 "
              "(a different --ip-range on each host; the managed plug-in serving another backend, with "
              "-o backend=ipsec: --ipam-driver <the plug-in> and --gateway 10.42.1.1, inside the --ip-range)")


def proposal(driver, key, value):
    text = str(value).strip().lower()
    if not _PROPOSAL.match(text):
        raise DriverError(f"{driver}: option {key}={value!r} is not an IPsec proposal: algorithm names joined "
                          "by '-', e.g. aes128-sha256-modp2048 (IKE) or aes128-sha256 (ESP)")
    return text


def psk_file(driver, key, value):
    text = str(value)
    if not _PATH.match(text) or "/../" in text + "/" or "//" in text:
        raise DriverError(f"{driver}: option {key}={value!r} is not an absolute path of letters, digits "
                          "and '._/-' (the pre-shared key file: mode 0600, owned by root)")
    return text


OPTIONS = (
    Option("peers", options.ipv4_list, [], "comma-separated underlay addresses of the other hosts (default with "
           "etcd: the hosts registered for the same subnet, kept by cnm-shim ipsec-registry)"),
    Option("underlay", options.ipv4, None,
           "this host's underlay address (default: the source address of the route to the first peer)"),
    Option("ipsec.psk_file", psk_file, None,
           "the pre-shared key file, the same on every host: one line of 16 to 4096 printable characters, mode "
           "0600, owned by root (default with etcd: a random key made once per subnet and kept in etcd; required "
           "without)"),
    Option("ipsec.ike_proposal", proposal, "aes128-sha256-modp2048", "the IKEv2 proposal"),
    Option("ipsec.esp_proposal", proposal, "aes128-sha256",
           "the ESP proposal; the user-space data path (kernel-libipsec, when the kernel has no ESP) "
           "takes no AEAD: not aes*gcm*, aes*ccm* or chacha20poly1305"),
    Option("ipsec.ike_rekey_time", options.int_between(5, 30 * 24 * 3600), 14400,
           "seconds between rekeys of the IKE_SA (a new SA is made before the old one goes)"),
    Option("ipsec.child_rekey_time", options.int_between(5, 30 * 24 * 3600), 3600,
           "seconds between rekeys of each network's CHILD_SA"),
    Option("bridge", options.BRIDGE.parse, None, "the network's bridge (default ri-<network id>)"),
    Option("mtu", options.MTU.parse, None,
           "the containers' MTU; default and maximum: what fits in ESP in UDP on the underlay (1400 on the "
           "user-space data path)"),
    options.IP_MASQ,
    *options.BANDWIDTH,
    *options.TUNING,
    *options.firewall_options(),
    options.PORTMAP_OPTION,
    options.CNI_EXPORT,
    options.CNI_NAME,
)


def _block_given(ipam: dict) -> bool:
    ranges = [r for range_set in ipam["ranges"] for r in range_set]
    return len(ranges) == 1 and all(ranges[0].get(k) for k in ("rangeStart", "rangeEnd", "gateway"))


def _refuse_gateway_outside_block(ipam: dict) -> None:
    """The gateway must lie in this host's block. This backend's IPAM puts it
    there when the IPAM call comes in on its own socket (rancher-ipsec, or a
    managed plug-in whose RANCHER_BACKEND is ipsec); a plug-in serving another
    backend by default, asked for -o backend=ipsec, cannot tell: Docker's
    IPAM calls carry no driver option. There the user gives --gateway."""
    rng = next(r for range_set in ipam["ranges"] for r in range_set)
    start, end = int(ipaddress.ip_address(rng["rangeStart"])), int(ipaddress.ip_address(rng["rangeEnd"]))
    block = ipaddress.ip_network((start, 32 - (start ^ end).bit_length()), strict=False)  # the CNI side's block_of
    gateway = ipaddress.ip_address(rng["gateway"])
    if gateway not in block:
        raise DriverError(f"rancher-ipsec: the gateway {gateway} is outside this host's block {block} (its "
                          f"--ip-range), from which the tunnels are routed: give --gateway {next(block.hosts())} "
                          "(the plug-in puts it there itself only when it serves the ipsec backend by default: "
                          "the rancher-ipsec driver, or a managed plug-in with RANCHER_BACKEND=ipsec)")


def render(bridge: str, opts: dict, ipam: dict) -> dict:
    if not _block_given(ipam):
        raise DriverError("rancher-ipsec: the network needs one IPv4 subnet and this host's block of it: "
                          f"create it with {BLOCK_HINT}")
    _refuse_gateway_outside_block(ipam)
    etcd = bool(ipam.get("etcdEndpoints"))
    if not opts["ipsec.psk_file"] and not etcd:
        raise DriverError(f"rancher-ipsec: option ipsec.psk_file is required: {PSK_EXAMPLE} (or start cnm-shim "
                          "serve with --etcd-endpoints: the key is then made once and kept in etcd)")
    if not opts["peers"] and not opts["underlay"]:
        raise DriverError("rancher-ipsec: give the other hosts with -o peers=IP,IP or, for the first host "
                          "alone" + (" or with the peers from etcd" if etcd else "") +
                          ", this host's address with -o underlay=IP")
    plugin = {"type": "rancher-ipsec", "bridge": bridge, "peers": opts["peers"],
              "ikeProposal": opts["ipsec.ike_proposal"], "espProposal": opts["ipsec.esp_proposal"],
              "ikeRekeyTime": opts["ipsec.ike_rekey_time"], "childRekeyTime": opts["ipsec.child_rekey_time"],
              "isGateway": True, "stateDir": ipam["dataDir"], "capabilities": {"ips": True, "mac": True},
              "ipam": ipam}
    if opts["ipsec.psk_file"]:  # else the key is kept in etcd (cni_backend/ipsec_registry.py)
        plugin["pskFile"] = opts["ipsec.psk_file"]
    plugin.update(options.way_out(opts))
    for key, name in (("underlay", "underlay"), ("mtu", "mtu")):
        if opts[key]:
            plugin[name] = opts[key]
    plugin.update(options.firewall_chained(opts))
    return plugin


class IpsecHost(LoadedHost):
    """The bridge with proxy ARP, this host's charon and its tunnels to the
    peers (cni_backend/ipsecnet.py), made at `network create` so a wrong key
    file, address or proposal fails there."""


BACKEND = Backend(name="ipsec", driver="rancher-ipsec", options=OPTIONS, render=render,
                  bridge_prefix="ri-", cni_type="rancher-ipsec", host=IpsecHost(), gateway_in_ip_range=True)
