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

from cni_backend import hostnet

from ..state import Network


class HostSide:
    """The host side of one of the backend's networks, from its state record
    (`net`: a state.Network: id, options, bridge, conflist …). The bridge backend's is the
    default: a bridge, made if missing and removed only when it was ours."""

    def create(self, net: Network, undo) -> None:
        """Made at CreateNetwork; what was made registers its removal on `undo`
        (an ExitStack) so a later failing step leaves nothing."""
        raise NotImplementedError

    def remove(self, net: Network) -> None:
        """Removed at DeleteNetwork, idempotently."""
        raise NotImplementedError

    def ensure(self, net: Network) -> None:
        """Made again, the same idempotent way (the doctor's repair)."""
        raise NotImplementedError

    def made_by_us(self, net: Network) -> bool:
        """Whether the network's bridge is ours to re-make (the doctor)."""
        return True

    def ports(self, net: Network) -> list:
        """Interfaces the doctor expects enslaved to the network's bridge."""
        return []

    def reserved_addresses(self, net: Network) -> list:
        """Addresses of the subnet the host side itself holds: CreateNetwork
        keeps them out of Docker's IPAM."""
        return []

    def datapath(self, net: Network) -> dict:
        """What carries the network's traffic (cnm-shim status / doctor)."""
        raise NotImplementedError


class LoadedHost(HostSide):
    """A host side the CNI side makes and removes as its plug-in type says
    (cni_backend.hostnet.network_of: the conflist's first plug-in's network,
    flat's uplink or vxlan's VTEP); always ours, so always removed."""

    def network(self, net: Network):
        return hostnet.network_of(net.conflist)

    def create(self, net: Network, undo) -> None:
        net.bridge_created = True
        network = self.network(net)
        network.ensure()
        undo.callback(network.remove)

    def remove(self, net: Network) -> None:
        self.network(net).remove()

    def ensure(self, net: Network) -> None:
        self.network(net).ensure()

    def ports(self, net: Network) -> list:
        return self.network(net).ports()

    def reserved_addresses(self, net: Network) -> list:
        return self.network(net).reserved_addresses()

    def datapath(self, net: Network) -> dict:
        return self.network(net).datapath(net.cni_name)


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str                     # bridge | flat | vxlan | ipsec: `-o backend=`, `serve --backend`, state records
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
    # its IPAM puts the gateway in the pool's --ip-range (this host's block),
    # as Docker's own IPAM does, instead of at the subnet's first address
    gateway_in_ip_range: bool = False
    # the network is a conflist of the CNI config directory (-o cni.conflist=),
    # run as it is: no renderer, no bridge, no host side of ours
    takes_conflist: bool = False
