"""The HTTP endpoints Docker calls: Plugin.Activate, NetworkDriver.*, IpamDriver.*.

Docker sends no Content-Type and sometimes no body; every body is read leniently
as JSON (empty = {}) and checked here, at the edge, before anything acts on it.
"""

import json
import logging
import re
import time

from flask import Blueprint, current_app, g, jsonify, request

from cni_backend import trace

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
    data = with_ids("NetworkID")
    for key in ("IPv4Data", "IPv6Data"):
        if data.get(key) is not None and not (isinstance(data[key], list)
                                              and all(isinstance(d, dict) for d in data[key])):
            raise DriverError(f"{key} must be a list of objects")
    services().translator.create_network(driver_name(), backend(), data)
    return jsonify({})


@network_api.post("/NetworkDriver.DeleteNetwork")
def delete_network():
    services().translator.delete_network(with_ids("NetworkID"))
    return jsonify({})


@network_api.post("/NetworkDriver.CreateEndpoint")
def create_endpoint():
    return jsonify(services().translator.create_endpoint(with_ids("NetworkID", "EndpointID")))


@network_api.post("/NetworkDriver.EndpointOperInfo")
def endpoint_oper_info():
    return jsonify(services().translator.oper_info(with_ids("NetworkID", "EndpointID")))


@network_api.post("/NetworkDriver.DeleteEndpoint")
def delete_endpoint():
    services().translator.delete_endpoint(with_ids("NetworkID", "EndpointID"))
    return jsonify({})


@network_api.post("/NetworkDriver.Join")
def join():
    data = with_ids("NetworkID", "EndpointID")
    if not isinstance(data.get("SandboxKey", ""), str):
        raise DriverError("SandboxKey must be a string")
    return jsonify(services().translator.join(data))


@network_api.post("/NetworkDriver.Leave")
def leave():
    services().translator.leave(with_ids("NetworkID", "EndpointID"))
    return jsonify({})


@network_api.post("/NetworkDriver.ProgramExternalConnectivity")
def program_external_connectivity():
    services().translator.program_external_connectivity(with_ids("NetworkID", "EndpointID"))
    return jsonify({})


@network_api.post("/NetworkDriver.RevokeExternalConnectivity")
def revoke_external_connectivity():
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
    return jsonify(services().ipam.request_pool(_ipam_body()))


@ipam_api.post("/IpamDriver.ReleasePool")
def release_pool():
    return jsonify(services().ipam.release_pool(_ipam_body()))


@ipam_api.post("/IpamDriver.RequestAddress")
def request_address():
    return jsonify(services().ipam.request_address(_ipam_body()))


@ipam_api.post("/IpamDriver.ReleaseAddress")
def release_address():
    return jsonify(services().ipam.release_address(_ipam_body()))
