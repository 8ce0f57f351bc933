"""`cnm-shim doctor`: compare what the kernel and the stores hold with what the
shim remembers, report the drift, and with --repair fix what is provably ours.

Checked, for the shim's networks and endpoints (state.db, read only):
  docker     the engine's networks and endpoints against ours, by ID
             (docker_sync.py): what Docker removed while the plug-in could
             not hear it, and what Docker has that the plug-in lacks
  network    the bridge, and the VTEP (vxlan) or uplink (flat) enslaved to it
  endpoint   CNI CHECK with the config and result cached at ADD, as libcni runs
             it (sandbox interface, addresses, routes, host veth on the bridge,
             firewall rules, IPAM); the sandbox is the container's netns
  firewall   our chains, jumps and isolation rules in line with the attachment
             rules; rules of our networks that no attachment owns
  ipam       allocations of our networks that no endpoint and no cached CNI
             attachment (ours or a runtime's) owns
  cache      cached CNI attachments of our networks whose endpoint is gone
  staging    staging namespaces no Join is using
  ipsec      the host's charon, for the IPsec networks recorded in the IPAM
             data dir (the conflists' stateDir): running, answering, and each
             network's peers with an ESTABLISHED IKE_SA and the network's
             CHILD_SA INSTALLED (an authentication failure named in words)
  pool       our IPAM driver's pools no network uses (neither ours nor, asked
             with --docker-host, any of Docker's), requested longer ago than
             the grace period and holding nothing but their gateway: the
             ReleasePool Docker owed them never came

Shown besides, not judged: each network's data path, proven by counters
(datapath.py): flat's fast path or bridge path and its metadata link, the
VXLAN VTEP and its peers.

Repaired with --repair, each under the lock its owner takes: what Docker
forgot, by the teardown its lost DeleteEndpoint / DeleteNetwork would have
done (after asking Docker once more); network pieces
by the same idempotent `ensure` CreateNetwork runs; an endpoint's host side
(veth back on the bridge, gateway address, firewall rules) from its cached
result, then CHECK again; chains and jumps re-derived; orphan allocations,
stray rules and stale cache entries collected with the valid attachments read
inside the IPAM transaction / under the firewall lock (CNI GC semantics, but a
Join racing the doctor cannot lose what it just made); stale staging namespaces
removed; unused pools released (only when Docker was asked: a network of
another driver may use our IPAM); a charon that is not running started again
with every recorded network's tunnels (all or nothing, as the ipsec agent
does). Never repaired: the inside of a container
(restart it), anything of a network exported to CNI runtimes that a runtime's
in-flight ADD could own, Docker's own IPAM reservations.
"""

import contextlib
import dataclasses
import functools
import ipaddress
import json
import os
import time
import sqlite3
import sys

from cni_backend import hostnet, runtime
from cni_backend.runtime import CNIError

from . import backends, datapath, docker_sync, metrics, paths, render
from .errors import DriverError
from .ipam_driver import IpamDriver, used_subnets
from .state import Endpoint, Network, State
from .translate import CONTAINER_IFNAME, Settings, _raw

DEFAULT_RUNTIME_CACHES = ("/var/lib/cni",)
HEALTHY, DRIFT, CANNOT_CHECK = 0, 1, 2


class CannotCheck(Exception):
    pass


def _requested_ago(pool) -> str:
    minutes = int((time.time() - pool.created) // 60)
    return f"{minutes} min ago" if pool.created else "before this version kept the time"


@dataclasses.dataclass
class Finding:
    kind: str          # network | endpoint | firewall | ipam | pool | cache | staging | ipsec
    subject: str       # what it is about: a network, endpoint, tag, address, path
    problem: str
    repairable: bool
    repaired: bool = False
    note: str = ""     # what --repair did, or why it does not

    def line(self) -> str:
        status = "repaired" if self.repaired else ("repairable" if self.repairable else "not repairable")
        return f"{self.kind:9} {self.subject}: {self.problem} [{status}]" + (f" ({self.note})" if self.note else "")


class ReadOnlyState(State):
    """state.db read without writing (no schema, no WAL switch): safe beside the plug-in."""

    def __init__(self, state_dir: str):
        super().__init__(state_dir, read_only=True)
        if not os.path.exists(self.path):
            raise CannotCheck(f"no shim state at {self.path} (wrong --state-dir?)")

    @contextlib.contextmanager
    def _db(self):
        try:
            with super()._db() as db:
                yield db
        except sqlite3.Error as exc:
            raise CannotCheck(f"cannot read {self.path}: {exc}") from None


def _portmap_v6_check_bug(exc: CNIError, result: dict) -> bool:
    """The reference portmap before containernetworking/plugins#819 was fixed
    (Debian's 1.1.1 among them) CHECKs an ip6tables DNAT chain even for a
    container without an IPv6 address, which it never made, so its CHECK
    fails on every IPv4-only container with published ports, after its IPv4
    rules passed. Such a failure is not drift."""
    has_v6 = any(":" in ip.get("address", "") for ip in (result or {}).get("ips", []))
    return not has_v6 and exc.msg.startswith("portmap: could not check ipv6 dnat")


class Doctor:
    def __init__(self, settings: Settings, runtime_caches=DEFAULT_RUNTIME_CACHES, docker_host: str = "",
                 drivers=docker_sync.DEFAULT_DRIVERS):
        self.settings = settings
        self.docker_host, self.drivers = docker_host, tuple(drivers)
        self.docker = {"host": docker_host, "checked": False, "reason": "no --docker-host"}
        self.forgotten: set = set()  # endpoint IDs Docker no longer has: not judged again below
        self.docker_subnets: set | None = None  # the subnets of Docker's networks, once Docker was asked
        # Docker's endpoints of our networks that we have no record of: their
        # cached attachment, rules and addresses are nobody's orphans
        self.docker_held: set = set()
        self.state = ReadOnlyState(settings.state_dir)
        self.cache_dir = os.path.join(settings.state_dir, "cni")
        self.runtime_caches = [d for d in runtime_caches if os.path.realpath(d) != os.path.realpath(self.cache_dir)]
        self.cni = runtime.CNI(list(settings.cni_path), cache_dir=self.cache_dir)
        self.findings: list = []
        self.errors: list = []
        self.data_paths: list = []

    # -- the whole run -------------------------------------------------------

    def run(self, repair: bool) -> int:
        for step in (self.check_docker, self.check_networks, self.check_endpoints, self.check_cache,
                     self.check_allocations, self.check_pools, self.check_firewall, self.check_staging,
                     self.check_ipsec):
            try:
                step(repair)
            except (CNIError, CannotCheck, OSError, docker_sync.EngineError) as exc:
                self.errors.append(f"{step.__name__[6:]}: {exc}")
        self.data_paths = [datapath.describe(net) for net in self._networks()]
        if self.errors:
            return CANNOT_CHECK
        return DRIFT if any(not f.repaired for f in self.findings) else HEALTHY

    def _found(self, finding: Finding, repair: bool, fix=None) -> None:
        """Record `finding`; with repair, run `fix()`, which returns a note or raises."""
        self.findings.append(finding)
        if repair and finding.repairable and fix is not None:
            try:
                finding.note = fix() or finding.note
                finding.repaired = True
            except (CNIError, DriverError, docker_sync.EngineError) as exc:
                finding.note = f"repair failed: {exc}"

    def _networks(self) -> list:
        return self.state.networks()

    def _endpoint_ids(self) -> set:
        return {ep.endpoint_id for ep in self.state.endpoints()} | self.docker_held

    # -- Docker ----------------------------------------------------------------

    def check_docker(self, repair: bool) -> None:
        if not self.docker_host:
            return
        try:
            engine = docker_sync.Engine(self.docker_host)
        except docker_sync.NoEngine as exc:
            self.docker["reason"] = f"{exc}; the check against Docker was skipped"
            return
        try:
            drifts = docker_sync.compare(engine, lambda: (self._networks(), self.state.endpoints()),
                                         self.drivers, self.runtime_caches)
            self.docker.update(checked=True, reason="")
            self.docker_subnets = {str(ipaddress.ip_network(cfg["Subnet"], strict=False))
                                   for net in engine.networks()
                                   for cfg in ((net.get("IPAM") or {}).get("Config") or []) if cfg.get("Subnet")}
            teardown = docker_sync.Teardown(self.settings, engine) if repair else None
            for drift in drifts:
                if drift.kind == "docker-endpoint":
                    self.docker_held |= set(drift.endpoint_ids)
                else:
                    self.forgotten |= set(drift.endpoint_ids)
                self._found(Finding(drift.kind, drift.subject, drift.problem, drift.repairable, note=drift.note),
                            repair, teardown and functools.partial(teardown.remove, drift))
        finally:
            engine.close()

    # -- networks --------------------------------------------------------------

    def check_networks(self, repair: bool) -> None:
        for net in self._networks():
            if not net.bridge:
                continue  # a conflist network (rancher-conflist): its plug-ins own the host side; CHECK covers it
            host = backends.get(net.backend).host
            missing = hostnet.missing_parts(net.bridge, host.ports(net))
            if missing:
                ours = host.made_by_us(net)
                self._found(Finding("network", f"{net.cni_name} ({net.id[:12]})", "; ".join(missing), bool(ours),
                                    note="" if ours else f"bridge {net.bridge} was not made by the plug-in"),
                            repair, lambda net=net: self._ensure_network(net))

    def _ensure_network(self, net: Network) -> str:
        """What CreateNetwork made, made again the same idempotent way."""
        backends.get(net.backend).host.ensure(net)
        return "re-created; the endpoints' host side follows below"

    # -- endpoints ---------------------------------------------------------------

    def check_endpoints(self, repair: bool) -> None:
        nets = {n.id: n for n in self._networks()}
        for ep in self.state.endpoints():
            net = nets.get(ep.network_id)
            if net is None or not ep.result or not ep.sandbox_key or ep.endpoint_id in self.forgotten:
                continue  # not joined (yet): nothing in a sandbox to compare; or reported above
            subject = f"{ep.endpoint_id[:12]} on {net.cni_name}"
            problem = self._check_endpoint(net, ep)
            if problem is None or not self._still_joined(ep):
                continue
            gone = problem.startswith("sandbox ")
            self._found(Finding("endpoint", subject, problem, repairable=not gone),
                        repair, lambda net=net, ep=ep: self._restore_endpoint(net, ep))

    def _still_joined(self, ep: Endpoint) -> bool:
        """Docker may have deleted the endpoint while we looked: then nothing drifted."""
        now = [e for e in self.state.endpoints() if e.endpoint_id == ep.endpoint_id]
        return bool(now) and now[0].result == ep.result

    def _check_endpoint(self, net: Network, ep: Endpoint) -> str | None:
        sandbox = ep.sandbox_key or ""
        if not sandbox or not os.path.exists(sandbox):
            return f"sandbox {sandbox or '(none)'} is gone; Docker deletes the endpoint when it learns so"
        # Docker sets the endpoint's MAC on the interface it moves into the sandbox
        mac = ep.mac or next((i["mac"] for i in ep.result.get("interfaces", []) if i.get("sandbox")), None)
        try:
            inside = self._sandbox_view(sandbox, mac)
        except hostnet.NetnsGone:
            return f"sandbox {sandbox} is gone"
        if inside["ifname"] is None:
            return f"CHECK: no interface with MAC {mac} in the sandbox {sandbox}"
        if backends.get(net.backend).takes_conflist and inside["ifname"] != CONTAINER_IFNAME:
            # plug-ins that are not ours check by the name they attached the
            # interface under (the bridge looks it up, host-local keys its
            # address by it), and Docker renamed it (a second network's eth1):
            # neither name passes their CHECK, so it is not run
            return None
        att = self._attachment(net, ep, sandbox, inside["ifname"])
        conf = net.conflist
        view = functools.partial(self._as_docker_set_it, inside=inside, sandbox=sandbox, mac=mac)
        try:
            self.cni.check(conf, _raw(conf), att, view=view)
        except CNIError as exc:
            if not _portmap_v6_check_bug(exc, ep.result):
                return f"CHECK: {exc}"
            # the v4 rules passed portmap's own CHECK (it checks them first);
            # the rest of the chain is checked without the mappings
            att.capability_args = dict(att.capability_args, portMappings=[])  # given, so not the cached ones
            try:
                self.cni.check(conf, _raw(conf), att, view=view)
            except CNIError as again:
                return f"CHECK: {again}"
        return None

    @staticmethod
    def _sandbox_view(sandbox: str, mac: str) -> dict:
        """The name Docker gave our interface in the sandbox, and whether the
        sandbox's default route leaves through it (Docker gives one endpoint
        the gateway)."""
        return hostnet.sandbox_interface(sandbox, mac)

    @staticmethod
    def _as_docker_set_it(result: dict, inside: dict, sandbox: str, mac: str) -> dict:
        """The cached result as Docker made it true: the interface in Docker's
        sandbox with the endpoint's MAC (the ADD put it in a staging namespace
        and Docker set the MAC it was given; plug-ins that are not ours compare
        both), and the default route only on the endpoint Docker chose as the
        gateway."""
        interfaces = [dict(i, sandbox=sandbox, mac=mac) if i.get("sandbox") else i
                      for i in result.get("interfaces", [])]
        result = dict(result, interfaces=interfaces)
        if inside["default_here"]:
            return result
        return dict(result, routes=[r for r in result.get("routes", []) if not r["dst"].endswith("/0")])

    def _cached_entry(self, net: Network, ep: Endpoint) -> dict:
        return runtime.cached(self.cache_dir, net.cni_name, ep.endpoint_id, CONTAINER_IFNAME) or {}

    def _attachment(self, net: Network, ep: Endpoint, sandbox: str, sandbox_ifname: str) -> runtime.Attachment:
        entry = self._cached_entry(net, ep)
        args = [tuple(pair) for pair in entry.get("cniArgs") or []] + [(runtime.SANDBOX_IFNAME_ARG, sandbox_ifname)]
        return runtime.Attachment(ep.endpoint_id, sandbox, CONTAINER_IFNAME, args=args,
                                  capability_args=entry.get("capabilityArgs") or {})

    def _restore_endpoint(self, net: Network, ep: Endpoint) -> str:
        entry = self._cached_entry(net, ep)
        if not entry.get("result"):
            raise CNIError(runtime.IO_FAILURE, "no cached CNI result to restore from")
        conf = runtime.parse_conflist(entry["config"], "cached config")
        hostnet.restore_attachment(conf, ep.endpoint_id, ep.sandbox_key or "", CONTAINER_IFNAME,
                                   [tuple(p) for p in entry.get("cniArgs") or []],
                                   entry.get("capabilityArgs") or {}, entry["result"])
        mappings = (entry.get("capabilityArgs") or {}).get("portMappings")
        if mappings and runtime.CNI.declaring(conf, "portMappings"):
            # the chain's own portmap (-o portmap=reference): its ADD again, with
            # the cached mappings, puts back the rules it does not find
            att = runtime.Attachment(ep.endpoint_id, ep.sandbox_key or "", CONTAINER_IFNAME)
            self.cni.add_capability(conf, entry["config"], att, "portMappings", mappings)
        problem = self._check_endpoint(net, ep)
        if problem is not None:
            raise CNIError(runtime.CHECK_FAILED, f"host side restored, still: {problem}; the container's inside is its own: "
                              "restart the container (docker restart) to re-create its interface")
        return "host side restored from the cached result; CHECK passes"

    # -- cached attachments without an endpoint -------------------------------------

    def _our_lists(self, net: Network) -> list:
        """(name, conflist) of the network's lists: the main one and the ports one."""
        ports = render.ports_conflist(net.conflist)
        return [(net.cni_name, net.conflist), (ports["name"], ports)]

    def check_cache(self, repair: bool) -> None:
        for net in self._networks():
            for name, conf in self._our_lists(net):
                cached = runtime.cached_attachments(self.cache_dir, name)  # listed before the endpoints: see _stale
                endpoints = self._endpoint_ids()
                for container_id, ifname in cached:
                    if container_id in endpoints:
                        continue
                    self._found(Finding("cache", f"{name}/{container_id[:12]}/{ifname}",
                                        "cached CNI attachment whose endpoint is gone", repairable=True),
                                repair, lambda conf=conf, c=container_id, i=ifname: self._delete_cached(conf, c, i))

    def _delete_cached(self, conf: dict, container_id: str, ifname: str) -> str:
        # An endpoint is recorded before its ADD and forgotten after its DEL, so a
        # cache entry listed before the endpoints were read, without an endpoint,
        # belongs to no Join or DeleteEndpoint in flight.
        self.cni.delete(conf, _raw(conf), runtime.Attachment(container_id, "", ifname))
        return "CNI DEL with the cached config and result"

    # -- IPAM ------------------------------------------------------------------------

    def _valid_attachments(self, net: Network) -> set:
        """(container, ifname) a live attachment of `net` may hold: every endpoint
        (joined or about to), our cached attachments, the runtimes' cached ones."""
        valid = {(ep_id, CONTAINER_IFNAME) for ep_id in self._endpoint_ids()}
        for name, _ in self._our_lists(net):
            valid |= set(runtime.cached_attachments(self.cache_dir, name))
            for directory in self.runtime_caches:
                valid |= set(runtime.cached_attachments(directory, name))
        return valid

    def check_allocations(self, repair: bool) -> None:
        store = self.settings.store()
        for net in self._networks():
            held = store.run(lambda txn, name=net.cni_name: txn.all(name))
            valid = self._valid_attachments(net)
            orphans = [a for a in held if (a.container_id, a.ifname) not in valid and a.network != hostnet.DOCKER_OWNER]
            exported = bool(net.exported)
            for allocation in orphans:
                self._found(Finding("ipam", f"{allocation.ip} in {allocation.pool}",
                                    f"held by {allocation.container_id}/{allocation.ifname} on {net.cni_name}, "
                                    "which no endpoint or CNI attachment owns", repairable=not exported,
                                    note="network exported to CNI runtimes: a runtime's ADD may be in flight; "
                                         "collect with `cnm-shim cni gc` from the runtime" if exported else ""),
                            repair, lambda net=net, a=allocation: self._release(store, net, a))

    def _release(self, store, net: Network, allocation) -> str:
        def release(txn):
            # Inside the store's transaction no ADD allocates; an endpoint's record
            # exists before its ADD, so read here, the owner list is complete.
            current = txn.holder(allocation.pool, allocation.ip)
            if current is None or (current.container_id, current.ifname) in self._valid_attachments(net):
                return False
            txn.remove(current)
            return True
        return "released" if store.run(release) else "gone or owned meanwhile: left alone"

    # -- pools ----------------------------------------------------------------------------

    def check_pools(self, repair: bool) -> None:
        ipam = IpamDriver(self.state, self.settings.store())
        in_use = used_subnets(self.state) | (self.docker_subnets or set())
        for pool in ipam.reclaimable(self.state, in_use):
            asked = self.docker_subnets is not None
            self._found(Finding("pool", pool.id, f"requested by Docker {_requested_ago(pool)}, and no network uses "
                                "it: its ReleasePool never came", repairable=asked,
                                note="" if asked else "Docker was not asked whether a network of another driver "
                                                      "uses it (--docker-host)"),
                        repair, lambda pool=pool: self._reclaim(pool.id))

    def _reclaim(self, pool_id: str) -> str:
        state = State(self.settings.state_dir)
        ipam = IpamDriver(state, self.settings.store())
        with state.transaction() as txn:  # judged again under the lock RequestPool takes
            released = ipam.reclaim(txn, used_subnets(txn) | (self.docker_subnets or set()), pool_ids={pool_id})
        return "released" if released else "in use or gone meanwhile: left alone"

    # -- firewall -----------------------------------------------------------------------

    def check_firewall(self, repair: bool) -> None:
        drift = hostnet.firewall_drift()
        if drift:
            lines = "; ".join(f"IPv{family}: {line}" for family, line in drift)
            self._found(Finding("firewall", "chains and jumps", f"not in line with the attachment rules: {lines}",
                                repairable=True), repair, lambda: hostnet.repair_firewall() or "re-derived")
        for net in self._networks():
            for name, _ in self._our_lists(net):
                def valid(net=net):  # every kind of rule of a valid attachment is valid
                    return self._valid_attachments(net)
                exported = bool(net.exported)
                for tag in hostnet.stray_tags(name, valid()):
                    self._found(Finding("firewall", tag, f"rules of {name} that no endpoint or attachment owns",
                                        repairable=not exported,
                                        note="network exported to CNI runtimes" if exported else ""),
                                repair, lambda name=name, v=valid: self._collect_rules(name, v))

    @staticmethod
    def _collect_rules(name: str, valid_attachments) -> str:
        removed = hostnet.collect_rules(name, valid_attachments)
        return f"removed {', '.join(removed)}" if removed else "already gone"

    # -- staging namespaces ----------------------------------------------------------------

    def check_staging(self, repair: bool) -> None:
        directory = os.path.join(self.settings.run_dir, "staging")
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return
        endpoints = self.state.endpoints()
        for name in names:
            owner = next((ep for ep in endpoints if ep.endpoint_id[:24] == name), None)
            if owner is not None and not owner.result:
                continue  # a Join in flight, or one Docker will discard with DeleteEndpoint
            path = os.path.join(directory, name)
            self._found(Finding("staging", path, "staging namespace no Join is using", repairable=True),
                        repair, lambda path=path: hostnet.remove_staging(path) or "removed")

    # -- the host's charon (rancher-ipsec) ---------------------------------------------------

    def check_ipsec(self, repair: bool) -> None:
        for subject, problem in hostnet.ipsec_health(self.settings.ipam_data_dir):
            if subject == "charon" and problem.startswith("not running"):
                self._found(Finding("ipsec", subject, problem, repairable=True), repair, self._revive_charon)
            else:
                self._found(Finding("ipsec", subject, problem, repairable=False,
                                    note="a peer that is down or has another key is not ours to fix"
                                    if subject != "charon" else ""), repair)

    def _revive_charon(self) -> str:
        pid = hostnet.revive_ipsec(self.settings.ipam_data_dir)
        return f"started again (pid {pid}) with every network's tunnels" if pid else "was running again already"

    # -- output -------------------------------------------------------------------------------

    def report(self, code: int) -> dict:
        return {"status": {HEALTHY: "healthy", DRIFT: "drift", CANNOT_CHECK: "cannot check"}[code], "exit": code,
                "findings": [dataclasses.asdict(f) for f in self.findings], "errors": self.errors,
                "docker": self.docker, "data_paths": self.data_paths, "host": datapath.host()}


def cmd_doctor(opts) -> int:
    settings = Settings(state_dir=opts.state_dir, run_dir=opts.run_dir, ipam_data_dir=opts.ipam_data_dir,
                        cni_path=tuple(p for p in opts.cni_path.split(os.pathsep) if p),
                        etcd_endpoints=tuple(e for e in opts.etcd_endpoints.split(",") if e))
    try:
        hostnet.check_etcd_endpoints(settings.etcd_endpoints, opts.insecure_etcd)
        doctor = Doctor(settings, opts.runtime_cache_dir or DEFAULT_RUNTIME_CACHES, opts.docker_host,
                        [d for d in opts.drivers.split(",") if d])
        code = doctor.run(opts.repair)
    except (CannotCheck, CNIError) as exc:
        metrics.record_doctor(opts.run_dir, "cannot check", [])
        if opts.json:
            print(json.dumps({"status": "cannot check", "exit": CANNOT_CHECK, "findings": [], "errors": [str(exc)]}))
        else:
            print(f"cannot check: {exc}", file=sys.stderr)
        return CANNOT_CHECK
    metrics.record_doctor(opts.run_dir, {HEALTHY: "healthy", DRIFT: "drift"}[code],
                          [f.kind for f in doctor.findings if not f.repaired])
    if opts.json:
        print(json.dumps(doctor.report(code), indent=2))
        return code
    print(f"host      {datapath.host_summary(datapath.host())}")
    for found in doctor.data_paths:
        print(f"datapath  {found['cni_name']} ({found['network'][:12]}, {found['backend']}): {found['summary']}")
    if not doctor.docker["checked"]:
        print(f"docker    {doctor.docker['reason']}")
    for finding in doctor.findings:
        print(finding.line())
    for error in doctor.errors:
        print(f"cannot check {error}", file=sys.stderr)
    print({HEALTHY: "healthy" if not doctor.findings else "healthy: everything found was repaired",
           DRIFT: f"drift: {sum(not f.repaired for f in doctor.findings)} problem(s) left",
           CANNOT_CHECK: "could not check everything"}[code])
    return code


def add_parser(sub) -> None:
    doctor = sub.add_parser("doctor", help="CNI CHECK every endpoint, compare the kernel and stores with the state; "
                                           "--repair fixes what is provably ours")
    doctor.add_argument("--state-dir", default=paths.STATE_DIR)
    doctor.add_argument("--run-dir", default=paths.RUN_DIR)
    doctor.add_argument("--ipam-data-dir", default=paths.IPAM_DATA_DIR)
    doctor.add_argument("--cni-path", default=os.environ.get("CNI_PATH", os.pathsep.join(paths.CNI_PATH)))
    doctor.add_argument("--etcd-endpoints", default=os.environ.get("RANCHER_ETCD_ENDPOINTS", ""))
    doctor.add_argument("--insecure-etcd", action="store_true",
                        default=os.environ.get("RANCHER_INSECURE_ETCD", "").lower() in ("1", "true", "yes"),
                        help="accept plain http:// etcd endpoints")
    doctor.add_argument("--runtime-cache-dir", action="append", default=[],
                        help=f"a CNI runtime's cache whose attachments count as owners (default {DEFAULT_RUNTIME_CACHES[0]})")
    doctor.add_argument("--docker-host", default=os.environ.get("DOCKER_HOST", "unix:///run/docker.sock"),
                        help="the engine to compare networks and endpoints with ('' = skip that check)")
    doctor.add_argument("--drivers", default=",".join(docker_sync.DEFAULT_DRIVERS),
                        help="Docker driver names that are this plug-in's (e.g. rancher-cni for the managed one)")
    doctor.add_argument("--repair", action="store_true", help="fix what is safe; exit 0 if everything found was")
    doctor.add_argument("--json", action="store_true")
    doctor.set_defaults(func=cmd_doctor)
