"""What a network may take and what its removal may touch (issue 15).

At CreateNetwork: --internal is honoured or refused; a bridge that is not the
network's own (one that exists already, docker0, a link that is no bridge) is
refused unless the backend can share it and the user says so; a CNI name that
another network has, or would have, is refused. At DeleteNetwork: only the
names no other network claims are forgotten.

A network's rules and addresses are found by its CNI names (render.names_of:
its own and its ports list's), through the digest its rule tags carry
(cni_backend.net.tags), so two networks must never share a name or a digest.
"""

import logging

from cni_backend import networks

from . import options, render
from .errors import DriverError

log = logging.getLogger("cnm-shim")
DOCKERS_BRIDGE = "docker0"


def internal(driver: str, entry, generic: dict, flags: dict) -> dict:
    """--internal (options.docker_flags), honoured ({"internal": True}, which
    the backend's renderer reads) or refused with the reason."""
    if not flags["internal"]:
        return {}
    if entry.internal_refused:
        raise DriverError(f"{driver}: --internal (com.docker.network.internal) is not supported: "
                          f"{entry.internal_refused}")
    if "bridge.shared" in generic and options.boolean(driver, "bridge.shared", generic["bridge.shared"]):
        raise DriverError(f"{driver}: --internal on a shared bridge (bridge.shared=true) is not supported: the "
                          "bridge carries other networks' traffic, which an internal network's rules would cut off")
    if "ip_masq" in generic and options.boolean(driver, "ip_masq", generic["ip_masq"]):
        raise DriverError(f"{driver}: ip_masq=true contradicts --internal: an internal network's "
                          "traffic never leaves its subnet, so there is nothing to masquerade")
    return {"internal": True}


def refuse_foreign_bridge(driver: str, bridge: str, opts: dict, own: bool) -> None:
    """A link that is no bridge (eth0, lo) is refused. A bridge that exists
    already, or docker0, is used only by a backend with the bridge.shared
    option, when it is true: the others delete their bridge with the network.
    A bridge named after the network (`own`) is its own, left by an attempt
    killed half-way."""
    kind = networks.link_kind(bridge)
    if kind is not None and kind != "bridge":
        raise DriverError(f"{driver}: option bridge={bridge!r} names an existing {kind}, not a bridge; "
                          "choose another name with -o bridge=NAME")
    if own or (kind is None and bridge != DOCKERS_BRIDGE):
        return
    whose = "exists already" if kind else "is Docker's"
    if options.BRIDGE_SHARED.name not in opts:
        raise DriverError(f"{driver}: bridge {bridge!r} {whose}; this network makes its own bridge and deletes "
                          "it at network rm, so name one that does not exist")
    if not opts[options.BRIDGE_SHARED.name]:
        raise DriverError(f"{driver}: bridge {bridge!r} {whose} and is not this network's own; add "
                          f"-o {options.BRIDGE_SHARED.name}=true to use it as it is (it is left in place at network rm)")


def refuse_name_clashes(cni_name: str, known: list, cni_conf_dir: str) -> None:
    """No name of a new network may be, or share a tag digest with, a name
    of a `known` network of ours or of a network in the CNI config directory."""
    others = [(f"network {net['id'][:12]}", name) for net in known for name in render.names_of(net["cni_name"])]
    others += networks.conflist_names(cni_conf_dir)
    for mine in render.names_of(cni_name):
        for owner, theirs in others:
            why = networks.name_clash(mine, theirs)
            if why is not None:
                raise DriverError(f"CNI network name {cni_name!r} clashes with {owner} ({theirs!r}): {why}, and "
                                  f"a network's published ports go by {render.ports_name('NAME')!r}; "
                                  "choose another with -o cni.name=NAME")


def own_names(net: dict, known: list) -> tuple:
    """(main, ports list) of `net`'s names, each None when another `known`
    network claims it too: two networks made before names were checked. What
    they share stays at removal (cnm-shim doctor reports it)."""
    others = [name for other in known if other["id"] != net["id"] for name in render.names_of(other["cni_name"])]
    own = []
    for name in render.names_of(net["cni_name"]):
        shared = [theirs for theirs in others if networks.name_clash(name, theirs)]
        if shared:
            log.warning("network %s: %s is also a name of another network (%s): its rules and addresses are "
                        "left in place", net["id"][:12], name, ", ".join(shared))
        own.append(None if shared else name)
    return tuple(own)
