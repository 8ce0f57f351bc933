"""The HTTP endpoints Docker calls: Plugin.Activate, NetworkDriver.*, IpamDriver.*.

Docker sends no Content-Type and sometimes no body; every body is read leniently
as JSON (empty = {}) and turned here, at the edge, into the typed request of
cnm.py, which checks it, before anything acts on it. Each handler's docstring
gives the wire shape it takes and returns.

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

from flask import Blueprint, current_app, g, jsonify, request

from cni_backend import logfmt, trace

from . import backends, cnm
from .errors import DriverError, docker_answer

log = logging.getLogger("cnm-shim")
plugin_api = Blueprint("plugin", __name__)
network_api = Blueprint("network", __name__)
ipam_api = Blueprint("ipam", __name__)

def services():
    return current_app.extensions["rancher"]


@plugin_api.before_app_request
def _trace_start():
    g.trace = trace.begin()


@plugin_api.teardown_app_request
def _trace_end(_exc):
    """One `shim` span per Docker request, while tracing (cni_backend.trace)."""
    trace.end(g.pop("trace", None), "shim", path=request.path)


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
    g.body = parsed  # the IDs on the call's log line (app._log_call)
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
    """{} -> {Scope, ConnectivityScope}: local, both."""
    return jsonify(Scope="local", ConnectivityScope="local")


@network_api.post("/NetworkDriver.CreateNetwork")
def create_network():
    """{NetworkID, Options: {com.docker.network.generic: {-o options}, …},
    IPv4Data: [{AddressSpace, Pool, Gateway, AuxAddresses}], IPv6Data: [...]}
    (cnm.CreateNetworkRequest) -> {}."""
    # Resent without a body: refused; it names no network or pool.
    refuse_if_resent("it names no network, so none was created: run the command again")
    request = cnm.CreateNetworkRequest.from_wire(body())
    services().translator.create_network(driver_name(), backend(), request)
    return jsonify({})


@network_api.post("/NetworkDriver.DeleteNetwork")
def delete_network():
    """{NetworkID} (cnm.NetworkRequest) -> {}; an unknown network is deleted already."""
    # Resent without a body: success. Docker removes its network whatever we
    # answer (an error is only logged); what we still hold, doctor finds.
    if released_nothing_if_resent():
        return jsonify({})
    services().translator.delete_network(cnm.NetworkRequest.from_wire(body()))
    return jsonify({})


@network_api.post("/NetworkDriver.CreateEndpoint")
def create_endpoint():
    """{NetworkID, EndpointID, Interface: {Address, AddressIPv6, MacAddress}, Options}
    (cnm.CreateEndpointRequest) -> {Interface: {MacAddress}} when we chose the
    MAC, else {} (cnm.CreateEndpointResponse)."""
    # Resent without a body: refused; it names no endpoint and no address.
    refuse_if_resent("it names no endpoint, so none was created: start the container again")
    request = cnm.CreateEndpointRequest.from_wire(body())
    answer = services().translator.create_endpoint(request)
    attach = services().translator.attach_ahead(request)
    if attach is not None:
        after_answer(attach, "the endpoint's ADD after CreateEndpoint", then="its Join runs it again")
    return jsonify(answer.to_wire())


@network_api.post("/NetworkDriver.EndpointOperInfo")
def endpoint_oper_info():
    """{NetworkID, EndpointID} (cnm.EndpointRequest) -> {Value: {cni_network,
    bridge, host_interface, addresses}} (cnm.OperInfoResponse)."""
    # Resent without a body: an empty answer. The values are informational
    # (`docker network inspect`); failing here failed `docker run` ("Updating
    # join info failed") after a plug-in restart.
    if resent_without_body():
        return jsonify(Value={})
    return jsonify(services().translator.oper_info(cnm.EndpointRequest.from_wire(body())).to_wire())


@network_api.post("/NetworkDriver.DeleteEndpoint")
def delete_endpoint():
    """{NetworkID, EndpointID} (cnm.EndpointRequest) -> {}; an unknown endpoint is deleted already."""
    # Resent without a body: success. Docker forgets the endpoint whatever we
    # answer (an error is only logged); its address is reclaimed when Docker
    # hands it out again, and doctor reports the rest.
    if released_nothing_if_resent():
        return jsonify({})
    teardown = services().translator.endpoint_teardown(cnm.EndpointRequest.from_wire(body()))
    if teardown is not None:
        after_answer(teardown, "the endpoint's teardown after DeleteEndpoint")
    return jsonify({})


AFTER_ANSWER = "rancher.after_answer"  # the WSGI environ's list of work for app.AfterAnswer


def after_answer(work, what: str, then: str = "`cnm-shim doctor` reports what is left") -> None:
    """Queue `work` to run once the whole answer is written to Docker, before
    the worker takes its next request (app.AfterAnswer; Flask's request
    context is gone by then), whatever the answer. Docker has what it asked
    for, so a failure can only be logged, with the message Docker would have
    had (a traceback only for a bug), and `then`: what comes of it."""
    request_id, driver = logfmt.current(), driver_name()  # the request's, on the work's lines too

    def run():
        with logfmt.request(request_id):
            try:
                work()
            except Exception as exc:  # noqa: BLE001 - nobody is left to answer
                answer = docker_answer(exc, driver)
                if answer is None:
                    log.exception("%s failed; %s", what, then)
                else:
                    log.warning("%s failed: %s; %s", what, answer[1], then)
    request.environ.setdefault(AFTER_ANSWER, []).append(run)


@network_api.post("/NetworkDriver.Join")
def join():
    """{NetworkID, EndpointID, SandboxKey, Options: {com.docker.network.portmap:
    [{Proto, IP, Port, HostIP, HostPort, HostPortEnd}], …}} (cnm.JoinRequest)
    -> {InterfaceName: {SrcName, DstPrefix}, Gateway, GatewayIPv6,
    StaticRoutes: [{Destination, RouteType, NextHop}]} (cnm.JoinResponse)."""
    # Resent without a body: refused; it names no endpoint, and Docker needs
    # the interface name only the right endpoint's Join can give.
    refuse_if_resent("it names no endpoint, so none was joined: start the container again")
    request = cnm.JoinRequest.from_wire(body())  # its ports: those the endpoint waits for (ProgramExternalConnectivity)
    return jsonify(services().translator.join(request).to_wire())


@network_api.post("/NetworkDriver.Leave")
def leave():
    """{NetworkID, EndpointID} (cnm.EndpointRequest) -> {}."""
    # Resent without a body: success (Leave undoes nothing here anyway).
    if released_nothing_if_resent():
        return jsonify({})
    services().translator.leave(cnm.EndpointRequest.from_wire(body()))
    return jsonify({})


@network_api.post("/NetworkDriver.ProgramExternalConnectivity")
def program_external_connectivity():
    """{NetworkID, EndpointID, Options: {com.docker.network.portmap: [...]}}
    (cnm.ExternalConnectivityRequest) -> {}."""
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
    services().translator.program_external_connectivity(cnm.ExternalConnectivityRequest.from_wire(body()))
    return jsonify({})


@network_api.post("/NetworkDriver.RevokeExternalConnectivity")
def revoke_external_connectivity():
    """{NetworkID, EndpointID} (cnm.EndpointRequest) -> {}."""
    # Resent without a body: success. An error here would fail the join of the
    # container's next network (Docker revokes the old gateway endpoint first).
    if released_nothing_if_resent():
        return jsonify({})
    services().translator.revoke_external_connectivity(cnm.EndpointRequest.from_wire(body()))
    return jsonify({})


@network_api.post("/NetworkDriver.AllocateNetwork")
def allocate_network():
    """(swarm only) -> {Options: {}}."""
    return jsonify(Options={})


@network_api.post("/NetworkDriver.FreeNetwork")
@network_api.post("/NetworkDriver.DiscoverNew")
@network_api.post("/NetworkDriver.DiscoverDelete")
def nothing_to_do():
    """FreeNetwork, DiscoverNew, DiscoverDelete: any object -> {}."""
    body()
    return jsonify({})


# -- IpamDriver -----------------------------------------------------------------

@ipam_api.post("/IpamDriver.GetCapabilities")
def ipam_capabilities():
    """{} -> {RequiresMACAddress, RequiresRequestReplay}: false, both."""
    return jsonify(RequiresMACAddress=False, RequiresRequestReplay=False)


@ipam_api.post("/IpamDriver.GetDefaultAddressSpaces")
def default_address_spaces():
    """{} -> {LocalDefaultAddressSpace, GlobalDefaultAddressSpace}."""
    from .ipam_driver import GLOBAL_SPACE, LOCAL_SPACE
    return jsonify(LocalDefaultAddressSpace=LOCAL_SPACE, GlobalDefaultAddressSpace=GLOBAL_SPACE)


@ipam_api.post("/IpamDriver.RequestPool")
def request_pool():
    """{AddressSpace, Pool, SubPool, Options, V6} (cnm.RequestPoolRequest)
    -> {PoolID, Pool, Data} (cnm.RequestPoolResponse)."""
    # Resent without a body: refused. Read as "any pool" it would hand out a
    # subnet the user did not ask for, and Docker would take it.
    refuse_if_resent("it names no pool, so none was reserved: run the command again")
    return jsonify(services().ipam.request_pool(cnm.RequestPoolRequest.from_wire(body())).to_wire())


@ipam_api.post("/IpamDriver.ReleasePool")
def release_pool():
    """{PoolID} (cnm.PoolRequest) -> {}."""
    # Resent without a body: success; Docker only logs a failed release.
    if released_nothing_if_resent():
        return jsonify({})
    services().ipam.release_pool(cnm.PoolRequest.from_wire(body()))
    return jsonify({})


@ipam_api.post("/IpamDriver.RequestAddress")
def request_address():
    """{PoolID, Address, Options: {RequestAddressType}} (cnm.AddressRequest)
    -> {Address 'ip/len', Data} (cnm.RequestAddressResponse)."""
    # Resent without a body: refused; it names no pool to take an address from.
    refuse_if_resent("it names no pool, so no address was reserved: try again")
    gateway_in_ip_range = backends.get(backend()).gateway_in_ip_range
    return jsonify(services().ipam.request_address(cnm.AddressRequest.from_wire(body()),
                                                   gateway_in_ip_range=gateway_in_ip_range).to_wire())


@ipam_api.post("/IpamDriver.ReleaseAddress")
def release_address():
    """{PoolID, Address} (cnm.AddressRequest) -> {}."""
    # Resent without a body: success; Docker only logs a failed release.
    if released_nothing_if_resent():
        return jsonify({})
    services().ipam.release_address(cnm.AddressRequest.from_wire(body()))
    return jsonify({})
