"""Docker's IpamDriver over the same store the rancher-ipam CNI plug-in uses,
so a Docker container and a CNI-runtime container on one subnet never get the
same address. Docker's reservations are owned by DOCKER_OWNER: CNI GC leaves
them alone and ReleaseAddress frees them.

A pool record counts its holders (`refs`): RequestPool of a pool already held
(another network on the same --subnet) adds one, ReleasePool takes one, and
the pool goes at zero. Choosing a free default pool and recording it is one
transaction of the state database, so concurrent RequestPools never get the
same pool. A pool whose ReleasePool never came (CreateNetwork failed and the
plug-in was away for the release) is reclaimed: see `reclaim`."""

import dataclasses
import ipaddress
import socket
import time

from cni_backend import hostnet
from cni_backend.hostnet import DOCKER_OWNER, Allocation, SQLiteStore

from . import cnm
from .errors import DriverError, step
from .state import Pool, State

LOCAL_SPACE, GLOBAL_SPACE = "RancherLocal", "RancherGlobal"
ADDRESS_SPACES = (LOCAL_SPACE, GLOBAL_SPACE)
GATEWAY_REQUEST = "com.docker.network.gateway"
# Pools handed out when `docker network create` gives no --subnet.
DEFAULT_POOLS = {4: ipaddress.ip_network("10.208.0.0/12"), 6: ipaddress.ip_network("fd52:7a11:c0::/48")}
DEFAULT_PREFIX = {4: 24, 6: 64}
# Docker sends CreateNetwork milliseconds after RequestPool; a pool that no
# network uses this long after it was requested is a leak, never a network
# being made.
POOL_GRACE_S = 300


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a Docker reservation in the shared address store, as the
    container_id of a DOCKER_OWNER allocation: the pool alone (its gateway and
    metadata link address, shared by every host), or the pool on one host
    (that host's container addresses). Stored as "POOL" or "POOL@HOST", the
    form every version wrote: pool IDs and host names hold no "@"."""

    pool: str
    host: str | None = None

    def __str__(self) -> str:
        return self.pool if self.host is None else f"{self.pool}@{self.host}"

    @classmethod
    def parse(cls, container_id: str) -> "Holder":
        pool, at, host = container_id.rpartition("@")
        return cls(pool, host) if at else cls(container_id)


def _network(value: str, what: str):
    try:
        return hostnet.addresses.network(value, what)
    except ValueError as exc:
        raise DriverError(str(exc)) from None


def used_subnets(txn) -> set:
    """Subnets the shim's networks use (their conflists' IPAM ranges)."""
    used = set()
    for net in txn.networks():
        plugins = net.conflist.get("plugins") or [{}]
        for ranges in (plugins[0].get("ipam") or {}).get("ranges") or []:
            used |= {r.get("subnet") for r in ranges if isinstance(r, dict)}
    return used


class IpamDriver:
    def __init__(self, state: State, store, host: str | None = None):
        self.state = state
        self.store = store  # the CNI side's store: SQLite on one host, etcd across hosts
        # With a shared store, the same pool exists on every host: container
        # addresses are this host's; the gateway and the link address are shared.
        self.host = host or socket.gethostname()

    def _owner(self, pool: Pool) -> tuple:
        return (DOCKER_OWNER, str(Holder(pool.id, self.host)), "")

    def request_pool(self, request: cnm.RequestPoolRequest) -> cnm.RequestPoolResponse:
        request = cnm.coerce(cnm.RequestPoolRequest, request)
        space = request.address_space or LOCAL_SPACE
        if space not in ADDRESS_SPACES:
            raise DriverError(f"unknown address space {space!r}; valid: {', '.join(ADDRESS_SPACES)}")
        version = 6 if request.v6 else 4
        subnet = _network(request.pool, "pool") if request.pool else None
        if subnet is not None:
            if subnet.version != version:
                raise DriverError(f"pool {subnet} is not an IPv{version} pool")
            with step(f"pool {subnet}"):  # the CNI IPAM's own checks (a pool too small, 0.0.0.0/0, loopback, ...)
                hostnet.parse_range({"subnet": str(subnet)})
        sub_pool = _network(request.sub_pool, "ip-range") if request.sub_pool else None
        with self.state.transaction() as txn:  # the choice and the record together: no two get one pool
            if subnet is None:
                subnet = self._free_default_pool(txn, version)
            if sub_pool is not None and (sub_pool.version != subnet.version or not sub_pool.subnet_of(subnet)):
                raise DriverError(f"ip-range {sub_pool} is not inside subnet {subnet}")
            pool_id = f"{space}/{subnet}" + (f"/{sub_pool}" if sub_pool else "")
            held = txn.pool(pool_id)
            if held is not None:  # another network on this subnet: one more holder, the same gateway
                txn.save(dataclasses.replace(held, refs=held.refs + 1))
            else:
                txn.save(Pool(pool_id, str(subnet), sub_pool=str(sub_pool) if sub_pool else None, refs=1,
                              created=time.time()))
        return cnm.RequestPoolResponse(pool_id, str(subnet))

    def _free_default_pool(self, txn, version: int):
        """A default-sized pool not handed out before. Docker asks again when the
        answer overlaps one of its networks, so each answer is a new pool. When
        none is left, pools that leaked are reclaimed first."""
        for attempt in (1, 2):
            taken = [ipaddress.ip_network(p.subnet) for p in txn.pools()]
            for candidate in DEFAULT_POOLS[version].subnets(new_prefix=DEFAULT_PREFIX[version]):
                if not any(candidate.overlaps(t) for t in taken if t.version == version):
                    return candidate
            if attempt == 1 and not self.reclaim(txn, used_subnets(txn)):
                break
        raise DriverError(f"no free IPv{version} pool left in {DEFAULT_POOLS[version]}; give --subnet, "
                          "or remove networks (`cnm-shim doctor` lists pools no network uses)")

    def reclaimable(self, txn, in_use: set, now: float | None = None, grace: float = POOL_GRACE_S) -> list:
        """Pools requested more than `grace` seconds ago whose subnet no network
        in `in_use` has and which hold no address but their own gateway and
        link address: Docker's ReleasePool for them will not come."""
        now = time.time() if now is None else now
        return [pool for pool in txn.pools()
                if now - pool.created >= grace and pool.subnet not in in_use
                and self.store.run(lambda store_txn, pool=pool: self._only_own_reservations(store_txn, pool))]

    def reclaim(self, txn, in_use: set, now: float | None = None, grace: float = POOL_GRACE_S,
                pool_ids: set | None = None) -> list:
        """Release every reclaimable pool, whatever its count; their IDs. Run on
        RequestPool when no default pool is left, and by `cnm-shim doctor
        --repair` (which also asks Docker which subnets its networks use)."""
        released = []
        for pool in self.reclaimable(txn, in_use, now, grace):
            if pool_ids is not None and pool.id not in pool_ids:
                continue
            self._release_reservations(pool, keep_shared=not isinstance(self.store, SQLiteStore))
            txn.forget(pool)
            released.append(pool.id)
        return released

    @staticmethod
    def _only_own_reservations(store_txn, pool: Pool) -> bool:
        return all(a.network == DOCKER_OWNER and a.container_id == pool.id
                   for a in store_txn.allocated(pool.subnet).values())

    def _pool(self, pool_id: str) -> Pool:
        pool = self.state.pool(pool_id)
        if pool is None:
            raise DriverError(f"unknown pool {pool_id!r}")
        return pool

    def _config(self, pool: Pool):
        rng = {"subnet": pool.subnet}
        if pool.sub_pool:
            hosts = ipaddress.ip_network(pool.sub_pool)
            rng.update(rangeStart=str(hosts.network_address), rangeEnd=str(hosts.broadcast_address))
        if pool.gateway:
            rng["gateway"] = pool.gateway
        with step(f"pool {pool.id}"):
            return hostnet.validate_ipam({"ranges": [[rng]]})

    def release_pool(self, request: cnm.PoolRequest) -> None:
        request = cnm.coerce(cnm.PoolRequest, request)
        with self.state.transaction() as txn:
            pool = txn.pool(request.pool_id)
            if pool is None:
                return
            if pool.refs > 1:  # another network still holds it
                txn.save(dataclasses.replace(pool, refs=pool.refs - 1))
                return
            self._release_reservations(pool)
            txn.forget(pool)

    def _release_reservations(self, pool: Pool, keep_shared: bool = False) -> None:
        """This host's addresses of the pool, and the shared ones (gateway, link
        address) unless another host still has containers in it or `keep_shared`
        (a reclaim on a shared store: another host may use the pool unseen)."""
        mine, shared = Holder(pool.id, self.host), Holder(pool.id)

        def release_all(txn):
            held = [(a, Holder.parse(a.container_id)) for a in txn.allocated(pool.subnet).values()
                    if a.network == DOCKER_OWNER]
            others = [a for a, holder in held if holder.pool == pool.id and holder not in (mine, shared)]
            for allocation, holder in held:
                if holder == mine or (holder == shared and not others and not keep_shared):
                    txn.remove(allocation)

        self.store.run(release_all)

    def request_address(self, request: cnm.AddressRequest, gateway_in_ip_range: bool = False
                        ) -> cnm.RequestAddressResponse:
        request = cnm.coerce(cnm.AddressRequest, request)
        pool = self._pool(request.pool_id)
        subnet = ipaddress.ip_network(pool.subnet)
        wanted = None
        if request.address:
            try:
                wanted = hostnet.addresses.address(request.address.split("/")[0], "requested address")
            except ValueError as exc:
                raise DriverError(str(exc)) from None
        if request.options.get("RequestAddressType") == GATEWAY_REQUEST:
            held = self._reserve_gateway(pool, wanted or self._default_gateway(pool, gateway_in_ip_range))
            self.state.save(dataclasses.replace(pool, gateway=held.ip))
        else:
            conf = self._config(pool)
            held = self.store.run(lambda txn: hostnet.reserve(txn, conf, self._owner(pool), wanted))
        return cnm.RequestAddressResponse(f"{held.ip}/{subnet.prefixlen}")

    @staticmethod
    def _default_gateway(pool: Pool, in_ip_range: bool):
        """The subnet's first address; with `in_ip_range` (rancher-ipsec:
        each host routes its tunnels from a gateway in its own block) the
        first host address of the pool's --ip-range (10.42.1.1 in 10.42.1.0/24)."""
        subnet = ipaddress.ip_network(pool.subnet)
        if not (in_ip_range and pool.sub_pool):
            return subnet.network_address + 1
        return next(ipaddress.ip_network(pool.sub_pool).hosts())

    def _reserve_gateway(self, pool: Pool, ip) -> Allocation:
        subnet = ipaddress.ip_network(pool.subnet)
        if ip not in subnet or ip == subnet.network_address or (subnet.version == 4 and ip == subnet.broadcast_address):
            raise DriverError(f"gateway {ip} is not a host address of {subnet}")
        gateway = Allocation(pool.subnet, str(ip), DOCKER_OWNER, str(Holder(pool.id)), "gateway")

        def reserve(txn):
            holder = txn.holder(pool.subnet, str(ip))
            if holder is not None and holder != gateway:
                raise DriverError(f"gateway {ip} is already in use (by {holder.container_id})")
            if holder is None:
                txn.add(gateway)

        self.store.run(reserve)
        return gateway

    def reserve_link_address(self, subnet: str, ip: str) -> None:
        """Keep a flat network's metadata link address out of Docker's hands."""
        pool = next((p for p in self.state.pools() if p.subnet == subnet), None)
        if pool is None:
            raise DriverError(f"no pool for subnet {subnet}")
        def reserve(txn):
            holder = txn.holder(subnet, ip)
            if holder is None:
                txn.add(Allocation(subnet, ip, DOCKER_OWNER, str(Holder(pool.id)), "metadata-link"))
            elif holder.network != DOCKER_OWNER or Holder.parse(holder.container_id).pool != pool.id:
                raise DriverError(f"the metadata link address {ip} is already in use (by {holder.container_id})")
            # else Docker holds it already for this pool, as an --aux-address

        self.store.run(reserve)

    def release_address(self, request: cnm.AddressRequest) -> None:
        request = cnm.coerce(cnm.AddressRequest, request)
        pool = self.state.pool(request.pool_id)
        if pool is None or not request.address:
            return
        ip = request.address.split("/")[0]

        def release(txn):
            held = txn.holder(pool.subnet, ip)
            if held is not None and held.network == DOCKER_OWNER:
                txn.remove(held)

        self.store.run(release)
