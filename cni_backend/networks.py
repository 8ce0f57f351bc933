"""Network-level lifecycle that no single CNI call owns: the bridge a network
runtime created for a network, and what is left of the network when it goes.
Used by the Docker side at CreateNetwork / DeleteNetwork."""

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


def forget(cni_network: str, store) -> None:
    """Drop every firewall rule (of every kind) and IPAM entry still carrying the network's name."""
    localnet.release(tags.stale_test(cni_network, {tags.PORTMAP}, ()))  # before the guards go
    firewall.collect_garbage(cni_network, valid_attachments=(), kinds=tags.KINDS)
    store.run(lambda txn: allocator.collect_garbage(txn, cni_network, valid=set()))



def holder_of(store, subnet: str, ip: str):
    """The allocation holding `ip` in the pool of `subnet`, or None."""
    return store.run(lambda txn: txn.allocated(subnet).get(ip))
