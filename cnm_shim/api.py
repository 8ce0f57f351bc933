"""The HTTP endpoints Docker calls: Plugin.Activate, NetworkDriver.*, IpamDriver.*.

Docker sends no Content-Type and sometimes no body; every body is read leniently
as JSON (empty = {}) and checked here, at the edge, before anything acts on it.

Docker retries every call whose connection fails, and a retry after the first
attempt wrote its body arrives with NO body (moby's plug-in client re-reads a
drained buffer; ../shared/PROTOCOLS.md section 1). So each call that should
carry a body says what an empty one means, next to its handler:
- a question (EndpointOperInfo) gets an empty answer;
- a release (DeleteNetwork, DeleteEndpoint, Leave, RevokeExternalConnectivity,
  ReleasePool, ReleaseAddress) names nothing, so nothing is released: success,
  and a warning in our log (Docker goes on whatever we answer, except that a
  failed Revoke fails the join of the container's next network; `cnm-shim
  doctor` finds what we still hold);
- a creation (CreateNetwork, CreateEndpoint, Join, RequestPool, RequestAddress)
  cannot be answered right, so it fails with a message that says why;
- ProgramExternalConnectivity succeeds when no endpoint still waits for its
  published ports, and fails otherwise (we cannot tell whose ports were meant).
"""

import json
import logging
import re
import time

from flask import Blueprint, current_app, g, jsonify, request

from cni_backend import addresses, trace

from .errors import DriverError

log = logging.getLogger("cnm-shim")
plugin_api = Blueprint("plugin", __name__)
network_api = Blueprint("network", __name__)
ipam_api = Blueprint("ipam", __name__)

DOCKER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}\Z")


def services():
    return current_app.extensions["rancher"]


@plugin_api.before_app_request
def _trace_start():
    g.trace = trace.target(), time.time(), time.perf_counter()


@plugin_api.teardown_app_request
def _trace_end(_exc):
    """One `shim` span per Docker request, while tracing (cni_backend.trace)."""
    path, t0, start = g.pop("trace", (None, 0, 0))
    if path:
        trace.record(path, "shim", t0, time.perf_counter() - start, path=request.path)


def body() -> dict:
    raw = request.get_data(cache=True)
    log.debug("%s %s", request.path, raw[:4096])
    if not raw.strip():
        return {}
    try:
        parsed = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise DriverError("the request body is not valid JSON (or is nested too deeply)") from None
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise DriverError("the request body must be a JSON object")
    return parsed


RESENT = ("the request arrived without a body, which is how Docker re-sends a call after a "
          "connection error (the plug-in was restarting or was killed)")


def resent_without_body() -> bool:
    """A zero-length body on a call that always carries one: Docker's retry.
    (A body of `{}` is a malformed request, and is checked as one.)"""
    return not request.get_data(cache=True).strip()


def refuse_if_resent(consequence: str) -> None:
    if resent_without_body():
        raise DriverError(f"{RESENT}; {consequence}")


def released_nothing_if_resent() -> bool:
    if not resent_without_body():
        return False
    log.warning("%s: %s; it names nothing, so nothing was released (cnm-shim doctor finds what "
                "Docker no longer has)", request.path.lstrip("/"), RESENT)
    return True


def with_ids(*names) -> dict:
    """The body, after checking that each named ID is a plausible Docker ID."""
    data = body()
    for name in names:
        value = data.get(name)
        if not isinstance(value, str) or not DOCKER_ID.match(value):
            raise DriverError(f"{name} {value!r} is missing or not a valid ID")
    for name in ("Options", "Interface"):
        if data.get(name) is not None and not isinstance(data[name], dict):
            raise DriverError(f"{name} must be a JSON object")
    return data


def _cidr_address(value, what: str, version: int | None = None, pool=None):
    """An 'ip/len' string (Docker's form for gateways and endpoint addresses)."""
    try:
        address = addresses.interface(value, what, version)
    except ValueError as exc:
        raise DriverError(str(exc)) from None
    if pool is not None and address.ip not in pool:
        raise DriverError(f"{what} {value!r} is not inside pool {pool}")
    return address


def check_ipam_data(data: dict) -> None:
    """IPv4Data / IPv6Data: lists of {AddressSpace, Pool, Gateway, AuxAddresses}."""
    for key, version in (("IPv4Data", 4), ("IPv6Data", 6)):
        entries = data.get(key)
        if entries is None:
            continue
        if not isinstance(entries, list) or not all(isinstance(d, dict) for d in entries):
            raise DriverError(f"{key} must be a list of objects")
        for n, entry in enumerate(entries):
            where = f"{key}[{n}]"
            try:
                pool = addresses.network(entry.get("Pool"), f"{where}.Pool", version)
            except ValueError as exc:
                raise DriverError(str(exc)) from None
            for name in ("AddressSpace", "Gateway"):
                if entry.get(name) is not None and not isinstance(entry[name], str):
                    raise DriverError(f"{where}.{name} must be a string")
            if entry.get("Gateway"):
                _cidr_address(entry["Gateway"], f"{where}.Gateway", version, pool)
            aux = entry.get("AuxAddresses")
            if aux is not None and not isinstance(aux, dict):
                raise DriverError(f"{where}.AuxAddresses must be a map of names to addresses")
            for name, value in (aux or {}).items():
                if not isinstance(value, str):
                    raise DriverError(f"{where}.AuxAddresses[{name!r}] must be an address string")
                _cidr_address(value, f"{where}.AuxAddresses[{name!r}]", version, pool)


MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}\Z")


def check_interface(data: dict) -> None:
    """CreateEndpoint's Interface: Address, AddressIPv6 ('ip/len' or empty), MacAddress."""
    iface = data.get("Interface") or {}
    for key, version in (("Address", 4), ("AddressIPv6", 6)):
        if iface.get(key) not in (None, ""):
            _cidr_address(iface[key], f"Interface.{key}", version)
    mac = iface.get("MacAddress")
    if mac not in (None, "") and (not isinstance(mac, str) or not MAC.match(mac) or int(mac[:2], 16) & 1):
        raise DriverError(f"Interface.MacAddress {mac!r} is not a unicast MAC address "
                          "(six hex pairs separated by ':', first octet even, e.g. 02:42:0a:16:00:05)")


def check_port_map(data: dict) -> None:
    """Options' com.docker.network.portmap: [{Proto, IP, Port, HostIP, HostPort, HostPortEnd}]."""
    raw = (data.get("Options") or {}).get("com.docker.network.portmap")
    if raw is None:
        return
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise DriverError("com.docker.network.portmap must be a list of objects")
    for n, entry in enumerate(raw):
        for key in ("Proto", "Port", "HostPort", "HostPortEnd"):
            value = entry.get(key, 0)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
                raise DriverError(f"com.docker.network.portmap[{n}].{key} {value!r} must be an integer from 0 to 65535")
        if (entry.get("HostPortEnd") or 0) and entry["HostPortEnd"] < (entry.get("HostPort") or 0):
            raise DriverError(f"com.docker.network.portmap[{n}]: HostPortEnd {entry['HostPortEnd']} is below "
                              f"HostPort {entry.get('HostPort')}")
        for key in ("IP", "HostIP"):
            value = entry.get(key)
            if value in (None, ""):
                continue
            try:
                addresses.address(value, f"com.docker.network.portmap[{n}].{key}")
            except ValueError as exc:
                raise DriverError(str(exc)) from None


def driver_name() -> str:
    return request.environ.get("rancher.driver", services().default_driver)


def backend() -> str:
    return services().backend_of(driver_name())


@plugin_api.post("/Plugin.Activate")
def activate():
    return jsonify(Implements=["NetworkDriver", "IpamDriver"])


# -- NetworkDriver ------------------------------------------------------------

@network_api.post("/NetworkDriver.GetCapabilities")
def capabilities():
    return jsonify(Scope="local", ConnectivityScope="local")


@network_api.post("/NetworkDriver.CreateNetwork")
def create_network():
    # Resent without a body: refused; it names no network or pool.
    refuse_if_resent("it names no network, so none was created: run the command again")
    data = with_ids("NetworkID")
    check_ipam_data(data)
    services().translator.create_network(driver_name(), backend(), data)
    return jsonify({})


@network_api.post("/NetworkDriver.DeleteNetwork")
def delete_network():
    # Resent without a body: success. Docker removes its network whatever we
    # answer (an error is only logged); what we still hold, doctor finds.
    if released_nothing_if_resent():
        return jsonify({})
    services().translator.delete_network(with_ids("NetworkID"))
    return jsonify({})


@network_api.post("/NetworkDriver.CreateEndpoint")
def create_endpoint():
    # Resent without a body: refused; it names no endpoint and no address.
    refuse_if_resent("it names no endpoint, so none was created: start the container again")
    data = with_ids("NetworkID", "EndpointID")
    check_interface(data)
    return jsonify(services().translator.create_endpoint(data))


@network_api.post("/NetworkDriver.EndpointOperInfo")
def endpoint_oper_info():
    # Resent without a body: an empty answer. The values are informational
    # (`docker network inspect`); failing here failed `docker run` ("Updating
    # join info failed") after a plug-in restart.
    if resent_without_body():
        return jsonify(Value={})
    return jsonify(services().translator.oper_info(with_ids("NetworkID", "EndpointID")))


@network_api.post("/NetworkDriver.DeleteEndpoint")
def delete_endpoint():
    # Resent without a body: success. Docker forgets the endpoint whatever we
    # answer (an error is only logged); its address is reclaimed when Docker
    # hands it out again, and doctor reports the rest.
    if released_nothing_if_resent():
        return jsonify({})
    services().translator.delete_endpoint(with_ids("NetworkID", "EndpointID"))
    return jsonify({})


@network_api.post("/NetworkDriver.Join")
def join():
    # Resent without a body: refused; it names no endpoint, and Docker needs
    # the interface name only the right endpoint's Join can give.
    refuse_if_resent("it names no endpoint, so none was joined: start the container again")
    data = with_ids("NetworkID", "EndpointID")
    if not isinstance(data.get("SandboxKey", ""), str):
        raise DriverError("SandboxKey must be a string")
    check_port_map(data)  # kept as the ports the endpoint waits for (ProgramExternalConnectivity)
    return jsonify(services().translator.join(data))


@network_api.post("/NetworkDriver.Leave")
def leave():
    # Resent without a body: success (Leave undoes nothing here anyway).
    if released_nothing_if_resent():
        return jsonify({})
    services().translator.leave(with_ids("NetworkID", "EndpointID"))
    return jsonify({})


@network_api.post("/NetworkDriver.ProgramExternalConnectivity")
def program_external_connectivity():
    # Resent without a body: Docker sends this for every container it starts,
    # with or without -p. If none of this driver's endpoints still waits for
    # the ports it was given at Join, the first attempt published them or there
    # were none: success. Otherwise refused, rather than publish someone
    # else's ports or start a container without its own.
    if resent_without_body():
        waiting = services().translator.endpoints_awaiting_ports(driver_name())
        if waiting:
            raise DriverError(f"{RESENT}; it names no endpoint, and {', '.join(waiting)} still wait for their "
                              "published ports, so none were published: start the container again")
        return jsonify({})
    data = with_ids("NetworkID", "EndpointID")
    check_port_map(data)
    services().translator.program_external_connectivity(data)
    return jsonify({})


@network_api.post("/NetworkDriver.RevokeExternalConnectivity")
def revoke_external_connectivity():
    # Resent without a body: success. An error here would fail the join of the
    # container's next network (Docker revokes the old gateway endpoint first).
    if released_nothing_if_resent():
        return jsonify({})
    services().translator.revoke_external_connectivity(with_ids("NetworkID", "EndpointID"))
    return jsonify({})


@network_api.post("/NetworkDriver.AllocateNetwork")
def allocate_network():
    return jsonify(Options={})


@network_api.post("/NetworkDriver.FreeNetwork")
@network_api.post("/NetworkDriver.DiscoverNew")
@network_api.post("/NetworkDriver.DiscoverDelete")
def nothing_to_do():
    body()
    return jsonify({})


# -- IpamDriver -----------------------------------------------------------------

@ipam_api.post("/IpamDriver.GetCapabilities")
def ipam_capabilities():
    return jsonify(RequiresMACAddress=False, RequiresRequestReplay=False)


@ipam_api.post("/IpamDriver.GetDefaultAddressSpaces")
def default_address_spaces():
    from .ipam_driver import GLOBAL_SPACE, LOCAL_SPACE
    return jsonify(LocalDefaultAddressSpace=LOCAL_SPACE, GlobalDefaultAddressSpace=GLOBAL_SPACE)


def _ipam_body() -> dict:
    data = body()
    for key in ("AddressSpace", "Pool", "SubPool", "PoolID", "Address"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise DriverError(f"{key} must be a string")
    if data.get("Options") is not None and not isinstance(data["Options"], dict):
        raise DriverError("Options must be a JSON object")
    return data


@ipam_api.post("/IpamDriver.RequestPool")
def request_pool():
    # Resent without a body: refused. Read as "any pool" it would hand out a
    # subnet the user did not ask for, and Docker would take it.
    refuse_if_resent("it names no pool, so none was reserved: run the command again")
    return jsonify(services().ipam.request_pool(_ipam_body()))


@ipam_api.post("/IpamDriver.ReleasePool")
def release_pool():
    # Resent without a body: success; Docker only logs a failed release.
    if released_nothing_if_resent():
        return jsonify({})
    return jsonify(services().ipam.release_pool(_ipam_body()))


@ipam_api.post("/IpamDriver.RequestAddress")
def request_address():
    # Resent without a body: refused; it names no pool to take an address from.
    refuse_if_resent("it names no pool, so no address was reserved: try again")
    return jsonify(services().ipam.request_address(_ipam_body()))


@ipam_api.post("/IpamDriver.ReleaseAddress")
def release_address():
    # Resent without a body: success; Docker only logs a failed release.
    if released_nothing_if_resent():
        return jsonify({})
    return jsonify(services().ipam.release_address(_ipam_body()))
