"""Network-level lifecycle that no single CNI call owns: the bridge a network
runtime created for a network, and what is left of the network when it goes.
Used by the Docker side at CreateNetwork / DeleteNetwork."""

import json
import os

from .ipam import allocator
from .net import firewall, localnet, netlink, tags


def bridge_exists(name: str) -> bool:
    with netlink.socket_in() as host:
        return netlink.link(host, name) is not None


def ensure_bridge(name: str, mtu: int | None) -> None:
    with netlink.socket_in() as host:
        netlink.ensure_bridge(host, name, mtu, promisc=False)


def remove_bridge(name: str) -> None:
    with netlink.socket_in() as host:
        found = netlink.link(host, name)
        if found is not None and netlink.kind(found) == "bridge":
            netlink.delete_link(host, name)


def missing_parts(bridge: str, ports=()) -> list:
    """What of a network's host side is gone: its bridge, or a link that must be
    one of the bridge's ports (a VTEP, a flat uplink)."""
    with netlink.socket_in() as host:
        found = netlink.link(host, bridge)
        if found is None or netlink.kind(found) != "bridge":
            return [f"bridge {bridge} is missing"]
        missing = []
        for name in ports:
            port = netlink.link(host, name)
            if port is None:
                missing.append(f"{name} is missing")
            elif port.get("master") != found["index"]:
                missing.append(f"{name} is not enslaved to {bridge}")
        return missing


def link_kind(name: str) -> str | None:
    """What the link `name` is (bridge, veth, vxlan …, "device" for one
    without a kind, such as lo or a NIC); None when there is none."""
    with netlink.socket_in() as host:
        found = netlink.link(host, name)
        return None if found is None else (netlink.kind(found) or "device")


def forget(cni_network: str | None, store, ports_list: str | None = None) -> None:
    """Drop what is left of a network: every firewall rule (of every kind)
    and IPAM entry of `cni_network`, and the port rules of its `ports_list`
    (a list with port mappings only: nothing else of that name is its).
    A network is found by its exact name, through the tag digest its rules
    carry; `name_clash` keeps two networks from sharing either."""
    if cni_network:
        localnet.release(tags.stale_test(cni_network, {tags.PORTMAP}, ()))  # before the guards go
        firewall.collect_garbage(cni_network, valid_attachments=(), kinds=tags.KINDS)
        firewall.release_network(cni_network)
        store.run(lambda txn: allocator.collect_garbage(txn, cni_network, valid=set()))
    if ports_list:
        localnet.release(tags.stale_test(ports_list, {tags.PORTMAP}, ()))
        firewall.collect_garbage(ports_list, valid_attachments=(), kinds={tags.PORTMAP})


def name_clash(name: str, other: str) -> str | None:
    """Why the host could not tell a network named `name` from one named
    `other` (their rules are found by the digest in their tags), or None."""
    if name == other:
        return f"both are {name!r}"
    if tags.network_prefix(name) == tags.network_prefix(other):
        return (f"{name!r} and {other!r} share the digest {tags.network_prefix(name)[:-1]} that tags "
                "their firewall rules")
    return None


def conflist_names(conf_dir: str) -> list:
    """(path, network name) of each network configuration in a CNI config
    directory; a file that is not one is skipped."""
    try:
        files = sorted(os.listdir(conf_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for filename in files:
        if not filename.endswith((".conflist", ".conf", ".json")):
            continue
        path = os.path.join(conf_dir, filename)
        try:
            with open(path, "rb") as f:
                name = json.loads(f.read(1 << 20)).get("name")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(name, str):
            found.append((path, name))
    return found



def holder_of(store, subnet: str, ip: str):
    """The allocation holding `ip` in the pool of `subnet`, or None."""
    return store.run(lambda txn: txn.holder(subnet, ip))
