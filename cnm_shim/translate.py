"""CNM -> CNI: what each of Docker's NetworkDriver calls means in CNI terms.

  CreateNetwork   validate the -o options, render the network's conflist,
                  create the bridge, optionally export the conflist
  CreateEndpoint  record the addresses Docker's IPAM chose; pick a MAC if none;
                  with only our plug-ins, CNI ADD right after the answer, the
                  interface made in the host for Docker to take (attach_ahead)
  Join            otherwise CNI ADD into a staging namespace (the sandbox may
                  not exist yet), and the interface moved to the host
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

from cni_backend import hostnet, runtime

from . import backends, cnm, options, ownership, paths, ports, render
from .errors import DriverError, step
from .ipam_driver import ADDRESS_SPACES, IpamDriver
from .state import NETWORK, Endpoint, Network, State

log = logging.getLogger("cnm-shim")
# in the state dir: an endpoint's lock while work on it runs after Docker has
# an answer: its ADD after CreateEndpoint's (attach_ahead), its teardown after
# DeleteEndpoint's (endpoint_teardown)
TEARDOWN_DIR = "teardown"
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
        return hostnet.open_store(self.ipam_data_dir, self.etcd_endpoints, etcd_tls=self.etcd_tls)


def _ip(value: str, what: str):
    try:
        return hostnet.addresses.interface(value, what)
    except ValueError as exc:
        raise DriverError(str(exc)) from None


def host_name(ep: Endpoint) -> str:
    """The name the endpoint's interface has in the host between Join and
    Docker moving it into the sandbox."""
    return "rc" + ep.endpoint_id[:12]


def mac_for(address: str) -> str:
    """Docker's own choice for an IPv4 address (02:42 + the address), else random."""
    if address and _ip(address, "address").version == 4:
        octets = _ip(address, "address").ip.packed
    else:
        octets = secrets.token_bytes(4)
    return "02:42:" + ":".join(f"{b:02x}" for b in octets)


def _port_requests(request) -> list:
    """Docker's com.docker.network.portmap, as the host ports asked for
    (ranges and HostPort 0 unresolved: cnm_shim/ports.py allocates them)."""
    return [r.as_dict() for r in request.port_requests]


def _raw(conf: dict) -> bytes:
    """A conflist as the bytes handed to CNI (and kept in its cache)."""
    return json.dumps(conf, indent=2).encode()


def join_answer(result: dict, src_name: str) -> cnm.JoinResponse:
    """The CNI result -> Join's InterfaceName, Gateway(s) and StaticRoutes."""
    routes, defaults, gateways = [], {4: False, 6: False}, {4: "", 6: ""}
    via = {4: "", 6: ""}  # a default route's own next hop (static IPAM gives no ips[].gateway)
    for route in result.get("routes", []):
        dst = ipaddress.ip_network(route["dst"])
        if dst.prefixlen == 0:
            defaults[dst.version] = True
            via[dst.version] = via[dst.version] or route.get("gw") or ""
            continue
        if route.get("gw"):
            routes.append(cnm.StaticRoute(str(dst), 0, route["gw"]))
        else:
            routes.append(cnm.StaticRoute(str(dst), 1))
    for ip in result.get("ips", []):
        version = ipaddress.ip_interface(ip["address"]).version
        if ip.get("gateway") and defaults[version]:
            gateways[version] = ip["gateway"]
    for version in (4, 6):
        gateways[version] = gateways[version] or via[version]
    return cnm.JoinResponse(src_name, gateway=gateways[4], gateway_ipv6=gateways[6], static_routes=tuple(routes))


# IPAM plug-ins that read CNI_ARGS IP= as CIDRs; host-local (and the rest) read plain addresses
_IP_ARG_AS_CIDR = ("static",)


def _ip_arg(conflist: dict, addresses: list) -> str:
    """Docker's addresses as the conflist's IPAM reads IP= in CNI_ARGS."""
    kinds = {(plugin.get("ipam") or {}).get("type") for plugin in conflist["plugins"]}
    if kinds & set(_IP_ARG_AS_CIDR):
        return ",".join(addresses)
    return ",".join(a.split("/")[0] for a in addresses)


def _same_addresses_as_docker(net: Network, ep: Endpoint, result: dict) -> None:
    """Docker gives the container the address its IPAM chose; the CNI result
    must say the same, or Docker (inspect, DNS) would name another address
    than the one the plug-ins set up: refused, and the ADD undone."""
    wanted = {a.split("/")[0] for a in (ep.address, ep.address6) if a}
    got = {ip["address"].split("/")[0] for ip in result.get("ips", [])}
    if wanted and not wanted <= got:
        raise runtime.CNIError(runtime.errors.INVALID_CONFIG,
                               f"the IPAM of {net.cni_name} assigned {', '.join(sorted(got)) or 'no address'}, "
                               f"not Docker's {', '.join(sorted(wanted))}: use an IPAM that takes a requested "
                               "address (host-local, static: they get it as IP= and the ips capability) over "
                               "the same subnet as Docker's --subnet")


def _chain_publishes(net: Network) -> bool:
    """A network whose own list publishes ports: one of our backends with
    -o portmap=reference (the reference portmap chained last, render.py), or
    a conflist network (rancher-conflist) whose list does: a
    plug-in of it declares `capabilities: {"portMappings": true}` (the
    reference portmap, as CNI runtimes chain it). Such a list gets Docker's
    published ports as the portMappings capability, host ports allocated by
    ports.py as on our backends. A list without one still publishes, through
    rancher-portmap run after it as on our backends: Docker's user asked for
    -p and the network is a Docker network; refusing would make `-p` depend on
    a line of a file the user may not own, and `portmap` without the
    capability declared gets no mappings from libcni either."""
    return bool(runtime.CNI.declaring(net.conflist, "portMappings"))


def _has_ipv4(ep: Endpoint) -> bool:
    return any(ipaddress.ip_interface(ip["address"]).version == 4 for ip in (ep.result or {}).get("ips", []))


def _families_portmap_serves(net: Network, ep: Endpoint, requested: list) -> None:
    """The reference portmap forwards a host address only to a container
    address of its family and skips the rest without a word: a host IP of a
    family the container has no address of is refused, not left unpublished."""
    families = {ipaddress.ip_interface(ip["address"]).version for ip in (ep.result or {}).get("ips", [])}
    for request in requested:
        if request["host_ip"] and ipaddress.ip_address(request["host_ip"]).version not in families:
            have = " and ".join(f"IPv{v}" for v in sorted(families)) or "no"
            raise DriverError(f"{net.driver}: cannot publish {request['host_ip']}:{request['first']} to port "
                              f"{request['container_port']}/{request['protocol']}: the container has {have} "
                              f"addresses on {net.cni_name}, and portmap forwards only within an address family")


class Translator:
    def __init__(self, state: State, settings: Settings, ipam: IpamDriver):
        self.state = state
        self.settings = settings
        self.ipam = ipam
        self.cni = runtime.CNI(list(settings.cni_path), cache_dir=os.path.join(settings.state_dir, "cni"),
                               runner=runtime.own_runner)
        self.ports = ports.PortAllocator(state.path)
        for ep in state.endpoints():  # published by a version that kept no allocations
            if ep.port_mappings and not ep.port_requests:
                self.ports.adopt(ep.key, ep.port_mappings)

    # -- networks ----------------------------------------------------------

    def create_network(self, driver: str, backend: str, request: cnm.CreateNetworkRequest) -> None:
        # One CreateNetwork at a time on this host (every worker process):
        # its checks (names, bridge, VNI, the bridge link, the CNI config
        # directory) and what makes them true for the next call (the host's
        # bridge, the exported conflist, the state record) are one critical
        # section, or two clashing networks could both pass. The host-side work
        # stays inside: a check reads the links and files it makes. Endpoints
        # and IPAM calls do not take this lock.
        with hostnet.held_lock(os.path.join(self.settings.state_dir, "create-network.lock")):
            self._create_network(driver, backend, request)

    def _create_network(self, driver: str, backend: str, request: cnm.CreateNetworkRequest) -> None:
        network_id = request.network_id
        if self.state.network(network_id):
            return  # Docker retried: the network is made already
        chosen, generic = options.choose_backend(driver, backend, request.generic)
        entry = backends.get(chosen)
        if chosen != backend:  # name the backend in messages, not the socket it came in on
            backend, driver = chosen, entry.driver
        opts = options.parse(driver, backend, generic)
        ipv4, ipv6 = request.ipv4_data, request.ipv6_data
        opts.update(ownership.internal(driver, entry, generic, options.docker_flags(
            driver, request.options, [d.to_wire() for d in ipv4], [d.to_wire() for d in ipv6])))
        if entry.takes_conflist:
            self._create_conflist_network(driver, backend, network_id, opts, ipv4 + ipv6)
            return
        cni_name = opts["cni.name"] or "rancher-" + network_id[:12]
        bridge = opts["bridge"] or entry.bridge_prefix + network_id[:12]
        self._refuse_duplicates(network_id, cni_name, bridge, entry, opts)
        ownership.refuse_foreign_bridge(driver, bridge, opts, own=bridge == entry.bridge_prefix + network_id[:12])
        sub_pools = {p.subnet: p.sub_pool for p in self.state.pools() if p.sub_pool}
        ipam = render.ipam_section([d.to_wire() for d in ipv4], [d.to_wire() for d in ipv6],
                                   self.settings.ipam_data_dir, sub_pools, self.settings.etcd_endpoints,
                                   self.settings.etcd_tls, self.settings.etcd_insecure)
        conf = render.conflist(cni_name, entry.render(bridge, opts, ipam),
                               render.meta_plugins(opts, os.path.join(self.settings.run_dir, "tuning")))
        self._validated(_raw(conf))
        self._meta_plugins_installed(driver, conf)
        net = Network(id=network_id, driver=driver, backend=backend, options=opts, cni_name=cni_name, bridge=bridge,
                      conflist=conf, docker_ipam=any(d.address_space in ADDRESS_SPACES for d in ipv4 + ipv6))
        with contextlib.ExitStack() as undo:
            with step(driver):  # the backend chosen, not the socket's driver
                for address in entry.host.reserved_addresses(net):
                    self._keep_link_address_out_of_docker_ipam(net, ipv4, address)
                entry.host.create(net, undo)
            net.exported = self._export(cni_name, render.exported(conf)) if opts["cni.export"] else None
            self.state.save(net)
            undo.pop_all()
        log.info("network %s: %s (%s) on bridge %s", network_id[:12], cni_name, backend, bridge)

    def _create_conflist_network(self, driver: str, backend: str, network_id: str, opts: dict, pools: list) -> None:
        """A conflist of the CNI config directory as it is (rancher-conflist):
        copied into the state, its plug-ins found in the CNI path now, no two
        of our networks on one conflist (they would share its IPAM's store)."""
        with step(driver):
            conf, _ = runtime.named_conflist(opts["cni.conflist"], self.settings.cni_conf_dir,
                                             list(self.settings.cni_path))
        for other in self.state.networks():
            if other.cni_name == conf["name"]:
                raise DriverError(f"{driver}: the CNI network {conf['name']!r} is already Docker network "
                                  f"{other.id[:12]}; one Docker network per conflist")
        net = Network(id=network_id, driver=driver, backend=backend, options=opts, cni_name=conf["name"], bridge="",
                      conflist=conf, docker_ipam=any(d.address_space in ADDRESS_SPACES for d in pools),
                      bridge_created=False)
        self.state.save(net)
        log.info("network %s: the CNI network %s (%s)", network_id[:12], conf["name"],
                 " -> ".join(p["type"] for p in conf["plugins"]))

    def _keep_link_address_out_of_docker_ipam(self, net: Network, ipv4: list, link_ip: str) -> None:
        if net.docker_ipam:
            subnet = next(str(ipaddress.ip_network(d.pool)) for d in ipv4
                          if ipaddress.ip_address(link_ip) in ipaddress.ip_network(d.pool))
            self.ipam.reserve_link_address(subnet, link_ip)
            return
        aux = {str(a).split("/")[0] for d in ipv4 for a in d.aux_addresses.values()}
        if link_ip not in aux:
            raise DriverError(f"{net.driver}: Docker's IPAM could hand out the metadata link address {link_ip}; "
                              f"add --aux-address metadata-link={link_ip} (or use --ipam-driver {net.driver})")

    def _refuse_duplicates(self, network_id: str, cni_name: str, bridge: str, entry: backends.Backend,
                           opts: dict) -> None:
        ownership.refuse_name_clashes(cni_name, self.state.all(NETWORK), self.settings.cni_conf_dir)
        for other in self.state.networks():
            for key, label in entry.unique:  # e.g. a VNI: two networks would be one segment
                if other.backend == entry.name and other.options[key] == opts[key]:
                    raise DriverError(f"{label} {opts[key]} is already used by network {other.id[:12]}; "
                                      f"choose another with -o {key}=N")
            if other.bridge == bridge:
                raise DriverError(f"bridge {bridge!r} is already used by network {other.id[:12]}; "
                                  "choose another with -o bridge=NAME")

    @staticmethod
    def _validated(raw: bytes) -> dict:
        with step("invalid network configuration"):
            conf = runtime.parse_conflist(raw, "rendered conflist")
            for plugin in conf["plugins"]:  # the IPAM's own checks: a pool too small, a gateway outside it
                if "ipam" in plugin:
                    hostnet.validate_ipam(plugin["ipam"])
            return conf

    def _meta_plugins_installed(self, driver: str, conf: dict) -> None:
        """Chained reference plug-ins (bandwidth ...) are found in the CNI path
        now, not at the first `docker run`."""
        for plugin in conf["plugins"][1:]:
            try:
                runtime.find_plugin(plugin["type"], list(self.settings.cni_path))
            except runtime.CNIError as exc:
                raise DriverError(f"{driver}: the options ask for the CNI plug-in {plugin['type']!r}: {exc.msg} "
                                  f"({exc.details}); install Debian's containernetworking-plugins or add its "
                                  "directory with serve --cni-path") from None

    def _export(self, cni_name: str, conf: dict) -> str:
        """The conflist where CNI runtimes look, written atomically."""
        raw = _raw(conf)
        os.makedirs(self.settings.cni_conf_dir, mode=0o755, exist_ok=True)
        path = os.path.join(self.settings.cni_conf_dir, f"50-{cni_name}.conflist")
        runtime.write_atomic(path, raw, 0o644)  # a runtime never reads half a file
        return path

    def delete_network(self, request: cnm.NetworkRequest) -> None:
        network_id = request.network_id
        net = self.state.network(network_id)
        if net is None:
            return
        for listed in self.state.endpoints(network_id):
            with self._tearing_down(net, listed) as ep:
                if ep is None:
                    continue  # DeleteEndpoint's teardown, after its answer, took it
                self._cni_del(net, ep)
                self.ports.release(ep.key)
                self.state.forget(ep)
        backends.get(net.backend).host.remove(net)
        main, ports_list = ownership.own_names(net.to_dict(), self.state.all(NETWORK))
        hostnet.forget(main, self.settings.store(), ports_list=ports_list)
        if net.exported:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(net.exported)
        self.state.forget(net)
        log.info("network %s removed", network_id[:12])

    # -- endpoints ---------------------------------------------------------

    def _network(self, network_id: str) -> Network:
        net = self.state.network(network_id)
        if net is None:
            raise DriverError(f"network {network_id[:12]} is unknown to this driver")
        return net

    def create_endpoint(self, request: cnm.CreateEndpointRequest) -> cnm.CreateEndpointResponse:
        net = self._network(request.network_id)
        iface = request.interface
        address, address6 = iface.address, iface.address_ipv6
        if not address and not address6 and backends.get(net.backend).takes_conflist:
            return self._attach_at_create(net, request)
        if not address and not address6:
            raise DriverError(f"{net.driver} needs an address from the IPAM driver (the null IPAM driver gives none)")
        for value, what in ((address, "Address"), (address6, "AddressIPv6")):
            if value:
                _ip(value, what)
        known = self.state.endpoint(net.id, request.endpoint_id)
        if known is not None:  # Docker retried: the same endpoint answers the same, keeps its state
            if (known.address, known.address6) != (address, address6):
                raise DriverError(f"endpoint {request.endpoint_id[:12]} exists already with other addresses")
            chosen = not iface.mac_address
            return cnm.CreateEndpointResponse(known.mac if chosen else "")
        mac = iface.mac_address or mac_for(address)
        self.state.save(Endpoint(network_id=net.id, endpoint_id=request.endpoint_id, address=address,
                                 address6=address6, mac=mac), synced=True)  # before the ADD allocates for it
        return cnm.CreateEndpointResponse("" if iface.mac_address else mac)

    def _attach_at_create(self, net: Network, request: cnm.CreateEndpointRequest) -> cnm.CreateEndpointResponse:
        """A conflist network whose IPAM Docker leaves out (--ipam-driver
        null): the conflist's own IPAM chooses, so its ADD runs now, into the
        endpoint's staging namespace, and Docker is told the address it chose
        (and the MAC), which it then shows and serves in its DNS. Join only
        moves the interface out."""
        known = self.state.endpoint(net.id, request.endpoint_id)
        if known is not None:  # Docker retried
            return cnm.CreateEndpointResponse("" if request.interface.mac_address else known.mac, known.address)
        ep = Endpoint(network_id=net.id, endpoint_id=request.endpoint_id, mac=request.interface.mac_address)
        self.state.save(ep, synced=True)  # first: a DeleteEndpoint after a crash here finds what to undo
        staging_path = self._staging_path(ep)
        hostnet.create_staging(staging_path)
        try:
            with step(f"{net.driver}: CNI ADD on {net.cni_name} failed"):
                att = self._attachment(net, ep, staging_path)
                result = self.cni.add(net.conflist, _raw(net.conflist), att)
        except BaseException:
            with contextlib.suppress(runtime.CNIError):
                self.cni.delete(net.conflist, _raw(net.conflist), self._attachment(net, ep, staging_path))
            hostnet.remove_staging(staging_path)
            self.state.forget(ep)
            raise
        ep.address = next((ip["address"] for ip in result.get("ips", [])
                           if ipaddress.ip_interface(ip["address"]).version == 4), "")
        ep.address6 = next((ip["address"] for ip in result.get("ips", [])
                            if ipaddress.ip_interface(ip["address"]).version == 6), "")
        inside = [i for i in result.get("interfaces", []) if i.get("sandbox")]
        ep.mac = ep.mac or (inside[0].get("mac", "") if inside else "")
        ep.result = result
        self.state.save(ep)
        return cnm.CreateEndpointResponse("" if request.interface.mac_address else ep.mac, ep.address)

    def _endpoint(self, request) -> tuple:
        net = self._network(request.network_id)
        ep = self.state.endpoint(net.id, request.endpoint_id)
        if ep is None:
            raise DriverError(f"endpoint {request.endpoint_id[:12]} is unknown to this driver")
        return net, ep

    def _attachment(self, net: Network, ep: Endpoint, netns: str) -> runtime.Attachment:
        caps = {"ips": [a for a in (ep.address, ep.address6) if a], "mac": ep.mac}
        args = [("IgnoreUnknown", "1")] + ([(runtime.RESERVED_ARG, "true")] if net.docker_ipam else [])
        if backends.get(net.backend).takes_conflist:  # host-local and static take Docker's address this way,
            # the reference bridge and macvlan Docker's MAC (which Docker sets on the interface anyway);
            # neither when Docker gave none (--ipam-driver null: the conflist's IPAM chooses)
            caps = {key: value for key, value in caps.items() if value}
            if caps.get("ips"):
                args.append(("IP", _ip_arg(net.conflist, caps["ips"])))
            if ep.mac:
                args.append(("MAC", ep.mac))
        return runtime.Attachment(ep.endpoint_id, netns, CONTAINER_IFNAME, args=args, capability_args=caps)

    def attach_ahead(self, request: cnm.CreateEndpointRequest):
        """The endpoint's ADD as a function to run once Docker has
        CreateEndpoint's answer, or None when it waits for Join. An ADD that
        makes the interface right in the host (_hands_over) needs nothing Join
        brings, so it runs while dockerd stores the endpoint and sends the
        Join, not after. The endpoint's lock is taken here, before the answer,
        and held until the ADD has ended: the Join waits for it (on any
        worker, _endpoint_as_left), as a DeleteEndpoint or DeleteNetwork
        does. A failed ADD has undone itself and is only logged: the Join runs
        it again, and Docker gets that one's error."""
        net = self.state.network(request.network_id)
        ep = net and self.state.endpoint(net.id, request.endpoint_id)
        if not ep or ep.result or not self._adds_in_host(net):
            return None  # Docker retried an attached endpoint, or Join adds it
        return self._work_after_answer(net, request.endpoint_id, lambda ep: self._add_handed_over(net, ep),
                                       wanted=lambda ep: not ep.result)

    def _work_after_answer(self, net: Network, endpoint_id: str, work, wanted=lambda ep: True):
        """work(endpoint) as a function to run once Docker has its answer,
        or None when the endpoint, as the state has it under its lock, is
        gone or not `wanted`. The endpoint's lock is taken now, before the
        answer, and held until the work has ended: whatever must see the
        endpoint as the work leaves it waits for it (_tearing_down)."""
        held = contextlib.ExitStack()
        lock = held.enter_context(hostnet.held_lock(self._endpoint_lock_path(endpoint_id)))
        try:
            ep = self.state.endpoint(net.id, endpoint_id)
        except BaseException:
            held.close()
            raise
        if ep is None or not wanted(ep):
            lock.discard()
            held.close()
            return None

        def run() -> None:
            with held:
                try:
                    work(ep)
                finally:
                    lock.discard()
        return run

    def _endpoint_as_left(self, request) -> tuple:
        """The network and endpoint once no work on it runs after an answer
        (attach_ahead's ADD): the lock file exists from before that answer
        until the work has ended, so without it there is nothing to wait for."""
        # The lock first, then the endpoint: the work saves what it did before
        # it removes the lock, so once the lock is seen gone the state has the
        # work's result. Read before that look, the endpoint could be from
        # before the work ended, and its ADD would run again.
        working = os.path.exists(self._endpoint_lock_path(request.endpoint_id))
        net, ep = self._endpoint(request)
        if working:
            with self._tearing_down(net, ep) as ep:
                if ep is None:
                    raise DriverError(f"endpoint {request.endpoint_id[:12]} is unknown to this driver")
        return net, ep

    def join(self, request: cnm.JoinRequest) -> cnm.JoinResponse:
        net, ep = self._endpoint_as_left(request)
        if ep.result and ep.src_name:  # a repeated Join: the interface exists already
            if not ep.sandbox_key:  # attached at CreateEndpoint's answer (attach_ahead): joined now
                ep.sandbox_key, ep.ports_at_join = request.sandbox_key, _port_requests(request)
                self.state.save(ep)
            return join_answer(ep.result, ep.src_name)
        if ep.result:  # attached at CreateEndpoint (_attach_at_create): out of its staging namespace now
            src_name = host_name(ep)
            with step(f"{net.driver}: moving the attached interface out failed"):
                hostnet.move_to_host(self._staging_path(ep), CONTAINER_IFNAME, src_name)
            hostnet.remove_staging(self._staging_path(ep))
            hostnet.answer_arp_on_routed_peers(ep.result)  # only conflist networks attach at CreateEndpoint
            ep.src_name, ep.sandbox_key = src_name, request.sandbox_key
            ep.ports_at_join = _port_requests(request)
            self.state.save(ep)
            return join_answer(ep.result, src_name)
        requested = _port_requests(request)  # checked before anything is made
        if self._adds_in_host(net):
            self._add_handed_over(net, ep)
        else:
            self._reclaim_from_stale_endpoints(net, ep)
            ep.src_name = host_name(ep)
            ep.result = self._add_in_staging(net, ep, net.conflist, _raw(net.conflist), ep.src_name)
        ep.sandbox_key, ep.ports_at_join = request.sandbox_key, requested
        self.state.save(ep)
        return join_answer(ep.result, ep.src_name)

    def _add_handed_over(self, net: Network, ep: Endpoint) -> None:
        """ADD with the container's interface made in the host, where Docker
        takes it (_hands_over); the result is recorded."""
        self._reclaim_from_stale_endpoints(net, ep)
        src_name = host_name(ep)
        try:
            with step(f"{net.driver}: CNI ADD on {net.cni_name} failed"):
                att = self._attachment(net, ep, f"/proc/{os.getpid()}/ns/net")
                att.args.append((runtime.HANDOVER_ARG, src_name))
                result = self.cni.add(net.conflist, _raw(net.conflist), att)
                _same_addresses_as_docker(net, ep, result)
        except runtime.CNIError:
            self._cni_del(net, ep, quiet=True)
            raise
        ep.result, ep.src_name = result, src_name
        self.state.save(ep)

    def _adds_in_host(self, net: Network) -> bool:
        """Whether the network's ADD makes the interface in the host (_add_handed_over)."""
        return not backends.get(net.backend).takes_conflist and self._hands_over(net.conflist)

    def _hands_over(self, conf: dict) -> bool:
        """Whether the ADD can make the container's interface right in the host,
        where Docker takes it (HANDOVER_ARG), instead of in a staging namespace
        it is then moved out of (~20 ms the kernel spends per move): when every
        plug-in of the list is ours, run from this very code (invoke/own.py),
        so none looks for CNI_IFNAME in the namespace it is given, which is the
        host's. Any other plug-in (the reference firewall, tuning, ...) gets a
        namespace of its own to work in, as before."""
        try:
            return all(runtime.own_plugin(runtime.find_plugin(plugin["type"], list(self.settings.cni_path)))
                       for plugin in conf["plugins"])
        except runtime.CNIError:
            return False  # not found: the ADD says so

    def _add_in_staging(self, net: Network, ep: Endpoint, conf: dict, raw: bytes, src_name: str) -> dict:
        """ADD into a staging namespace, then the interface out to the host as `src_name`."""
        staging_path = self._staging_path(ep)
        hostnet.create_staging(staging_path)
        try:
            try:
                with step(f"{net.driver}: CNI ADD on {net.cni_name} failed"):
                    result = self.cni.add(conf, raw, self._attachment(net, ep, staging_path))
                    if render.chains_firewall(conf) and not backends.get(net.backend).takes_conflist:
                        # it put its CNI-FORWARD jump first if it was missing: ours back above it,
                        # before the container runs (iptables.KEEP_ABOVE)
                        hostnet.repair_firewall()
                    _same_addresses_as_docker(net, ep, result)
                    if backends.get(net.backend).takes_conflist:
                        hostnet.answer_arp_on_routed_peers(result)
                    hostnet.move_to_host(staging_path, CONTAINER_IFNAME, src_name)
            except runtime.CNIError:
                self._cni_del(net, ep, quiet=True)
                raise
        finally:
            hostnet.remove_staging(staging_path)
        return result

    def _staging_path(self, ep: Endpoint) -> str:
        return os.path.join(self.settings.run_dir, "staging", ep.endpoint_id[:24])

    def _discard_half_joined(self, ep: Endpoint) -> None:
        """What a Join killed half-way leaves: its staging namespace (with the
        container side of the veth) and the interface moved to the host under
        our name, if Docker never took it. Both named after the endpoint; after
        a normal Leave the interface is back under that name, and the bridge
        DEL before this took it with its own end already (one veth end takes
        the other): then this finds nothing."""
        hostnet.remove_staging(self._staging_path(ep))
        if hostnet.delete_link(host_name(ep)) and not ep.result:
            log.warning("endpoint %s: removed %s, left by an interrupted Join", ep.endpoint_id[:12],
                        host_name(ep))

    def _reclaim_from_stale_endpoints(self, net: Network, ep: Endpoint) -> None:
        """Docker's IPAM gave this endpoint an address one of our older endpoints
        of the same network still holds: Docker no longer has that endpoint (a
        dockerd killed before it could call DeleteEndpoint), so tear it down."""
        for address in (ep.address, ep.address6):
            if not address:
                continue
            iface = ipaddress.ip_interface(address)
            holder = hostnet.holder_of(self.settings.store(), str(iface.network), str(iface.ip))
            if holder is None or holder.network != net.cni_name or holder.container_id == ep.endpoint_id:
                continue
            listed = self.state.endpoint(net.id, holder.container_id)
            if listed is None:
                continue  # a CNI runtime's container: ADD will report the clash
            with self._tearing_down(net, listed) as stale:
                if stale is None:
                    continue  # its DeleteEndpoint's teardown, after the answer, released the address
                log.warning("endpoint %s reclaims %s from stale endpoint %s", ep.endpoint_id[:12],
                            iface.ip, holder.container_id[:12])
                self._revoke_ports(net, stale)
                self._cni_del(net, stale)
                self.state.forget(stale)

    def leave(self, request: cnm.EndpointRequest) -> None:
        """Nothing to undo yet: Docker moves the interface back to the host after
        Leave and only then calls DeleteEndpoint, where CNI DEL runs."""

    def delete_endpoint(self, request: cnm.EndpointRequest) -> None:
        teardown = self.endpoint_teardown(request)
        if teardown is not None:
            teardown()

    def endpoint_teardown(self, request: cnm.EndpointRequest):
        """DeleteEndpoint's work as a function to call once Docker has its
        answer (None: nothing to tear down). Docker forgets the endpoint
        whatever DeleteEndpoint answers (an error is only logged), and the
        teardown's kernel work (a veth's deletion waits ~20 ms for an RCU
        grace period, as does a firewall command that deletes) need not delay it.

        The endpoint's teardown lock is taken here, before the answer, and
        held until the teardown has ended: whatever else would tear the
        endpoint down, or must see it gone (DeleteNetwork, a Join reclaiming
        its address), waits for it (`_tearing_down`). The endpoint stays in the
        state until its DEL is done, so a shim killed in between leaves it
        where doctor finds it, as a DeleteEndpoint that never arrived."""
        net = self.state.network(request.network_id)
        if net is None or self.state.endpoint(request.network_id, request.endpoint_id) is None:
            return None  # Docker cleans up endpoints we never saw or forgot: success
        return self._work_after_answer(net, request.endpoint_id, lambda ep: self._delete_endpoint(net, ep))

    def _endpoint_lock_path(self, endpoint_id: str) -> str:
        return os.path.join(self.settings.state_dir, TEARDOWN_DIR, f"{endpoint_id}.lock")

    @contextlib.contextmanager
    def _tearing_down(self, net: Network, ep: Endpoint):
        """Hold `ep`'s lock for a block that tears it down; yields the
        endpoint as the state holds it once no work on it after an answer is
        under way (attach_ahead's ADD, DeleteEndpoint's teardown), None when
        that teardown removed it."""
        with hostnet.held_lock(self._endpoint_lock_path(ep.endpoint_id)) as lock:
            yield self.state.endpoint(net.id, ep.endpoint_id)
            lock.discard()

    def _delete_endpoint(self, net: Network, ep: Endpoint) -> None:
        self._revoke_ports(net, ep)
        if backends.get(net.backend).takes_conflist and ep.result:
            self._cni_del_as_joined(net, ep)
        else:
            # DEL first: its veth deletion takes the interface Docker gave
            # back with it, while the rules go (bridge.detach); what a Join
            # killed half-way left, or a DEL without its cached result, goes after
            try:
                self._cni_del(net, ep, network_holds=True)
            finally:
                self._discard_half_joined(ep)
        self.state.forget(ep)

    def _cni_del_as_joined(self, net: Network, ep: Endpoint) -> None:
        """DEL for plug-ins that are not ours: they find in the container
        namespace what to tear down (the reference bridge removes its
        masquerade rules by the interface's addresses, and does nothing but
        release the address without a namespace). So the interface Docker gave
        back after Leave goes into a staging namespace again, under its CNI
        name with its addresses, and DEL runs there."""
        staging_path = self._staging_path(ep)
        if not ep.src_name and os.path.exists(staging_path):  # attached at CreateEndpoint, never joined
            try:
                with step(f"{net.driver}: CNI DEL on {net.cni_name} failed"):
                    self.cni.delete(net.conflist, _raw(net.conflist), self._attachment(net, ep, staging_path))
            finally:
                hostnet.remove_staging(staging_path)
            return
        hostnet.remove_staging(staging_path)
        hostnet.create_staging(staging_path)
        try:
            addresses = [ip["address"] for ip in ep.result.get("ips", [])]
            moved = hostnet.move_back_to_staging(staging_path, host_name(ep), CONTAINER_IFNAME, addresses)
            with step(f"{net.driver}: CNI DEL on {net.cni_name} failed"):
                self.cni.delete(net.conflist, _raw(net.conflist),
                                self._attachment(net, ep, staging_path if moved else ""))
        finally:
            hostnet.remove_staging(staging_path)

    def _cni_del(self, net: Network, ep: Endpoint, quiet: bool = False, network_holds: bool = False) -> None:
        """`network_holds`: the network lives on (a container left it), so
        the rules its attachments share stay until DeleteNetwork, also when
        this was its last one (runtime.HOLD_ARG; our plug-ins only)."""
        conf = net.conflist
        att = self._attachment(net, ep, "")
        if network_holds and not backends.get(net.backend).takes_conflist:
            att.args.append((runtime.HOLD_ARG, "true"))
        try:
            with step(f"{net.driver}: CNI DEL on {net.cni_name} failed"):
                self.cni.delete(conf, _raw(conf), att)
        except runtime.CNIError as exc:
            if not quiet:
                raise
            log.warning("undoing ADD of %s: %s", ep.endpoint_id[:12], exc)
            return
        # tuning restores the old link attributes at a DEL that finds the
        # interface and only then forgets them; this DEL runs without a
        # namespace (the veth goes with the bridge plug-in's DEL)
        backup = render.tuning_backup(conf, ep.endpoint_id, CONTAINER_IFNAME)
        if backup:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(backup)

    # -- published ports -----------------------------------------------------

    def program_external_connectivity(self, request: cnm.ExternalConnectivityRequest) -> None:
        net, ep = self._endpoint(request)
        requested = _port_requests(request)
        if not requested or ep.port_requests == requested:
            if ep.ports_at_join:
                ep.ports_at_join = None  # the call it waited for came, asking nothing new
                self.state.save(ep)
            return
        if not ep.result:
            raise DriverError(f"endpoint {ep.endpoint_id[:12]} has not joined a sandbox yet")
        key = ep.key
        if _chain_publishes(net):
            _families_portmap_serves(net, ep, requested)
        # First, so a refusal (Docker's "Bind for ...") changes nothing; the endpoint's own ports count as free to it.
        mappings = self.ports.allocate(key, [ports.Request(**r) for r in requested])
        if ep.port_mappings:
            try:
                self._remove_port_rules(net, ep)
            except runtime.CNIError:  # still published, so still held
                self.ports.release(key)
                self.ports.adopt(key, ep.port_mappings)
                raise
            ep.port_requests = ep.port_mappings = None  # gone from the kernel: gone from the record
            self.state.save(ep)
        context = f"{net.driver}: publishing ports failed"
        if backends.get(net.backend).takes_conflist and not _chain_publishes(net):
            context += (f" (the conflist {net.cni_name!r} has no plug-in declaring the portMappings capability, "
                        "so rancher-portmap published after it; to publish through the reference portmap, "
                        'add {"type": "portmap", "capabilities": {"portMappings": true}} to its plugins)')
        try:
            with step(context):
                if _chain_publishes(net):
                    self._publish_through_the_chain(net, ep, mappings)
                else:
                    conf = render.ports_conflist(net.conflist)
                    att = runtime.Attachment(ep.endpoint_id, ep.sandbox_key or "/proc/self/ns/net",
                                             CONTAINER_IFNAME, capability_args={"portMappings": mappings})
                    self.cni.add(conf, _raw(conf), att, prev_result=ep.result)
        except runtime.CNIError:
            try:  # undo what the ADD made; its own failure must not hide the ADD's
                self._revoke_ports(net, dataclasses.replace(ep, port_mappings=mappings))
            except runtime.CNIError as exc:
                log.warning("undoing published ports of %s: %s", ep.endpoint_id[:12], exc)
                self.ports.release(key)
            raise
        ep.port_requests, ep.port_mappings, ep.ports_at_join = requested, mappings, None
        self.state.save(ep)

    def revoke_external_connectivity(self, request: cnm.EndpointRequest) -> None:
        net = self.state.network(request.network_id)
        ep = self.state.endpoint(request.network_id, request.endpoint_id)
        if net is not None and ep is not None and (ep.port_mappings or ep.ports_at_join):
            self._revoke_ports(net, ep)
            ep.port_requests = ep.port_mappings = ep.ports_at_join = None  # no longer the gateway endpoint: waits for nothing
            self.state.save(ep)

    def endpoints_awaiting_ports(self, driver: str) -> list:
        """Short IDs of `driver`'s endpoints whose Join carried published ports
        and that no ProgramExternalConnectivity has reached since. (An
        endpoint that is not its container's gateway never gets that call and
        waits for good: rare, and it only makes an ambiguous retry fail.)"""
        drivers = {net.id: net.driver for net in self.state.networks()}
        return [ep.endpoint_id[:12] for ep in self.state.endpoints()
                if drivers.get(ep.network_id) == driver and ep.ports_at_join]

    def _revoke_ports(self, net: Network, ep: Endpoint) -> None:
        """The endpoint's port rules removed, then its host ports released
        (also those of an allocation a kill kept from being recorded)."""
        self._remove_port_rules(net, ep)
        self.ports.release(ep.key)

    def _publish_through_the_chain(self, net: Network, ep: Endpoint, mappings: list) -> None:
        """A conflist network whose list has plug-ins declaring the
        portMappings capability (the reference portmap): they publish, as
        libcni would have them do with the mappings in the ADD's runtime
        config. Docker <= 27 names the ports only now, after Join's ADD, and
        the sandbox namespace does not exist yet (PROTOCOLS.md): so those
        plug-ins alone run ADD again now, with the chain's cached result as
        prevResult, and the attachment's cache entry takes the mappings, so
        the chain's final DEL (DeleteEndpoint, or DeleteNetwork, or GC) hands
        them to portmap and its rules go with the attachment even if
        RevokeExternalConnectivity never came. portmap reads no namespace
        (only prevResult's addresses), so the sandbox path is only CNI_NETNS."""
        att = runtime.Attachment(ep.endpoint_id, ep.sandbox_key or "/proc/self/ns/net", CONTAINER_IFNAME)
        if not backends.get(net.backend).takes_conflist and _has_ipv4(ep):
            # our bridge: the reference portmap sets route_localnet on it (for
            # an IPv4 container) and never clears it, which would let the
            # containers reach the host's loopback services; rancher-portmap's
            # guard goes first, under the tag rancher-portmap would use, so
            # route_localnet is ours to turn off with the last guard (localnet.py)
            hostnet.guard_localnet(render.ports_name(net.cni_name), ep.endpoint_id, CONTAINER_IFNAME, net.bridge)
        self.cni.add_capability(net.conflist, _raw(net.conflist), att, "portMappings", mappings)

    def _remove_port_rules(self, net: Network, ep: Endpoint) -> None:
        if ep.port_mappings and _chain_publishes(net):  # the chain's own portmap: DEL it with our record's mappings
            att = runtime.Attachment(ep.endpoint_id, "", CONTAINER_IFNAME)
            with step(f"{net.driver}: removing published ports failed"):
                self.cni.del_capability(net.conflist, _raw(net.conflist), att, "portMappings", ep.port_mappings)
                if not backends.get(net.backend).takes_conflist:  # after the DEL: its rules needed route_localnet
                    hostnet.unguard_localnet(render.ports_name(net.cni_name), ep.endpoint_id, CONTAINER_IFNAME)
        elif ep.port_mappings:
            conf = render.ports_conflist(net.conflist)
            att = runtime.Attachment(ep.endpoint_id, "", CONTAINER_IFNAME,
                                     capability_args={"portMappings": ep.port_mappings})
            with step(f"{net.driver}: removing published ports failed"):
                self.cni.delete(conf, _raw(conf), att)

    def oper_info(self, request: cnm.EndpointRequest) -> cnm.OperInfoResponse:
        net, ep = self._endpoint(request)
        result = ep.result or {}
        host_side = [i["name"] for i in result.get("interfaces", []) if i.get("name", "").startswith("veth")]
        value = {"cni_network": net.cni_name, "bridge": net.bridge,
                 "host_interface": host_side[0] if host_side else "",
                 "addresses": [ip["address"] for ip in result.get("ips", [])]}
        if ep.port_mappings:  # as Docker's bridge driver answers, with the host ports chosen
            value["com.docker.network.portmap"] = ports.docker_portmap(ep.port_mappings)
        return cnm.OperInfoResponse(value)

    def endpoints(self) -> list:
        return self.state.endpoints()
