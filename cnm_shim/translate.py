"""CNM -> CNI: what each of Docker's NetworkDriver calls means in CNI terms.

  CreateNetwork   validate the -o options, render the network's conflist,
                  create the bridge, optionally export the conflist
  CreateEndpoint  record the addresses Docker's IPAM chose; pick a MAC if none
  Join            CNI ADD into a staging namespace (the sandbox may not exist
                  yet), move the interface to the host for Docker to take
  DeleteEndpoint  CNI DEL with the config and result cached at ADD
  DeleteNetwork   remove what CreateNetwork made and anything left behind
"""

import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import secrets

from cni_backend import addresses, files, networks, staging
from cni_backend.errors import CNIError
from cni_backend.invoke import api, conflist as conflists
from cni_backend.ipam import config as ipam_config
from cni_backend.ipam.store import open_store
from cni_backend.net import netlink
from cni_backend.plugins.ipam import RESERVED_ARG

from . import backends, options, ownership, paths, ports, render
from .errors import DriverError, step
from .ipam_driver import ADDRESS_SPACES, IpamDriver
from .state import ENDPOINT, NETWORK, POOL, State

log = logging.getLogger("cnm-shim")
CONTAINER_IFNAME = "eth0"  # inside the staging namespace; Docker renames it in the sandbox


@dataclasses.dataclass
class Settings:
    state_dir: str = paths.STATE_DIR
    run_dir: str = paths.RUN_DIR
    ipam_data_dir: str = paths.IPAM_DATA_DIR
    cni_path: tuple = paths.CNI_PATH
    cni_conf_dir: str = paths.CNI_CONF_DIR
    etcd_endpoints: tuple = ()   # addresses global across hosts when set
    etcd_tls: dict | None = None  # {"ca", "cert", "key"} for https members
    etcd_insecure: bool = False   # plain http:// members accepted (--insecure-etcd)

    def store(self):
        return open_store(self.ipam_data_dir, self.etcd_endpoints, etcd_tls=self.etcd_tls)


def _ip(value: str, what: str):
    try:
        return addresses.interface(value, what)
    except ValueError as exc:
        raise DriverError(str(exc)) from None


def host_name(ep: dict) -> str:
    """The name the endpoint's interface has in the host between Join and
    Docker moving it into the sandbox."""
    return "rc" + ep["endpoint_id"][:12]


def mac_for(address: str) -> str:
    """Docker's own choice for an IPv4 address (02:42 + the address), else random."""
    if address and _ip(address, "address").version == 4:
        octets = _ip(address, "address").ip.packed
    else:
        octets = secrets.token_bytes(4)
    return "02:42:" + ":".join(f"{b:02x}" for b in octets)


def _port_requests(body: dict) -> list:
    """Docker's com.docker.network.portmap, as the host ports asked for
    (ranges and HostPort 0 unresolved: cnm_shim/ports.py allocates them)."""
    return [r.as_dict() for r in ports.requests((body.get("Options") or {}).get("com.docker.network.portmap"))]


def _raw(conf: dict) -> bytes:
    """A conflist as the bytes handed to CNI (and kept in its cache)."""
    return json.dumps(conf, indent=2).encode()


def join_answer(result: dict, src_name: str) -> dict:
    """The CNI result -> Join's InterfaceName, Gateway(s) and StaticRoutes."""
    answer = {"InterfaceName": {"SrcName": src_name, "DstPrefix": "eth"}, "StaticRoutes": []}
    defaults = {4: False, 6: False}
    for route in result.get("routes", []):
        dst = ipaddress.ip_network(route["dst"])
        if dst.prefixlen == 0:
            defaults[dst.version] = True
            continue
        static = {"Destination": str(dst), "RouteType": 1}
        if route.get("gw"):
            static.update(RouteType=0, NextHop=route["gw"])
        answer["StaticRoutes"].append(static)
    for ip in result.get("ips", []):
        version = ipaddress.ip_interface(ip["address"]).version
        if ip.get("gateway") and defaults[version]:
            answer["Gateway" if version == 4 else "GatewayIPv6"] = ip["gateway"]
    return answer


class Translator:
    def __init__(self, state: State, settings: Settings, ipam: IpamDriver):
        self.state = state
        self.settings = settings
        self.ipam = ipam
        self.cni = api.CNI(list(settings.cni_path), cache_dir=os.path.join(settings.state_dir, "cni"))
        self.ports = ports.PortAllocator(state.path)
        for ep in state.all(ENDPOINT):  # published by a version that kept no allocations
            if ep.get("port_mappings") and not ep.get("port_requests"):
                self.ports.adopt(State.endpoint_key(ep["network_id"], ep["endpoint_id"]), ep["port_mappings"])

    # -- networks ----------------------------------------------------------

    def create_network(self, driver: str, backend: str, body: dict) -> None:
        network_id = body["NetworkID"]
        if self.state.get(NETWORK, network_id):
            return  # Docker retried: the network is made already
        raw_options = body.get("Options") or {}
        chosen, generic = options.choose_backend(driver, backend, raw_options.get("com.docker.network.generic") or {})
        entry = backends.get(chosen)
        if chosen != backend:  # name the backend in messages, not the socket it came in on
            backend, driver = chosen, entry.driver
        opts = options.parse(driver, backend, generic)
        ipv4, ipv6 = body.get("IPv4Data") or [], body.get("IPv6Data") or []
        opts.update(ownership.internal(driver, entry, generic, options.docker_flags(driver, raw_options, ipv4, ipv6)))
        cni_name = opts["cni.name"] or "rancher-" + network_id[:12]
        bridge = opts["bridge"] or entry.bridge_prefix + network_id[:12]
        self._refuse_duplicates(network_id, cni_name, bridge, entry, opts)
        ownership.refuse_foreign_bridge(driver, bridge, opts, own=bridge == entry.bridge_prefix + network_id[:12])
        sub_pools = {p["subnet"]: p["sub_pool"] for p in self.state.all(POOL) if p.get("sub_pool")}
        ipam = render.ipam_section(ipv4, ipv6, self.settings.ipam_data_dir, sub_pools, self.settings.etcd_endpoints,
                                   self.settings.etcd_tls, self.settings.etcd_insecure)
        conf = render.conflist(cni_name, entry.render(bridge, opts, ipam))
        self._validated(_raw(conf))
        net = {"id": network_id, "driver": driver, "backend": backend, "options": opts,
               "cni_name": cni_name, "bridge": bridge, "conflist": conf,
               "docker_ipam": any(d.get("AddressSpace") in ADDRESS_SPACES for d in ipv4 + ipv6)}
        with contextlib.ExitStack() as undo:
            with step(driver):  # the backend chosen, not the socket's driver
                for address in entry.host.reserved_addresses(net):
                    self._keep_link_address_out_of_docker_ipam(net, ipv4, address)
                entry.host.create(net, undo)
            net["exported"] = self._export(cni_name, render.exported(conf)) if opts["cni.export"] else None
            self.state.put(NETWORK, network_id, net)
            undo.pop_all()
        log.info("network %s: %s (%s) on bridge %s", network_id[:12], cni_name, backend, bridge)

    def _keep_link_address_out_of_docker_ipam(self, net: dict, ipv4: list, link_ip: str) -> None:
        if net["docker_ipam"]:
            subnet = next(str(ipaddress.ip_network(d["Pool"])) for d in ipv4
                          if ipaddress.ip_address(link_ip) in ipaddress.ip_network(d["Pool"]))
            self.ipam.reserve_link_address(subnet, link_ip)
            return
        aux = {str(a).split("/")[0] for d in ipv4 for a in (d.get("AuxAddresses") or {}).values()}
        if link_ip not in aux:
            raise DriverError(f"{net['driver']}: Docker's IPAM could hand out the metadata link address {link_ip}; "
                              f"add --aux-address metadata-link={link_ip} (or use --ipam-driver {net['driver']})")

    def _refuse_duplicates(self, network_id: str, cni_name: str, bridge: str, entry: backends.Backend,
                           opts: dict) -> None:
        ownership.refuse_name_clashes(cni_name, self.state.all(NETWORK), self.settings.cni_conf_dir)
        for other in self.state.all(NETWORK):
            for key, label in entry.unique:  # e.g. a VNI: two networks would be one segment
                if other["backend"] == entry.name and other["options"][key] == opts[key]:
                    raise DriverError(f"{label} {opts[key]} is already used by network {other['id'][:12]}; "
                                      f"choose another with -o {key}=N")
            if other["bridge"] == bridge:
                raise DriverError(f"bridge {bridge!r} is already used by network {other['id'][:12]}; "
                                  "choose another with -o bridge=NAME")

    @staticmethod
    def _validated(raw: bytes) -> dict:
        with step("invalid network configuration"):
            conf = conflists.parse(raw, "rendered conflist")
            for plugin in conf["plugins"]:  # the IPAM's own checks: a pool too small, a gateway outside it
                ipam_config.load(plugin["ipam"], {})
            return conf

    def _export(self, cni_name: str, conf: dict) -> str:
        """The conflist where CNI runtimes look, written atomically."""
        raw = _raw(conf)
        os.makedirs(self.settings.cni_conf_dir, mode=0o755, exist_ok=True)
        path = os.path.join(self.settings.cni_conf_dir, f"50-{cni_name}.conflist")
        files.write_atomic(path, raw, 0o644)  # a runtime never reads half a file
        return path

    def delete_network(self, body: dict) -> None:
        network_id = body["NetworkID"]
        net = self.state.get(NETWORK, network_id)
        if net is None:
            return
        for ep in self.state.all(ENDPOINT):
            if ep["network_id"] == network_id:
                self._cni_del(net, ep)
                self.ports.release(State.endpoint_key(network_id, ep["endpoint_id"]))
                self.state.delete(ENDPOINT, State.endpoint_key(network_id, ep["endpoint_id"]))
        backends.get(net["backend"]).host.remove(net)
        main, ports = ownership.own_names(net, self.state.all(NETWORK))
        networks.forget(main, self.settings.store(), ports_list=ports)
        if net.get("exported"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(net["exported"])
        self.state.delete(NETWORK, network_id)
        log.info("network %s removed", network_id[:12])

    # -- endpoints ---------------------------------------------------------

    def _network(self, network_id: str) -> dict:
        net = self.state.get(NETWORK, network_id)
        if net is None:
            raise DriverError(f"network {network_id[:12]} is unknown to this driver")
        return net

    def create_endpoint(self, body: dict) -> dict:
        net = self._network(body["NetworkID"])
        iface = body.get("Interface") or {}
        address, address6 = iface.get("Address") or "", iface.get("AddressIPv6") or ""
        if not address and not address6:
            raise DriverError(f"{net['driver']} needs an address from the IPAM driver (the null IPAM driver gives none)")
        for value, what in ((address, "Address"), (address6, "AddressIPv6")):
            if value:
                _ip(value, what)
        key = State.endpoint_key(net["id"], body["EndpointID"])
        known = self.state.get(ENDPOINT, key)
        if known is not None:  # Docker retried: the same endpoint answers the same, keeps its state
            if (known["address"], known["address6"]) != (address, address6):
                raise DriverError(f"endpoint {body['EndpointID'][:12]} exists already with other addresses")
            chosen = not iface.get("MacAddress")
            return {"Interface": {"MacAddress": known["mac"]}} if chosen else {}
        answer = {}
        mac = iface.get("MacAddress") or ""
        if not mac:
            mac = answer["MacAddress"] = mac_for(address)
        self.state.put(ENDPOINT, key, {
            "network_id": net["id"], "endpoint_id": body["EndpointID"],
            "address": address, "address6": address6, "mac": mac, "result": None,
        })
        return {"Interface": answer} if answer else {}

    def _endpoint(self, body: dict) -> tuple:
        net = self._network(body["NetworkID"])
        ep = self.state.get(ENDPOINT, State.endpoint_key(net["id"], body["EndpointID"]))
        if ep is None:
            raise DriverError(f"endpoint {body['EndpointID'][:12]} is unknown to this driver")
        return net, ep

    def _attachment(self, net: dict, ep: dict, netns: str) -> api.Attachment:
        caps = {"ips": [a for a in (ep["address"], ep["address6"]) if a], "mac": ep["mac"]}
        args = [("IgnoreUnknown", "1")] + ([(RESERVED_ARG, "true")] if net["docker_ipam"] else [])
        return api.Attachment(ep["endpoint_id"], netns, CONTAINER_IFNAME, args=args, capability_args=caps)

    def join(self, body: dict) -> dict:
        net, ep = self._endpoint(body)
        if ep.get("result"):  # a repeated Join: the interface exists already
            return join_answer(ep["result"], ep["src_name"])
        requested = _port_requests(body)  # checked before anything is made
        self._reclaim_from_stale_endpoints(net, ep)
        staging_path = self._staging_path(ep)
        src_name = host_name(ep)
        conf = net["conflist"]
        raw = _raw(conf)
        staging.create(staging_path)
        try:
            try:
                with step(f"{net['driver']}: CNI ADD on {net['cni_name']} failed"):
                    result = self.cni.add(conf, raw, self._attachment(net, ep, staging_path))
                    staging.move_to_host(staging_path, CONTAINER_IFNAME, src_name)
            except CNIError:
                self._cni_del(net, ep, quiet=True)
                raise
        finally:
            staging.remove(staging_path)
        ep.update(result=result, src_name=src_name, sandbox_key=body.get("SandboxKey", ""),
                  ports_at_join=requested)
        self.state.put(ENDPOINT, State.endpoint_key(net["id"], ep["endpoint_id"]), ep)
        return join_answer(result, src_name)

    def _staging_path(self, ep: dict) -> str:
        return os.path.join(self.settings.run_dir, "staging", ep["endpoint_id"][:24])

    def _discard_half_joined(self, ep: dict) -> None:
        """What a Join killed half-way leaves: its staging namespace (with the
        container side of the veth) and the interface moved to the host under
        our name, if Docker never took it. Both named after the endpoint; after
        a normal Leave the interface is back under that name, and deleting it
        first is what the bridge DEL would do anyway (one veth end takes the
        other)."""
        staging.remove(self._staging_path(ep))
        with netlink.socket_in() as host:
            if netlink.delete_link(host, host_name(ep)) and not ep.get("result"):
                log.warning("endpoint %s: removed %s, left by an interrupted Join", ep["endpoint_id"][:12],
                            host_name(ep))

    def _reclaim_from_stale_endpoints(self, net: dict, ep: dict) -> None:
        """Docker's IPAM gave this endpoint an address one of our older endpoints
        of the same network still holds: Docker no longer has that endpoint (a
        dockerd killed before it could call DeleteEndpoint), so tear it down."""
        for address in (ep["address"], ep["address6"]):
            if not address:
                continue
            iface = ipaddress.ip_interface(address)
            holder = networks.holder_of(self.settings.store(), str(iface.network), str(iface.ip))
            if holder is None or holder.network != net["cni_name"] or holder.container_id == ep["endpoint_id"]:
                continue
            stale = self.state.get(ENDPOINT, State.endpoint_key(net["id"], holder.container_id))
            if stale is None:
                continue  # a CNI runtime's container: ADD will report the clash
            log.warning("endpoint %s reclaims %s from stale endpoint %s", ep["endpoint_id"][:12],
                        iface.ip, holder.container_id[:12])
            self._revoke_ports(net, stale)
            self._cni_del(net, stale)
            self.state.delete(ENDPOINT, State.endpoint_key(net["id"], holder.container_id))

    def leave(self, body: dict) -> None:
        """Nothing to undo yet: Docker moves the interface back to the host after
        Leave and only then calls DeleteEndpoint, where CNI DEL runs."""

    def delete_endpoint(self, body: dict) -> None:
        net = self.state.get(NETWORK, body["NetworkID"])
        key = State.endpoint_key(body["NetworkID"], body["EndpointID"])
        ep = self.state.get(ENDPOINT, key)
        if net is None or ep is None:
            return  # Docker cleans up endpoints we never saw or forgot: success
        self._revoke_ports(net, ep)
        self._discard_half_joined(ep)
        self._cni_del(net, ep)
        self.state.delete(ENDPOINT, key)

    def _cni_del(self, net: dict, ep: dict, quiet: bool = False) -> None:
        conf = net["conflist"]
        try:
            with step(f"{net['driver']}: CNI DEL on {net['cni_name']} failed"):
                self.cni.delete(conf, _raw(conf), self._attachment(net, ep, ""))
        except CNIError as exc:
            if not quiet:
                raise
            log.warning("undoing ADD of %s: %s", ep["endpoint_id"][:12], exc)

    # -- published ports -----------------------------------------------------

    def program_external_connectivity(self, body: dict) -> None:
        net, ep = self._endpoint(body)
        requested = _port_requests(body)
        if not requested or ep.get("port_requests") == requested:
            if ep.get("ports_at_join"):
                ep["ports_at_join"] = None  # the call it waited for came, asking nothing new
                self.state.put(ENDPOINT, State.endpoint_key(net["id"], ep["endpoint_id"]), ep)
            return
        if not ep.get("result"):
            raise DriverError(f"endpoint {ep['endpoint_id'][:12]} has not joined a sandbox yet")
        key = State.endpoint_key(net["id"], ep["endpoint_id"])
        # First, so a refusal (Docker's "Bind for ...") changes nothing; the endpoint's own ports count as free to it.
        mappings = self.ports.allocate(key, [ports.Request(**r) for r in requested])
        if ep.get("port_mappings"):
            try:
                self._remove_port_rules(net, ep)
            except CNIError:  # still published, so still held
                self.ports.release(key)
                self.ports.adopt(key, ep["port_mappings"])
                raise
            ep["port_requests"] = ep["port_mappings"] = None  # gone from the kernel: gone from the record
            self.state.put(ENDPOINT, key, ep)
        conf = render.ports_conflist(net["conflist"])
        att = api.Attachment(ep["endpoint_id"], ep.get("sandbox_key") or "/proc/self/ns/net", CONTAINER_IFNAME,
                             capability_args={"portMappings": mappings})
        try:
            with step(f"{net['driver']}: publishing ports failed"):
                self.cni.add(conf, _raw(conf), att, prev_result=ep["result"])
        except CNIError:
            try:  # undo what the ADD made; its own failure must not hide the ADD's
                self._revoke_ports(net, dict(ep, port_mappings=mappings))
            except CNIError as exc:
                log.warning("undoing published ports of %s: %s", ep["endpoint_id"][:12], exc)
                self.ports.release(key)
            raise
        ep["port_requests"], ep["port_mappings"], ep["ports_at_join"] = requested, mappings, None
        self.state.put(ENDPOINT, State.endpoint_key(net["id"], ep["endpoint_id"]), ep)

    def revoke_external_connectivity(self, body: dict) -> None:
        net = self.state.get(NETWORK, body["NetworkID"])
        ep = self.state.get(ENDPOINT, State.endpoint_key(body["NetworkID"], body["EndpointID"]))
        if net is not None and ep is not None and (ep.get("port_mappings") or ep.get("ports_at_join")):
            self._revoke_ports(net, ep)
            ep["port_requests"] = ep["port_mappings"] = ep["ports_at_join"] = None  # no longer the gateway endpoint: waits for nothing
            self.state.put(ENDPOINT, State.endpoint_key(net["id"], ep["endpoint_id"]), ep)

    def endpoints_awaiting_ports(self, driver: str) -> list:
        """Short IDs of `driver`'s endpoints whose Join carried published ports
        and that no ProgramExternalConnectivity has reached since. (An
        endpoint that is not its container's gateway never gets that call and
        waits for good: rare, and it only makes an ambiguous retry fail.)"""
        drivers = {net["id"]: net["driver"] for net in self.state.all(NETWORK)}
        return [ep["endpoint_id"][:12] for ep in self.state.all(ENDPOINT)
                if drivers.get(ep["network_id"]) == driver and ep.get("ports_at_join")]

    def _revoke_ports(self, net: dict, ep: dict) -> None:
        """The endpoint's port rules removed, then its host ports released
        (also those of an allocation a kill kept from being recorded)."""
        self._remove_port_rules(net, ep)
        self.ports.release(State.endpoint_key(net["id"], ep["endpoint_id"]))

    def _remove_port_rules(self, net: dict, ep: dict) -> None:
        if ep.get("port_mappings"):
            conf = render.ports_conflist(net["conflist"])
            att = api.Attachment(ep["endpoint_id"], "", CONTAINER_IFNAME,
                                 capability_args={"portMappings": ep["port_mappings"]})
            with step(f"{net['driver']}: removing published ports failed"):
                self.cni.delete(conf, _raw(conf), att)

    def oper_info(self, body: dict) -> dict:
        net, ep = self._endpoint(body)
        result = ep.get("result") or {}
        host_side = [i["name"] for i in result.get("interfaces", []) if i.get("name", "").startswith("veth")]
        value = {"cni_network": net["cni_name"], "bridge": net["bridge"],
                 "host_interface": host_side[0] if host_side else "",
                 "addresses": [ip["address"] for ip in result.get("ips", [])]}
        if ep.get("port_mappings"):  # as Docker's bridge driver answers, with the host ports chosen
            value["com.docker.network.portmap"] = ports.docker_portmap(ep["port_mappings"])
        return {"Value": value}

    def endpoints(self) -> list:
        return self.state.all(ENDPOINT)
