"""The least a remote network driver in Python can do: bench/docker_run.py's floor.

Served as ours is (gunicorn's sync workers, Flask, pyroute2 loaded once per
worker, a Unix socket in /run/docker/plugins), it does the netlink work of
Docker's bridge driver and nothing else: a Linux bridge with the gateway
address per network; per endpoint, at Join, a veth pair with the host end a
port of the bridge; the veth deleted at DeleteEndpoint. No firewall rule, no
state on disk, no CNI, no validation: not a driver to use, only a measure of
what Docker's remote-driver protocol costs by itself (the HTTP round trips,
the interface handed over by name) against a built-in driver.

    gunicorn --chdir REPO --workers 3 --bind unix:/run/docker/plugins/NAME.sock bench.floor_driver:app

With FLOOR_VETHS_AHEAD=N (and FLOOR_CLAIMS_DIR, an empty directory), the
floor does even less on a container's path: CreateNetwork makes N veth pairs
on the bridge, and each Join hands out the next one not yet claimed (a
directory made in FLOOR_CLAIMS_DIR claims it, whichever worker answers).
Its Join is then a lookup: what a remote driver costs a `docker run` with no
work of its own at all (bench/load.py's "ahead" column).

While tracing is on (cni_backend.trace, as for the shim), each request is
one `shim` span, as the shim records them: bench/driver_path.py lays the two
drivers' calls side by side.
"""

import errno
import ipaddress
import json
import os

from flask import Flask, g, request
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cni_backend import trace

app = Flask(__name__)
ipr = IPRoute()
# veth pairs made at CreateNetwork for the Joins to hand out (see above)
AHEAD = int(os.environ.get("FLOOR_VETHS_AHEAD", "0"))
CLAIMS = os.environ.get("FLOOR_CLAIMS_DIR", "")


@app.before_request
def _trace_start():
    g.trace = trace.begin()


@app.teardown_request
def _trace_end(_exc):
    trace.end(g.pop("trace", None), "shim", path=request.path)


def _body() -> dict:
    data = request.get_data()  # Docker sends JSON without a Content-Type, sometimes no body at all
    return json.loads(data) if data else {}


def _bridge(network_id: str) -> str:
    return "flbr" + network_id[:10]


def _host_end(endpoint_id: str) -> str:
    return "flh" + endpoint_id[:11]


def _container_end(endpoint_id: str) -> str:
    return "flc" + endpoint_id[:11]


@app.post("/Plugin.Activate")
def activate():
    return {"Implements": ["NetworkDriver"]}


@app.post("/NetworkDriver.GetCapabilities")
def capabilities():
    return {"Scope": "local", "ConnectivityScope": "local"}


@app.post("/NetworkDriver.CreateNetwork")
def create_network():
    body = _body()
    gateway = ipaddress.ip_interface(body["IPv4Data"][0]["Gateway"])
    name = _bridge(body["NetworkID"])
    ipr.link("add", ifname=name, kind="bridge")
    index = ipr.link_lookup(ifname=name)[0]
    ipr.addr("add", index=index, address=str(gateway.ip), prefixlen=gateway.network.prefixlen)
    ipr.link("set", index=index, state="up")
    if AHEAD:
        os.mkdir(_taken(body["NetworkID"]))
    for i in range(AHEAD):
        host, container = _spare(body["NetworkID"], i)
        ipr.link("add", ifname=host, kind="veth", peer=container, master=index, state="up")
    return {}


def _spare(network_id: str, i: int) -> tuple:
    """The host and container ends of the network's i-th veth made ahead."""
    return f"fs{network_id[:5]}{i:05d}", f"fc{network_id[:5]}{i:05d}"


@app.post("/NetworkDriver.DeleteNetwork")
def delete_network():
    network_id = _body()["NetworkID"]
    for i in range(AHEAD):
        for index in ipr.link_lookup(ifname=_spare(network_id, i)[0]):
            ipr.link("del", index=index)
    for index in ipr.link_lookup(ifname=_bridge(network_id)):
        ipr.link("del", index=index)
    return {}


@app.post("/NetworkDriver.Join")
def join():
    body = _body()
    bridge = ipr.link_lookup(ifname=_bridge(body["NetworkID"]))[0]
    if AHEAD:
        container = _claim_spare(body["NetworkID"], body["EndpointID"])
    else:
        host, container = _host_end(body["EndpointID"]), _container_end(body["EndpointID"])
        ipr.link("add", ifname=host, kind="veth", peer=container, master=bridge, state="up")
    gateway = ipr.get_addr(index=bridge, family=2)[0].get_attr("IFA_ADDRESS")
    return {"InterfaceName": {"SrcName": container, "DstPrefix": "eth"}, "Gateway": gateway}


def _claim_spare(network_id: str, endpoint_id: str) -> str:
    """The container end of the next veth made ahead no Join has claimed.
    Claims are made in order, so their count is the next one's number;
    another worker's claim meanwhile moves this one on."""
    taken = _taken(network_id)
    i = len(os.listdir(taken))
    while i < AHEAD:
        try:
            os.mkdir(os.path.join(taken, str(i)))
        except FileExistsError:
            i += 1
            continue
        with open(_claim_of(endpoint_id), "w") as f:  # for its DeleteEndpoint
            f.write(str(i))
        return _spare(network_id, i)[1]
    raise RuntimeError(f"all {AHEAD} veths made ahead are taken")


def _taken(network_id: str) -> str:
    """The directory of the network's claims, made with its veths."""
    return os.path.join(CLAIMS, f"taken-{network_id[:12]}")


def _claim_of(endpoint_id: str) -> str:
    return os.path.join(CLAIMS, f"endpoint-{endpoint_id}")


@app.post("/NetworkDriver.DeleteEndpoint")
def delete_endpoint():
    body = _body()
    host = _host_end(body["EndpointID"])
    if AHEAD:
        try:
            with open(_claim_of(body["EndpointID"])) as f:
                host = _spare(body["NetworkID"], int(f.read()))[0]
        except FileNotFoundError:  # never joined
            return {}
    for index in ipr.link_lookup(ifname=host):
        try:
            ipr.link("del", index=index)
        except NetlinkError as exc:  # gone with the container's namespace meanwhile: so much the better
            if exc.code != errno.ENODEV:
                raise
    return {}


@app.post("/NetworkDriver.EndpointOperInfo")
def endpoint_info():
    return {"Value": {}}


def _nothing():
    return {}


for verb in ("CreateEndpoint", "Leave", "ProgramExternalConnectivity", "RevokeExternalConnectivity",
             "DiscoverNew", "DiscoverDelete"):
    app.add_url_rule(f"/NetworkDriver.{verb}", verb, _nothing, methods=["POST"])
