"""Docker's NetworkDriver and IpamDriver messages, typed the way
go-plugins-helpers types them (network/api.go, ipam/api.go), and checked once,
where api.py reads a request: a value of the wrong type or form is refused
with a message naming the field and what is valid, before anything acts on it.

Attributes are snake_case; each class says the JSON keys Docker sends or
reads. A request is built with `from_wire(body)` (the JSON object, already
read as a dict); a response becomes JSON with `to_wire()` (and reads like
that JSON: `response["PoolID"]`).
"""

import dataclasses
import re

from cni_backend import addresses

from . import ports
from .errors import DriverError

DOCKER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}\Z")
MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}\Z")
PORT_MAP = "com.docker.network.portmap"


# -- checks shared by the requests ---------------------------------------------------

def _ids(data: dict, *names) -> list:
    """Each named ID, checked to be a plausible Docker ID."""
    found = []
    for name in names:
        value = data.get(name)
        if not isinstance(value, str) or not DOCKER_ID.match(value):
            raise DriverError(f"{name} {value!r} is missing or not a valid ID")
        found.append(value)
    return found


def _objects(data: dict, *names) -> None:
    for name in names:
        if data.get(name) is not None and not isinstance(data[name], dict):
            raise DriverError(f"{name} must be a JSON object")


def _strings(data: dict, *names) -> None:
    for name in names:
        if data.get(name) is not None and not isinstance(data[name], str):
            raise DriverError(f"{name} must be a string")


def cidr_address(value, what: str, version: int | None = None, pool=None):
    """An 'ip/len' string (Docker's form for gateways and endpoint addresses)."""
    try:
        address = addresses.interface(value, what, version)
    except ValueError as exc:
        raise DriverError(str(exc)) from None
    if pool is not None and address.ip not in pool:
        raise DriverError(f"{what} {value!r} is not inside pool {pool}")
    return address


# -- NetworkDriver ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class IPAMData:
    """One entry of IPv4Data / IPv6Data: {AddressSpace, Pool, Gateway, AuxAddresses}."""

    pool: str                      # Pool: the subnet, e.g. 10.22.0.0/16
    address_space: str = ""        # AddressSpace: which IPAM driver's space it came from
    gateway: str = ""              # Gateway: 'ip/len', or empty
    aux_addresses: dict = dataclasses.field(default_factory=dict)  # AuxAddresses: name -> 'ip/len'

    @classmethod
    def list_from_wire(cls, data: dict) -> tuple:
        """(IPv4Data, IPv6Data), each a tuple of IPAMData."""
        out = []
        for key, version in (("IPv4Data", 4), ("IPv6Data", 6)):
            entries = data.get(key)
            if entries is None:
                out.append(())
                continue
            if not isinstance(entries, list) or not all(isinstance(d, dict) for d in entries):
                raise DriverError(f"{key} must be a list of objects")
            out.append(tuple(cls._one(entry, f"{key}[{n}]", version) for n, entry in enumerate(entries)))
        return tuple(out)

    @classmethod
    def _one(cls, entry: dict, where: str, version: int) -> "IPAMData":
        try:
            pool = addresses.network(entry.get("Pool"), f"{where}.Pool", version)
        except ValueError as exc:
            raise DriverError(str(exc)) from None
        for name in ("AddressSpace", "Gateway"):
            if entry.get(name) is not None and not isinstance(entry[name], str):
                raise DriverError(f"{where}.{name} must be a string")
        if entry.get("Gateway"):
            cidr_address(entry["Gateway"], f"{where}.Gateway", version, pool)
        aux = entry.get("AuxAddresses")
        if aux is not None and not isinstance(aux, dict):
            raise DriverError(f"{where}.AuxAddresses must be a map of names to addresses")
        for name, value in (aux or {}).items():
            if not isinstance(value, str):
                raise DriverError(f"{where}.AuxAddresses[{name!r}] must be an address string")
            cidr_address(value, f"{where}.AuxAddresses[{name!r}]", version, pool)
        return cls(pool=entry["Pool"], address_space=entry.get("AddressSpace") or "",
                   gateway=entry.get("Gateway") or "", aux_addresses=dict(aux or {}))

    def to_wire(self) -> dict:
        wire = {"AddressSpace": self.address_space, "Pool": self.pool}
        if self.gateway:
            wire["Gateway"] = self.gateway
        if self.aux_addresses:
            wire["AuxAddresses"] = dict(self.aux_addresses)
        return wire


@dataclasses.dataclass(frozen=True)
class CreateNetworkRequest:
    """NetworkDriver.CreateNetwork: {NetworkID, Options, IPv4Data, IPv6Data}.
    Options holds com.docker.network.generic (the `-o` options) among Docker's own."""

    network_id: str
    options: dict
    ipv4_data: tuple
    ipv6_data: tuple

    @property
    def generic(self) -> dict:
        return self.options.get("com.docker.network.generic") or {}

    @classmethod
    def from_wire(cls, data: dict) -> "CreateNetworkRequest":
        (network_id,) = _ids(data, "NetworkID")
        _objects(data, "Options", "Interface")
        ipv4, ipv6 = IPAMData.list_from_wire(data)
        return cls(network_id, dict(data.get("Options") or {}), ipv4, ipv6)


@dataclasses.dataclass(frozen=True)
class NetworkRequest:
    """NetworkDriver.DeleteNetwork: {NetworkID}."""

    network_id: str

    @classmethod
    def from_wire(cls, data: dict) -> "NetworkRequest":
        (network_id,) = _ids(data, "NetworkID")
        _objects(data, "Options", "Interface")
        return cls(network_id)


@dataclasses.dataclass(frozen=True)
class EndpointRequest:
    """{NetworkID, EndpointID}: DeleteEndpoint, EndpointOperInfo, Leave,
    RevokeExternalConnectivity."""

    network_id: str
    endpoint_id: str

    @classmethod
    def from_wire(cls, data: dict) -> "EndpointRequest":
        network_id, endpoint_id = _ids(data, "NetworkID", "EndpointID")
        _objects(data, "Options", "Interface")
        return cls(network_id, endpoint_id)


@dataclasses.dataclass(frozen=True)
class EndpointInterface:
    """CreateEndpoint's Interface: {Address, AddressIPv6, MacAddress}, each possibly empty."""

    address: str = ""              # 'ip/len'
    address_ipv6: str = ""
    mac_address: str = ""

    @classmethod
    def from_wire(cls, iface: dict) -> "EndpointInterface":
        for key, version in (("Address", 4), ("AddressIPv6", 6)):
            if iface.get(key) not in (None, ""):
                cidr_address(iface[key], f"Interface.{key}", version)
        mac = iface.get("MacAddress")
        if mac not in (None, "") and (not isinstance(mac, str) or not MAC.match(mac) or int(mac[:2], 16) & 1):
            raise DriverError(f"Interface.MacAddress {mac!r} is not a unicast MAC address "
                              "(six hex pairs separated by ':', first octet even, e.g. 02:42:0a:16:00:05)")
        return cls(iface.get("Address") or "", iface.get("AddressIPv6") or "", mac or "")


@dataclasses.dataclass(frozen=True)
class CreateEndpointRequest:
    """NetworkDriver.CreateEndpoint: {NetworkID, EndpointID, Interface, Options}."""

    network_id: str
    endpoint_id: str
    interface: EndpointInterface
    options: dict

    @classmethod
    def from_wire(cls, data: dict) -> "CreateEndpointRequest":
        ids = EndpointRequest.from_wire(data)
        return cls(ids.network_id, ids.endpoint_id, EndpointInterface.from_wire(data.get("Interface") or {}),
                   dict(data.get("Options") or {}))


@dataclasses.dataclass(frozen=True)
class PortBinding:
    """One entry of Options' com.docker.network.portmap:
    {Proto, IP, Port, HostIP, HostPort, HostPortEnd}; Proto is an IP protocol number."""

    proto: int = 0
    ip: str = ""
    port: int = 0
    host_ip: str = ""
    host_port: int = 0
    host_port_end: int = 0

    @classmethod
    def list_from_wire(cls, options: dict) -> tuple:
        raw = options.get(PORT_MAP)
        if raw is None:
            return ()
        if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
            raise DriverError(f"{PORT_MAP} must be a list of objects")
        return tuple(cls._one(entry, n) for n, entry in enumerate(raw))

    @classmethod
    def _one(cls, entry: dict, n: int) -> "PortBinding":
        for key in ("Proto", "Port", "HostPort", "HostPortEnd"):
            value = entry.get(key, 0)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
                raise DriverError(f"{PORT_MAP}[{n}].{key} {value!r} must be an integer from 0 to 65535")
        if (entry.get("HostPortEnd") or 0) and entry["HostPortEnd"] < (entry.get("HostPort") or 0):
            raise DriverError(f"{PORT_MAP}[{n}]: HostPortEnd {entry['HostPortEnd']} is below "
                              f"HostPort {entry.get('HostPort')}")
        for key in ("IP", "HostIP"):
            value = entry.get(key)
            if value in (None, ""):
                continue
            try:
                addresses.address(value, f"{PORT_MAP}[{n}].{key}")
            except ValueError as exc:
                raise DriverError(str(exc)) from None
        return cls(entry.get("Proto") or 0, entry.get("IP") or "", entry.get("Port") or 0, entry.get("HostIP") or "",
                   entry.get("HostPort") or 0, entry.get("HostPortEnd") or 0)


@dataclasses.dataclass(frozen=True)
class JoinRequest:
    """NetworkDriver.Join: {NetworkID, EndpointID, SandboxKey, Options}; the
    published ports (Options' portmap) are kept as those the endpoint waits
    for until ProgramExternalConnectivity."""

    network_id: str
    endpoint_id: str
    sandbox_key: str
    port_map: tuple                # PortBinding
    port_requests: tuple = ()      # ports.Request: the host ports asked for (ports.py allocates them)

    @classmethod
    def from_wire(cls, data: dict) -> "JoinRequest":
        network_id, endpoint_id = _ids(data, "NetworkID", "EndpointID")
        _objects(data, "Options", "Interface")
        if not isinstance(data.get("SandboxKey", ""), str):
            raise DriverError("SandboxKey must be a string")
        options = data.get("Options") or {}
        return cls(network_id, endpoint_id, data.get("SandboxKey", ""), PortBinding.list_from_wire(options),
                   tuple(ports.requests(options.get(PORT_MAP))))


@dataclasses.dataclass(frozen=True)
class ExternalConnectivityRequest:
    """NetworkDriver.ProgramExternalConnectivity: {NetworkID, EndpointID, Options}."""

    network_id: str
    endpoint_id: str
    port_map: tuple                # PortBinding
    port_requests: tuple = ()      # ports.Request

    @classmethod
    def from_wire(cls, data: dict) -> "ExternalConnectivityRequest":
        network_id, endpoint_id = _ids(data, "NetworkID", "EndpointID")
        _objects(data, "Options", "Interface")
        options = data.get("Options") or {}
        return cls(network_id, endpoint_id, PortBinding.list_from_wire(options),
                   tuple(ports.requests(options.get(PORT_MAP))))


class Response:
    """A response dataclass; `to_wire()` is its JSON object, which it also
    reads like and compares equal to."""

    def to_wire(self) -> dict:
        raise NotImplementedError

    def __getitem__(self, key: str):
        return self.to_wire()[key]

    def __eq__(self, other):
        if isinstance(other, Response):
            return type(self) is type(other) and self.to_wire() == other.to_wire()
        if isinstance(other, dict):
            return self.to_wire() == other
        return NotImplemented

    __hash__ = None


@dataclasses.dataclass(frozen=True, eq=False)
class CreateEndpointResponse(Response):
    """{"Interface": {"MacAddress", "Address"}}: what the driver chose, where
    Docker left it empty (the MAC; the address with no IPAM address); else {}."""

    mac_address: str = ""
    address: str = ""              # 'ip/len'

    def to_wire(self) -> dict:
        chosen = {key: value for key, value in (("MacAddress", self.mac_address), ("Address", self.address)) if value}
        return {"Interface": chosen} if chosen else {}


@dataclasses.dataclass(frozen=True, eq=False)
class StaticRoute(Response):
    """{Destination, RouteType, NextHop}: RouteType 0 = via NextHop, 1 = connected."""

    destination: str
    route_type: int
    next_hop: str = ""

    def to_wire(self) -> dict:
        route = {"Destination": self.destination, "RouteType": self.route_type}
        if self.route_type == 0:
            route["NextHop"] = self.next_hop
        return route


@dataclasses.dataclass(frozen=True, eq=False)
class JoinResponse(Response):
    """{InterfaceName: {SrcName, DstPrefix}, Gateway, GatewayIPv6, StaticRoutes};
    a gateway only when the CNI result routes the default through it."""

    src_name: str
    dst_prefix: str = "eth"
    gateway: str = ""
    gateway_ipv6: str = ""
    static_routes: tuple = ()      # StaticRoute

    def to_wire(self) -> dict:
        answer = {"InterfaceName": {"SrcName": self.src_name, "DstPrefix": self.dst_prefix},
                  "StaticRoutes": [route.to_wire() for route in self.static_routes]}
        if self.gateway:
            answer["Gateway"] = self.gateway
        if self.gateway_ipv6:
            answer["GatewayIPv6"] = self.gateway_ipv6
        return answer


@dataclasses.dataclass(frozen=True, eq=False)
class OperInfoResponse(Response):
    """EndpointOperInfo: {"Value": {cni_network, bridge, host_interface, addresses}} (shown by docker inspect)."""

    value: dict

    def to_wire(self) -> dict:
        return {"Value": self.value}


# -- IpamDriver --------------------------------------------------------------------------

def _ipam_fields(data: dict) -> None:
    _strings(data, "AddressSpace", "Pool", "SubPool", "PoolID", "Address")
    if data.get("Options") is not None and not isinstance(data["Options"], dict):
        raise DriverError("Options must be a JSON object")


@dataclasses.dataclass(frozen=True)
class RequestPoolRequest:
    """IpamDriver.RequestPool: {AddressSpace, Pool, SubPool, Options, V6}."""

    address_space: str = ""
    pool: str = ""                 # empty: any free pool
    sub_pool: str = ""             # --ip-range
    options: dict = dataclasses.field(default_factory=dict)
    v6: bool = False

    @classmethod
    def from_wire(cls, data: dict) -> "RequestPoolRequest":
        _ipam_fields(data)
        return cls(data.get("AddressSpace") or "", data.get("Pool") or "", data.get("SubPool") or "",
                   dict(data.get("Options") or {}), bool(data.get("V6")))


@dataclasses.dataclass(frozen=True, eq=False)
class RequestPoolResponse(Response):
    """{PoolID, Pool, Data}."""

    pool_id: str
    pool: str
    data: dict = dataclasses.field(default_factory=dict)

    def to_wire(self) -> dict:
        return {"PoolID": self.pool_id, "Pool": self.pool, "Data": dict(self.data)}


@dataclasses.dataclass(frozen=True)
class PoolRequest:
    """IpamDriver.ReleasePool: {PoolID}."""

    pool_id: str = ""

    @classmethod
    def from_wire(cls, data: dict) -> "PoolRequest":
        _ipam_fields(data)
        return cls(data.get("PoolID") or "")


@dataclasses.dataclass(frozen=True)
class AddressRequest:
    """IpamDriver.RequestAddress / ReleaseAddress: {PoolID, Address, Options};
    Options' RequestAddressType com.docker.network.gateway asks for the gateway."""

    pool_id: str = ""
    address: str = ""              # 'ip' or 'ip/len'; empty: any free one (RequestAddress)
    options: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_wire(cls, data: dict) -> "AddressRequest":
        _ipam_fields(data)
        return cls(data.get("PoolID") or "", data.get("Address") or "", dict(data.get("Options") or {}))


@dataclasses.dataclass(frozen=True, eq=False)
class RequestAddressResponse(Response):
    """{Address 'ip/len', Data}."""

    address: str
    data: dict = dataclasses.field(default_factory=dict)

    def to_wire(self) -> dict:
        return {"Address": self.address, "Data": dict(self.data)}


def coerce(kind, request):
    """`request` as a `kind`: in-process callers (the doctor's teardown, tests)
    may pass the wire dict, checked as api.py checks it."""
    return kind.from_wire(request) if isinstance(request, dict) else request
