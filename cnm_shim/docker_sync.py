"""The shim against the engine it serves: what Docker forgot, what the shim lacks.

When a DeleteNetwork or DeleteEndpoint cannot reach the plug-in (its socket
away for longer than Docker's ~15 s of retries), Docker removes its own
network or endpoint anyway and only logs a warning; nothing ever tells the
plug-in (../shared/PROTOCOLS.md §1). The doctor asks the engine instead, by
ID: a network is Docker's while `GET /networks/<id>` finds it, an endpoint
while that network's `Containers` lists its EndpointID (Docker lists there
every endpoint it stores, joined or not).

Forgotten, and removed by --repair with the teardown the lost call would
have done (Translator.delete_endpoint / delete_network: published ports,
CNI DEL with the cached config, host network, rules and allocations still
carrying the network's name, state rows), plus what Docker's own IpamDriver
calls would have released (ReleaseAddress / ReleasePool) when the network
used our IPAM driver.

Never removed: anything Docker lists (each removal first asks Docker again);
an exported network a CNI runtime still has attachments on (those are the
runtime's, not Docker's to judge); Docker's networks and endpoints the shim
has no record of (reported only: recreate the network or restart the
container). Docker stores a network only after CreateNetwork answered and an
endpoint before Join, so a joined endpoint, or a network with one, cannot be
a creation in flight; a bare network can for the milliseconds between the
driver's answer and Docker's write, which the second look narrows.
"""

import dataclasses
import ipaddress

import docker
import docker.errors
import requests.exceptions

from cni_backend import runtime

from . import backends, cnm
from .ipam_driver import IpamDriver
from .state import Endpoint, Network, Pool, State
from .translate import Settings, Translator

DEFAULT_DRIVERS = tuple(backends.DRIVERS)


class EngineError(Exception):
    """Docker answered a question with an error."""


class NoEngine(EngineError):
    """No Docker engine answers: the checks against Docker are skipped."""


@dataclasses.dataclass
class Drift:
    kind: str           # network | endpoint (Docker forgot it) | docker-network | docker-endpoint (we lack it)
    subject: str
    problem: str
    repairable: bool
    note: str = ""
    network: Network | None = None   # our record, for what we hold
    endpoint: Endpoint | None = None
    endpoint_ids: tuple = ()      # our endpoints this covers (a forgotten network's are forgotten too)


class Engine:
    """The few questions asked of dockerd, through the docker SDK."""

    def __init__(self, docker_host: str):
        self.host = docker_host
        try:
            self.client = docker.DockerClient(base_url=docker_host, version="auto", timeout=30)
            self.client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
            raise NoEngine(f"no Docker engine answers at {docker_host}: {exc}") from None

    def close(self) -> None:
        self.client.close()

    def network(self, network_id: str) -> dict | None:
        """Docker's network with exactly this ID, or None."""
        try:
            found = self.client.api.inspect_network(network_id)
        except docker.errors.NotFound:
            return None
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            raise EngineError(f"inspecting network {network_id[:12]}: {exc}") from None
        return found if found.get("Id") == network_id else None  # not a name or prefix match

    def endpoint_ids(self, network_id: str) -> set | None:
        found = self.network(network_id)
        if found is None:
            return None
        return {c.get("EndpointID") for c in (found.get("Containers") or {}).values()}

    def networks(self) -> list:
        try:
            return self.client.api.networks()
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            raise EngineError(f"listing networks: {exc}") from None


def _ours(driver: str, drivers) -> bool:
    return driver in drivers or driver.split(":")[0] in drivers


def compare(engine: Engine, records, drivers, runtime_caches=()) -> list:
    """Drift between the shim's records and Docker. `records()` gives the
    shim's (networks, endpoints): read before asking Docker to judge what
    Docker forgot, and again after it for what the shim lacks (the shim
    records a network or endpoint before Docker does)."""
    networks, endpoints = records()
    found = []
    for net in networks:
        ours = [ep for ep in endpoints if ep.network_id == net.id]
        name = f"{net.cni_name} ({net.id[:12]})"
        docker_net = engine.network(net.id)
        if docker_net is None:
            users = _runtime_users(net, runtime_caches)
            found.append(Drift("network", name, f"Docker no longer has this network; the plug-in still holds it "
                                                f"and {len(ours)} endpoint(s) (its DeleteNetwork never arrived)",
                               repairable=not users, network=net,
                               endpoint_ids=tuple(ep.endpoint_id for ep in ours),
                               note=f"exported: CNI runtime attachments {', '.join(users)} still use it"
                                    if users else ""))
            continue
        containers = docker_net.get("Containers") or {}
        docker_eps = {c.get("EndpointID") for c in containers.values()}
        for ep in ours:
            if ep.endpoint_id not in docker_eps:
                found.append(Drift("endpoint", f"{ep.endpoint_id[:12]} on {net.cni_name}",
                                   "Docker no longer has this endpoint (its DeleteEndpoint never arrived)",
                                   repairable=True, network=net, endpoint=ep, endpoint_ids=(ep.endpoint_id,)))
        known = {ep.endpoint_id for ep in records()[1]} if containers else set()
        for key, container in containers.items():
            if container.get("EndpointID") not in known:
                found.append(Drift("docker-endpoint", f"{container.get('EndpointID', '')[:12]} on {net.cni_name}",
                                   f"Docker has this endpoint (container {container.get('Name') or key}) but the "
                                   "plug-in has no record of it", repairable=False,
                                   note="restart the container, or disconnect and connect it again",
                                   endpoint_ids=(container.get("EndpointID"),)))
    listed = engine.networks()
    held = {net.id for net in records()[0]}
    for docker_net in listed:
        if _ours(docker_net.get("Driver") or "", drivers) and docker_net["Id"] not in held:
            found.append(Drift("docker-network", f"{docker_net['Name']} ({docker_net['Id'][:12]})",
                               f"Docker has this network (driver {docker_net['Driver']}) but the plug-in has no "
                               "record of it", repairable=False,
                               note="its containers get no connectivity: remove the network and create it again"))
    return found


def _runtime_users(net: Network, runtime_caches) -> list:
    """Attachments a CNI runtime holds on an exported network: those are not Docker's."""
    if not net.exported:
        return []
    return [f"{container}/{ifname}" for directory in runtime_caches
            for container, ifname in runtime.cached_attachments(directory, net.cni_name)]


class Teardown:
    """The removal DeleteEndpoint / DeleteNetwork (and Docker's IPAM releases)
    would have done, on the shim's own state, after asking Docker once more."""

    def __init__(self, settings: Settings, engine: Engine):
        self.state = State(settings.state_dir)
        self.ipam = IpamDriver(self.state, settings.store())
        self.translator = Translator(self.state, settings, self.ipam)
        self.engine = engine

    def remove(self, drift: Drift) -> str:
        """Remove what Docker forgot (only `network` and `endpoint` drift is repairable)."""
        if drift.endpoint is not None:
            return self.endpoint(drift.network, drift.endpoint)
        return self.network(drift.network)

    def endpoint(self, net: Network, ep: Endpoint) -> str:
        docker_eps = self.engine.endpoint_ids(net.id)
        if docker_eps is not None and ep.endpoint_id in docker_eps:
            raise EngineError("Docker lists it on a second look: left alone")
        self._endpoint(net, ep)
        return "removed: ports revoked, CNI DEL with the cached config, state row"

    def network(self, net: Network) -> str:
        if self.engine.network(net.id) is not None:
            raise EngineError("Docker lists it on a second look: left alone")
        for ep in self.state.endpoints(net.id):
            self._endpoint(net, ep)
        self.translator.delete_network(cnm.NetworkRequest(net.id))
        pools = self._release_pools(net)
        return "removed: endpoints, host network, rules and allocations, state rows" + \
            (f"; pools {', '.join(pools)} released" if pools else "")

    def _endpoint(self, net: Network, ep: Endpoint) -> None:
        self.translator.delete_endpoint(cnm.EndpointRequest(net.id, ep.endpoint_id))
        if net.docker_ipam:  # Docker's ReleaseAddress was lost with the DeleteEndpoint
            for address in (ep.address, ep.address6):
                pool = self._pool_of(address)
                if pool is not None:
                    self.ipam.release_address(cnm.AddressRequest(pool.id, address))

    def _pool_of(self, address: str) -> Pool | None:
        if not address:
            return None
        ip = ipaddress.ip_interface(address).ip
        return next((p for p in self.state.pools() if ip in ipaddress.ip_network(p.subnet)), None)

    def _release_pools(self, net: Network) -> list:
        """Our IPAM driver's pools of the network, unless another of Docker's
        networks with our IPAM driver uses the same subnet."""
        if not net.docker_ipam:
            return []
        subnets = {ipaddress.ip_network(r["subnet"])
                   for ranges in net.conflist["plugins"][0]["ipam"]["ranges"] for r in ranges}
        in_use = {ipaddress.ip_network(cfg["Subnet"]) for other in self.engine.networks() if other["Id"] != net.id
                  for cfg in ((other.get("IPAM") or {}).get("Config") or []) if cfg.get("Subnet")}
        released = []
        for pool in self.state.pools():
            subnet = ipaddress.ip_network(pool.subnet)
            if subnet in subnets and subnet not in in_use:
                self.ipam.release_pool(cnm.PoolRequest(pool.id))
                released.append(pool.id)
        return released
