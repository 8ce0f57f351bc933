"""Docker's IpamDriver over the same store the rancher-ipam CNI plug-in uses,
so a Docker container and a CNI-runtime container on one subnet never get the
same address. Docker's reservations are owned by DOCKER_OWNER: CNI GC leaves
them alone and ReleaseAddress frees them."""

import ipaddress
import socket

from cni_backend import addresses
from cni_backend.ipam import allocator, config as ipam_config
from cni_backend.ipam.store import DOCKER_OWNER, Allocation

from .errors import DriverError, step
from .state import POOL, State

LOCAL_SPACE, GLOBAL_SPACE = "RancherLocal", "RancherGlobal"
ADDRESS_SPACES = (LOCAL_SPACE, GLOBAL_SPACE)
GATEWAY_REQUEST = "com.docker.network.gateway"
# Pools handed out when `docker network create` gives no --subnet.
DEFAULT_POOLS = {4: ipaddress.ip_network("10.208.0.0/12"), 6: ipaddress.ip_network("fd52:7a11:c0::/48")}
DEFAULT_PREFIX = {4: 24, 6: 64}


def _network(value: str, what: str):
    try:
        return addresses.network(value, what)
    except ValueError as exc:
        raise DriverError(str(exc)) from None


class IpamDriver:
    def __init__(self, state: State, store, host: str | None = None):
        self.state = state
        self.store = store  # the CNI side's store: SQLite on one host, etcd across hosts
        # With a shared store, the same pool exists on every host: container
        # addresses are this host's; the gateway and the link address are shared.
        self.host = host or socket.gethostname()

    def _owner(self, pool: dict) -> tuple:
        return (DOCKER_OWNER, f"{pool['id']}@{self.host}", "")

    def request_pool(self, body: dict) -> dict:
        space = body.get("AddressSpace") or LOCAL_SPACE
        if space not in ADDRESS_SPACES:
            raise DriverError(f"unknown address space {space!r}; valid: {', '.join(ADDRESS_SPACES)}")
        v6 = bool(body.get("V6"))
        if body.get("Pool"):
            subnet = _network(body["Pool"], "pool")
        else:
            subnet = self._free_default_pool(6 if v6 else 4)
        if subnet.version != (6 if v6 else 4):
            raise DriverError(f"pool {subnet} is not an IPv{6 if v6 else 4} pool")
        sub_pool = None
        if body.get("SubPool"):
            sub_pool = _network(body["SubPool"], "ip-range")
            if sub_pool.version != subnet.version or not sub_pool.subnet_of(subnet):
                raise DriverError(f"ip-range {sub_pool} is not inside subnet {subnet}")
        with step(f"pool {subnet}"):  # the CNI IPAM's own checks (e.g. a pool too small to hold a container)
            ipam_config.parse_range({"subnet": str(subnet)})
        pool_id = f"{space}/{subnet}" + (f"/{sub_pool}" if sub_pool else "")
        if self.state.get(POOL, pool_id) is not None:  # Docker retried: keep what the pool holds (its gateway)
            return {"PoolID": pool_id, "Pool": str(subnet), "Data": {}}
        self.state.put(POOL, pool_id, {"id": pool_id, "subnet": str(subnet),
                                       "sub_pool": str(sub_pool) if sub_pool else None})
        return {"PoolID": pool_id, "Pool": str(subnet), "Data": {}}

    def _free_default_pool(self, version: int):
        """A default-sized pool not handed out before. Docker asks again when the
        answer overlaps one of its networks, so each answer is a new pool."""
        taken = [ipaddress.ip_network(p["subnet"]) for p in self.state.all(POOL)]
        for candidate in DEFAULT_POOLS[version].subnets(new_prefix=DEFAULT_PREFIX[version]):
            if not any(candidate.overlaps(t) for t in taken if t.version == version):
                return candidate
        raise DriverError(f"no free IPv{version} pool left in {DEFAULT_POOLS[version]}; give --subnet")

    def _pool(self, pool_id: str) -> dict:
        pool = self.state.get(POOL, pool_id)
        if pool is None:
            raise DriverError(f"unknown pool {pool_id!r}")
        return pool

    def _config(self, pool: dict):
        rng = {"subnet": pool["subnet"]}
        if pool.get("sub_pool"):
            hosts = ipaddress.ip_network(pool["sub_pool"])
            rng.update(rangeStart=str(hosts.network_address), rangeEnd=str(hosts.broadcast_address))
        if pool.get("gateway"):
            rng["gateway"] = pool["gateway"]
        with step(f"pool {pool['id']}"):
            return ipam_config.load({"ranges": [[rng]]}, {})

    def release_pool(self, body: dict) -> dict:
        pool = self.state.get(POOL, body.get("PoolID", ""))
        if pool is None:
            return {}
        mine, shared = f"{pool['id']}@{self.host}", pool["id"]

        def release_all(txn):
            held = [a for a in txn.allocated(pool["subnet"]).values() if a.network == DOCKER_OWNER]
            others = [a for a in held if a.container_id.startswith(shared + "@") and a.container_id != mine]
            for allocation in held:
                if allocation.container_id == mine or (allocation.container_id == shared and not others):
                    txn.remove(allocation)

        self.store.run(release_all)
        self.state.delete(POOL, pool["id"])
        return {}

    def request_address(self, body: dict) -> dict:
        pool = self._pool(body.get("PoolID", ""))
        subnet = ipaddress.ip_network(pool["subnet"])
        wanted = None
        if body.get("Address"):
            try:
                wanted = addresses.address(body["Address"].split("/")[0], "requested address")
            except ValueError as exc:
                raise DriverError(str(exc)) from None
        if (body.get("Options") or {}).get("RequestAddressType") == GATEWAY_REQUEST:
            held = self._reserve_gateway(pool, wanted or subnet.network_address + 1)
            self.state.put(POOL, pool["id"], dict(pool, gateway=held.ip))
        else:
            conf = self._config(pool)
            held = self.store.run(lambda txn: allocator.reserve(txn, conf, self._owner(pool), wanted))
        return {"Address": f"{held.ip}/{subnet.prefixlen}", "Data": {}}

    def _reserve_gateway(self, pool: dict, ip) -> Allocation:
        subnet = ipaddress.ip_network(pool["subnet"])
        if ip not in subnet or ip == subnet.network_address or (subnet.version == 4 and ip == subnet.broadcast_address):
            raise DriverError(f"gateway {ip} is not a host address of {subnet}")
        gateway = Allocation(pool["subnet"], str(ip), DOCKER_OWNER, pool["id"], "gateway")

        def reserve(txn):
            holder = txn.allocated(pool["subnet"]).get(str(ip))
            if holder is not None and holder != gateway:
                raise DriverError(f"gateway {ip} is already in use (by {holder.container_id})")
            if holder is None:
                txn.add(gateway)

        self.store.run(reserve)
        return gateway

    def reserve_link_address(self, subnet: str, ip: str) -> None:
        """Keep a flat network's metadata link address out of Docker's hands."""
        pool = next((p for p in self.state.all(POOL) if p["subnet"] == subnet), None)
        if pool is None:
            raise DriverError(f"no pool for subnet {subnet}")
        def reserve(txn):
            holder = txn.allocated(subnet).get(ip)
            if holder is None:
                txn.add(Allocation(subnet, ip, DOCKER_OWNER, pool["id"], "metadata-link"))
            elif holder.network != DOCKER_OWNER or not holder.container_id.startswith(pool["id"]):
                raise DriverError(f"the metadata link address {ip} is already in use (by {holder.container_id})")
            # else Docker holds it already for this pool, as an --aux-address

        self.store.run(reserve)

    def release_address(self, body: dict) -> dict:
        pool = self.state.get(POOL, body.get("PoolID", ""))
        if pool is None or not body.get("Address"):
            return {}
        ip = body["Address"].split("/")[0]

        def release(txn):
            held = txn.allocated(pool["subnet"]).get(ip)
            if held is not None and held.network == DOCKER_OWNER:
                txn.remove(held)

        self.store.run(release)
        return {}
