"""What a backend is, as the Docker side sees it: one `Backend` entry.

An entry holds everything that differs between backends, so nothing else in
`cnm_shim` dispatches on a backend's name: the Docker driver it is served as,
its `-o` options (parsers, defaults, help), the conflist renderer, the prefix
of the bridges it names, the CNI executable its conflist runs, and its
host-side network type (`HostSide`: what CreateNetwork makes, DeleteNetwork
removes and the doctor checks and re-makes).
"""

import dataclasses
from typing import Callable


class HostSide:
    """The host side of one of the backend's networks, from its state record
    (`net`: id, options, bridge, conflist …). The bridge backend's is the
    default: a bridge, made if missing and removed only when it was ours."""

    def create(self, net: dict, undo) -> None:
        """Made at CreateNetwork; what was made registers its removal on `undo`
        (an ExitStack) so a later failing step leaves nothing."""
        raise NotImplementedError

    def remove(self, net: dict) -> None:
        """Removed at DeleteNetwork, idempotently."""
        raise NotImplementedError

    def ensure(self, net: dict) -> None:
        """Made again, the same idempotent way (the doctor's repair)."""
        raise NotImplementedError

    def made_by_us(self, net: dict) -> bool:
        """Whether the network's bridge is ours to re-make (the doctor)."""
        return True

    def ports(self, net: dict) -> list:
        """Interfaces the doctor expects enslaved to the network's bridge."""
        return []

    def reserved_addresses(self, net: dict) -> list:
        """Addresses of the subnet the host side itself holds: CreateNetwork
        keeps them out of Docker's IPAM."""
        return []

    def datapath(self, net: dict) -> dict:
        """What carries the network's traffic (cnm-shim status / doctor)."""
        raise NotImplementedError


class LoadedHost(HostSide):
    """A host side that a cni_backend module makes and removes (`ensure`,
    `remove`) for the network object its plug-in's loader reads from the
    conflist's first plug-in; always ours, so always removed."""

    def __init__(self, load: Callable, module):
        self.load = load      # the plug-in's load_network(plugin config)
        self.module = module  # flatnet, vxlannet: ensure(network), remove(network)

    def network(self, net: dict):
        return self.load(net["conflist"]["plugins"][0])

    def create(self, net: dict, undo) -> None:
        net["bridge_created"] = True
        network = self.network(net)
        self.module.ensure(network)
        undo.callback(self.module.remove, network)

    def remove(self, net: dict) -> None:
        self.module.remove(self.network(net))

    def ensure(self, net: dict) -> None:
        self.module.ensure(self.network(net))


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str                     # bridge | flat | vxlan: `-o backend=`, `serve --backend`, state records
    driver: str                   # the Docker driver (socket rancher-X.sock) that serves it
    options: tuple                # options.Option, in the order `cnm-shim options` shows them
    render: Callable              # (bridge, parsed options, ipam section) -> the conflist's plug-in
    bridge_prefix: str            # default bridge name: prefix + 12 hex of the network ID
    cni_type: str                 # the CNI executable the conflist runs (cni_backend.plugins.PLUGINS)
    host: HostSide
    required: dict = dataclasses.field(default_factory=dict)  # option -> example, for the error message
    unique: tuple = ()            # (option, label): no two networks of this backend share its value
    # --internal: "" when honoured (render reads opts["internal"]), else why it is refused
    internal_refused: str = ""
