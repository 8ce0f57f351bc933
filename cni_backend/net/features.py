"""Kernel features the backends use, probed on this host, never assumed.

Each probe asks the kernel itself (a netlink or nftables transaction that
leaves nothing behind), so a feature built as a module that loads on demand
counts as present. A result is cached for the life of the boot, in a file
under /run (a kernel does not lose features; a module that appears later is
found after a reboot or by removing the file), because the CNI executables are
short-lived processes.

feature          used by                        without it
nft_netdev_fwd   flat fast path                 the bridge path (logged; doctor/status say so)
nft_bridge       MAC/IP anti-spoofing           CNI error 106 at ADD: no unprotected port
ebtables_filter  flat metadata link policy      CNI error 106 when a metadata link is asked for
vxlan            rancher-vxlan VTEP             CNI error 106 naming CONFIG_VXLAN
vlan             flat "vlan" option             CNI error 106 naming 802.1q (netlink.create_vlan)
vlan_filtering   bridge "vlan" option           CNI error 106 (netlink.enable_vlan_filtering)
ipset            VXLAN UDP guard's peer set     one iptables rule per peer (vxlan_guard, logged)

The article's ebtables broute table is not used: the filter table carries its
policy on every kernel (docs/user-guide.md maps the rules).
"""

import json
import logging
import os
import subprocess

from .. import files, paths
from ..errors import CNIError, KERNEL_FEATURE_MISSING
from . import nft, tools

log = logging.getLogger("rancher-cni")

CACHE_DIR = paths.RUN_DIR
_PROBE_TABLE = "rancher_probe"
_memo: dict = {}


def _nft_transaction(family: str, chain: str, rule: str) -> bool:
    """Add a table with one rule and delete it again, in one transaction: the
    kernel must accept the rule (and load its modules), nothing stays."""
    script = (f"add table {family} {_PROBE_TABLE}\n"
              f"add chain {family} {_PROBE_TABLE} {chain}\n"
              f"add rule {family} {_PROBE_TABLE} c {rule}\n"
              f"delete table {family} {_PROBE_TABLE}\n")
    return nft.succeeds(script, names=[_PROBE_TABLE])


def _esp_state() -> bool:
    """Add an ESP state to a test SA and delete it again: the kernel's own
    IPsec data path (XFRM with ESP)."""
    sa = ["src", "192.0.2.1", "dst", "192.0.2.2", "proto", "esp", "spi", "0x0badcafe"]
    if not tools.succeeds(["ip", "xfrm", "state", "add", *sa, "mode", "tunnel", "enc", "cbc(aes)",
                           "0x" + "00" * 16, "auth", "hmac(sha256)", "0x" + "00" * 32]):
        return False
    tools.succeeds(["ip", "xfrm", "state", "delete", *sa])
    return True


def _ipset() -> bool:
    """Create a scratch hash:ip set over netlink (ip_set and ip_set_hash_ip
    load on demand), ask iptables whether a rule matching it is in INPUT (it
    is not: exit 1 says the set match loaded and found the set; 2 says it
    could not), and destroy the set again."""
    from pyroute2.ipset import IPSet   # only here: the other probes do not need it
    name = f"rcni-probe-{os.getpid()}"
    try:
        with IPSet() as ipset:
            ipset.create(name, stype="hash:ip", exclusive=False)
            try:
                check = subprocess.run(["iptables", "-w", "-C", "INPUT", "-m", "set", "--match-set", name, "src",
                                        "-j", "ACCEPT"], capture_output=True, timeout=10)
            finally:
                ipset.destroy(name)
    except Exception:   # no ip_set in the kernel, no netlink family for it, no iptables
        return False
    return check.returncode == 1


PROBES = {
    # a regular chain: the rule is validated and its module loaded, no hook is installed
    "nft_netdev_fwd": lambda: _nft_transaction("netdev", "c", 'fwd to "lo"'),
    "nft_bridge": lambda: _nft_transaction(
        "bridge", "c { type filter hook forward priority 0; }", "ether saddr 02:00:00:00:00:01 drop"),
    "ebtables_filter": lambda: tools.succeeds(["ebtables", "-t", "filter", "-L"]),
    "esp_xfrm": _esp_state,
    "ipset": _ipset,
}

# what to tell the operator when a feature is missing
REMEDY = {
    "nft_netdev_fwd": "kernel option CONFIG_NFT_FWD_NETDEV (module nft_fwd_netdev)",
    "nft_bridge": "kernel option CONFIG_NF_TABLES_BRIDGE (module nf_tables_bridge) and the nftables package",
    "ebtables_filter": "kernel option CONFIG_BRIDGE_EBT_T_FILTER (ebtables filter table) and the ebtables package",
    "esp_xfrm": "kernel options CONFIG_XFRM_USER and CONFIG_INET_ESP (without them rancher-ipsec runs ESP in "
                "user space, kernel-libipsec over TUN)",
    "ipset": "kernel options CONFIG_IP_SET and CONFIG_IP_SET_HASH_IP, and the iptables set match "
             "(CONFIG_NETFILTER_XT_SET); without them the VXLAN guard has one iptables rule per peer",
}


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _cache_path() -> str:
    return os.path.join(CACHE_DIR, "features.json")


def _read_cache() -> dict:
    try:
        with open(_cache_path()) as f:
            cached = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(cached, dict) or cached.get("boot_id") != _boot_id():
        return {}
    found = cached.get("features")
    return {k: v for k, v in found.items() if k in PROBES and isinstance(v, bool)} if isinstance(found, dict) else {}


def _write_cache(found: dict) -> None:
    try:
        os.makedirs(CACHE_DIR, mode=0o755, exist_ok=True)
        files.write_atomic(_cache_path(), json.dumps({"boot_id": _boot_id(), "features": found}), 0o644)
    except OSError:
        pass  # a cache only: the next process probes again


def has(feature: str) -> bool:
    """Whether this host's kernel (and tools) offer `feature` (a PROBES key)."""
    if feature not in _memo:
        _memo.update(_read_cache())
    if feature not in _memo:
        _memo[feature] = bool(PROBES[feature]())
        if not _memo[feature]:
            log.warning("kernel feature %s is missing: %s", feature, REMEDY[feature])
        _write_cache(dict(_memo))
    return _memo[feature]


def require(feature: str, what: str) -> None:
    """A CNI error naming the missing feature and what provides it."""
    if not has(feature):
        raise CNIError(KERNEL_FEATURE_MISSING, f"{what} needs {feature}, which this kernel lacks",
                       f"provide {REMEDY[feature]}")


def report() -> dict:
    """Every probed feature: name -> present, for doctor and status."""
    return {name: has(name) for name in PROBES}


def forget() -> None:
    """Probe again on the next call (tests; after loading a module)."""
    _memo.clear()
    try:
        os.unlink(_cache_path())
    except OSError:
        pass
