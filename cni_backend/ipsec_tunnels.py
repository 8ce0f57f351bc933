"""The IPsec tunnel layer of rancher-ipsec: one strongSwan charon per host,
and one IKEv2 connection per peer host, loaded through charon's VICI socket.

One charon per host, not per network: charon binds IKE's UDP 500 and 4500 on
the host, and its user-space data path (kernel-libipsec) makes one TUN device
(ipsec0) and one routing table (220) for the whole host. A second charon in the
same network namespace could have neither; every network of the host is one
more connection in the same charon.

charon writes its pid file at the compiled-in /var/run/charon.pid and refuses
to start when another charon's pid file is there. So it runs in a private mount
namespace in which the host's state directory is bind-mounted over /run: its
pid file, VICI socket, strongswan.conf and log are all in that directory, seen
from outside at their real path, from inside under /run.

Nothing reaches strongswan.conf without validation (paths are checked against a
narrow character set); connections and keys never reach a file at all: they go
to charon as VICI messages. The pre-shared key is read from a file that only
its owner can read.
"""

import contextlib
import dataclasses
import ipaddress
import os
import re
import signal
import socket
import stat
import subprocess
import time

from . import addresses
from .net import features
from .errors import CNIError, INVALID_CONFIG, KERNEL_FEATURE_MISSING, PLUGIN_FAILED

CHARON = "/usr/lib/ipsec/charon"
# what charon loads, and nothing more (the list measured to work, issue 16)
DATAPATH_PLUGINS = {
    "libipsec": "kernel-libipsec kernel-netlink socket-default vici",
    "xfrm": "kernel-netlink socket-default vici",
}
CRYPTO_PLUGINS = "random nonce aes sha1 sha2 hmac pem pkcs1 x509 pubkey kdf gmp"
DEFAULT_IKE_PROPOSAL = "aes128-sha256-modp2048"
DEFAULT_ESP_PROPOSAL = "aes128-sha256"
# rekey times (seconds; strongSwan's own defaults). A rekey makes the new SA
# before it deletes the old one (IKEv2 CREATE_CHILD_SA), so traffic never waits
# for it; charon starts each up to a tenth of it early (rand_time) so that the
# two sides rarely start one at once, and an SA expires `_margin` after it.
DEFAULT_IKE_REKEY = 4 * 3600
DEFAULT_CHILD_REKEY = 3600
MIN_REKEY, MAX_REKEY = 5, 30 * 24 * 3600
# kernel-libipsec has no AEAD without the gcm plug-in, which is not loaded
LIBIPSEC_UNSUPPORTED = ("gcm", "ccm", "chacha20poly1305")
MIN_PSK_BYTES = 16
_PSK_TEXT = re.compile(rb"[\x21-\x7e]+")
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_PATH = re.compile(r"/[A-Za-z0-9._/-]{1,200}")
_PROPOSAL_WORD = re.compile(r"[a-z0-9]{1,32}")
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def _invalid(msg: str) -> CNIError:
    return CNIError(INVALID_CONFIG, msg)


# -- validation ---------------------------------------------------------------

def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _invalid(f"ipsec: connection name {name!r} is not valid: 1-32 characters, "
                       "lower-case letters, digits and '-', starting with a letter or digit")
    return name


def check_path(path: str, what: str) -> str:
    if not isinstance(path, str) or not _PATH.fullmatch(path) or "/../" in f"{path}/" or "//" in path:
        raise _invalid(f"ipsec: {what} {path!r} is not valid: an absolute path of letters, "
                       "digits and '._/-' (no '..', spaces, quotes, braces or newlines)")
    return path


def check_unicast(address: str, what: str) -> str:
    """A host address a tunnel may end on: unicast, not loopback or unspecified."""
    try:
        ip = addresses.address(address, f"ipsec: {what}")  # no scope ID: its text would reach the config files
    except ValueError as exc:
        raise _invalid(str(exc)) from None
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_reserved or \
            (ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255")):
        raise _invalid(f"ipsec: {what} {address} is not a unicast host address")
    return str(ip)


def check_subnets(subnets, what: str) -> list:
    if isinstance(subnets, str) or not subnets:
        raise _invalid(f"ipsec: {what} must be a non-empty list of subnets (CIDR)")
    out = []
    for subnet in subnets:
        try:
            out.append(str(addresses.network(subnet, f"ipsec: {what} entry")))
        except ValueError as e:
            raise _invalid(str(e)) from None
    return out


def check_proposal(proposal: str, what: str, datapath: str) -> str:
    words = proposal.split("-") if isinstance(proposal, str) else []
    if not words or not all(_PROPOSAL_WORD.fullmatch(w) for w in words):
        raise _invalid(f"ipsec: {what} proposal {proposal!r} is not valid: algorithm names "
                       "(lower-case letters and digits) joined by '-', e.g. "
                       f"{DEFAULT_IKE_PROPOSAL if what == 'IKE' else DEFAULT_ESP_PROPOSAL}")
    if datapath == "libipsec" and what == "ESP" and any(aead in w for w in words for aead in LIBIPSEC_UNSUPPORTED):
        raise _invalid(f"ipsec: ESP proposal {proposal!r} is not supported by the user-space data "
                       "path (kernel-libipsec): no AEAD ciphers (AES-GCM/CCM, ChaCha20-Poly1305); "
                       f"use e.g. {DEFAULT_ESP_PROPOSAL} or aes256-sha256")
    return proposal


def check_rekey(seconds, what: str) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not MIN_REKEY <= seconds <= MAX_REKEY:
        raise _invalid(f"ipsec: {what} {seconds!r} is not valid: a whole number of seconds from "
                       f"{MIN_REKEY} to {MAX_REKEY} (30 days)")
    return seconds


def read_psk(path: str) -> bytes:
    """The pre-shared key in `path`: a regular file, not a link, owned by us,
    readable by its owner alone. The key never appears in an error."""
    check_path(path, "PSK file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise _invalid(f"ipsec: cannot open the PSK file {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise _invalid(f"ipsec: the PSK file {path} is not a regular file")
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise _invalid(f"ipsec: the PSK file {path} must belong to uid {os.geteuid()} and "
                           f"have mode 0600 or stricter (it has {stat.S_IMODE(st.st_mode):04o})")
        key = f.read(4097).strip()
    if len(key) < MIN_PSK_BYTES or len(key) > 4096:
        raise _invalid(f"ipsec: the PSK in {path} must be {MIN_PSK_BYTES} to 4096 bytes long")
    if not _PSK_TEXT.fullmatch(key):
        # a key file is one word of printable text (base64, hex, a passphrase
        # without spaces); anything else is more likely another secret of the
        # host's (a private key, a password file) named by mistake, which must
        # not become a key offered to whoever `peers` names
        raise _invalid(f"ipsec: the PSK file {path} must hold one line of printable characters without spaces "
                       "(e.g. head -c 32 /dev/urandom | base64)")
    return key


# -- one host's charon --------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Tunnel:
    """An IKEv2 connection from this host to one peer host, carrying traffic
    between the local and remote container subnets (ESP in UDP 4500)."""
    name: str
    local_address: str
    remote_address: str
    local_subnets: tuple
    remote_subnets: tuple
    psk_file: str
    ike_proposal: str = DEFAULT_IKE_PROPOSAL
    esp_proposal: str = DEFAULT_ESP_PROPOSAL
    ike_rekey: int = DEFAULT_IKE_REKEY
    child_rekey: int = DEFAULT_CHILD_REKEY

    @classmethod
    def from_config(cls, datapath: str = "libipsec", **conf) -> "Tunnel":
        unknown = set(conf) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise _invalid(f"ipsec: unknown tunnel settings {sorted(unknown)}")
        try:
            t = cls(**conf)
        except TypeError as e:
            raise _invalid(f"ipsec: incomplete tunnel settings ({e})") from None
        local = check_unicast(t.local_address, "local address")
        remote = check_unicast(t.remote_address, "peer address")
        if local == remote:
            raise _invalid(f"ipsec: the peer address {remote} is this host's own address")
        return cls(name=check_name(t.name), local_address=local, remote_address=remote,
                   local_subnets=tuple(check_subnets(t.local_subnets, "local subnets")),
                   remote_subnets=tuple(check_subnets(t.remote_subnets, "remote subnets")),
                   psk_file=check_path(t.psk_file, "PSK file"),
                   ike_proposal=check_proposal(t.ike_proposal, "IKE", datapath),
                   esp_proposal=check_proposal(t.esp_proposal, "ESP", datapath),
                   ike_rekey=check_rekey(t.ike_rekey, "IKE rekey time"),
                   child_rekey=check_rekey(t.child_rekey, "CHILD rekey time"))

    @property
    def initiator(self) -> bool:
        """One side initiates (the lower underlay address), so that two hosts
        starting together make one IKE_SA, not one each; the other answers,
        and drops its SAs when the initiator stops answering (DPD). The
        initiator keeps trying while the other is away (keyingtries 0)."""
        return ipaddress.ip_address(self.local_address) < ipaddress.ip_address(self.remote_address)

    def vici_connection(self) -> dict:
        return {self.name: {
            "version": "2",
            "local_addrs": [self.local_address],
            "remote_addrs": [self.remote_address],
            "encap": "yes",  # ESP in UDP 4500 even without NAT (as Rancher did)
            "proposals": [self.ike_proposal],
            "dpd_delay": "10s",
            # the initiating side never stops trying: a peer that is down (or
            # not set up yet) for longer than one try (5 retransmits, 165 s)
            # only answers when it comes, it never initiates itself
            "keyingtries": "0" if self.initiator else "1",
            **self._rekey_timers(self.ike_rekey, "over_time"),
            # a peer whose charon was restarted makes a new IKE_SA with the same
            # identities: it replaces the one the dead charon had
            "unique": "replace",
            "local": {"auth": "psk", "id": self.local_address},
            "remote": {"auth": "psk", "id": self.remote_address},
            "children": {self.name: {
                "mode": "tunnel",
                "local_ts": list(self.local_subnets),
                "remote_ts": list(self.remote_subnets),
                "esp_proposals": [self.esp_proposal],
                **self._rekey_timers(self.child_rekey, "life_time"),
                "start_action": "start" if self.initiator else "none",
                "dpd_action": "restart" if self.initiator else "clear",
                "close_action": "start" if self.initiator else "none",
            }},
        }}

    def _rekey_timers(self, rekey: int, lifetime_key: str) -> dict:
        """When this side rekeys an SA, and when the SA dies unrekeyed.

        The initiator rekeys first: at `rekey` less up to a tenth. The other
        side's timer runs half the margin later, so it fires only when the
        initiator failed to rekey in time. With equal timers, two hosts that
        made their SAs together rekeyed them together: collisions, which
        IKEv2 resolves by making and deleting redundant SAs (a rekey can
        cross a delete, an IKE_SA rekey another). The rekey test had them
        in every run, and one run in many lost about a second of traffic,
        table 220's route to the peer missing. Without them, a soak of
        3,000 pings across 71 rekeys lost none.

        Both sides' SAs die at the same time, `rekey` plus the margin:
        a CHILD_SA's `life_time` is absolute, an IKE_SA's `over_time` counts
        from its rekey time."""
        margin = _margin(rekey)
        later = 0 if self.initiator else margin // 2
        lifetime = rekey + margin if lifetime_key == "life_time" else margin - later
        return {"rekey_time": f"{rekey + later}s",
                "rand_time": f"{rekey // 10 if self.initiator else 0}s",
                lifetime_key: f"{lifetime}s"}


def _margin(rekey: int) -> int:
    """How long an SA lives past its rekey time. strongSwan's default is a tenth
    of it, but kernel-libipsec counts SA lifetimes in whole seconds, so with a
    short rekey time the hard expiry (the SA deleted, traffic dropped until a
    new one is made) could come before the rekey: at least 10 s."""
    return max(rekey // 10, 10)


def strongswan_conf(state_dir: str, datapath: str) -> str:
    """strongswan.conf as charon sees it: inside its mount namespace the state
    directory is /run, so every path in here starts with /run."""
    check_path(state_dir, "state directory")
    if datapath not in DATAPATH_PLUGINS:
        raise _invalid(f"ipsec: data path {datapath!r} is not one of {sorted(DATAPATH_PLUGINS)}")
    return (
        "charon {\n"
        f"  load = {DATAPATH_PLUGINS[datapath]} {CRYPTO_PLUGINS}\n"
        "  port = 500\n"
        "  port_nat_t = 4500\n"
        "  install_routes = yes\n"
        # reauthentication (not used: rekeying is) makes the new SAs first too
        "  make_before_break = yes\n"
        "  plugins {\n"
        "    vici {\n"
        "      socket = unix:///run/charon.vici\n"
        "    }\n"
        "  }\n"
        "  filelog {\n"
        "    charon {\n"
        "      path = /run/charon.log\n"
        "      default = 1\n"
        "      flush_line = yes\n"
        "      ike_name = yes\n"
        "      time_format = %F %T\n"
        "    }\n"
        "  }\n"
        "  syslog {\n"
        "    daemon {\n"
        "      default = -1\n"
        "    }\n"
        "  }\n"
        "}\n")


class Charon:
    """The charon of one host, its state in `state_dir` (created, mode 0700)."""

    def __init__(self, state_dir: str, datapath: str = "libipsec", netns: str | None = None):
        self.state_dir = check_path(state_dir, "state directory")
        if datapath not in DATAPATH_PLUGINS:
            raise _invalid(f"ipsec: data path {datapath!r} is not one of {sorted(DATAPATH_PLUGINS)}")
        if netns is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", netns):
            raise _invalid(f"ipsec: network namespace name {netns!r} is not valid")
        self.datapath = datapath
        self.netns = netns
        self.process = None

    @property
    def vici_socket(self) -> str:
        return os.path.join(self.state_dir, "charon.vici")

    @property
    def log_file(self) -> str:
        return os.path.join(self.state_dir, "charon.log")

    def start(self, detached: bool = False) -> int:
        """Start charon and wait until its VICI socket answers; its pid.

        `detached`: charon is nobody's child here (a launcher shell that
        exits at once starts it), so init reaps it whoever stops it: the host's
        charon is started by whichever process needs it first (a shim worker,
        the CNI daemon, the agent) and stopped by another, which could not
        reap it, and it would stay a zombie as long as its starter lives.
        Without, `self.process` is its handle and `stop()` ends it."""
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        for leftover in ("charon.pid", "charon.vici"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.state_dir, leftover))
        conf = os.path.join(self.state_dir, "strongswan.conf")
        with open(conf + ".tmp", "w") as f:
            f.write(strongswan_conf(self.state_dir, self.datapath))
        os.replace(conf + ".tmp", conf)
        argv = ["unshare", "--mount", "--propagation", "private", "--",
                "/bin/sh", "-c", 'mount --bind "$1" /run && exec "$2"', "charon-wrapper",
                self.state_dir, CHARON]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns] + argv
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "STRONGSWAN_CONF": "/run/strongswan.conf"}
        stderr_file = os.path.join(self.state_dir, "charon.stderr")
        if detached:
            launcher = ["/bin/sh", "-c", 'log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!',
                        "charon-launcher", stderr_file, *argv]
            launched = subprocess.run(launcher, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                      text=True, timeout=10, start_new_session=True)
            pid = int(launched.stdout.strip() or 0)
            exited = lambda: not _alive(pid)  # noqa: E731
        else:
            with open(stderr_file, "ab") as err:
                self.process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=err,
                                                stderr=err, start_new_session=True)
            pid = self.process.pid
            exited = lambda: self.process.poll() is not None  # noqa: E731
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not pid or exited():
                raise CNIError(PLUGIN_FAILED, "ipsec: charon exited while starting", self._log_tail())
            with contextlib.suppress(OSError):
                with self._connect():
                    return pid
            time.sleep(0.1)
        if detached:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.stop()
        raise CNIError(PLUGIN_FAILED, f"ipsec: charon did not open {self.vici_socket} "
                       f"within {START_TIMEOUT:.0f}s", self._log_tail())

    def stop(self) -> None:
        """SIGTERM (charon removes its SAs, routes, rule and TUN device), then
        SIGKILL if it has not gone after STOP_TIMEOUT."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def _log_tail(self, lines: int = 20) -> str:
        out = []
        for name in ("charon.stderr", "charon.log"):
            with contextlib.suppress(OSError):
                with open(os.path.join(self.state_dir, name), errors="replace") as f:
                    out += f.read().splitlines()[-lines:]
        return "\n".join(out)

    @contextlib.contextmanager
    def _connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(30)
            sock.connect(self.vici_socket)
            yield sock
        finally:
            sock.close()

    @contextlib.contextmanager
    def session(self):
        import vici  # only the ipsec backend needs it
        with self._connect() as sock:
            yield vici.Session(sock)

    # -- connections -----------------------------------------------------

    def load(self, tunnel: Tunnel, children: tuple = ()) -> None:
        """Load the tunnel's key and connection (idempotent: a reload replaces
        both). The initiating side starts the tunnel at once. `children`: other
        tunnels to the same peer whose CHILD_SAs this connection carries instead
        of its own (one IKE_SA per peer; a reload that changes only the
        children keeps the IKE_SA and the other children's SAs)."""
        import vici.exception
        key = read_psk(tunnel.psk_file)
        connection = tunnel.vici_connection()
        if children:
            connection[tunnel.name]["children"] = {
                c.name: c.vici_connection()[c.name]["children"][c.name] for c in children}
        try:
            with self.session() as s:
                s.load_shared({"id": f"psk-{tunnel.name}", "type": "IKE", "data": key,
                               "owners": [tunnel.local_address, tunnel.remote_address]})
                s.load_conn(connection)
        except vici.exception.CommandException as e:
            # charon's answer names the setting, never the key
            raise _invalid(f"ipsec: charon refused the connection {tunnel.name}: {e}") from None

    def unload(self, name: str) -> None:
        """Remove the connection and its key; its SAs and routes go with it."""
        import vici.exception
        check_name(name)
        with self.session() as s:
            for command, message in ((s.unload_conn, {"name": name}), (s.unload_shared, {"id": f"psk-{name}"})):
                with contextlib.suppress(vici.exception.CommandException):
                    command(message)
            with contextlib.suppress(vici.exception.CommandException):
                for _ in s.terminate({"ike": name, "force": "yes", "timeout": "-1"}):
                    pass

    def terminate_child(self, name: str) -> None:
        """Close the CHILD_SAs of child config `name` (the IKE_SA stays)."""
        import vici.exception
        check_name(name)
        with self.session() as s:
            with contextlib.suppress(vici.exception.CommandException):
                for _ in s.terminate({"child": name, "force": "yes", "timeout": "-1"}):
                    pass

    def initiate(self, name: str, children) -> None:
        """Start the connection's children now, without waiting for them."""
        import vici.exception
        check_name(name)
        with self.session() as s:
            for child in children:
                with contextlib.suppress(vici.exception.CommandException):
                    for _ in s.initiate({"ike": name, "child": check_name(child), "timeout": "-1"}):
                        pass

    def sas(self) -> dict:
        """{connection: {"ike": IKE_SA state, "children": {name: CHILD_SA state},
        "udp_encap": {name: whether its ESP is in UDP}, "child_ids": {name:
        [the unique ids of its CHILD_SAs]: a rekey makes a new one},
        "ike_id": the IKE_SA's unique id}}"""
        out = {}
        with self.session() as s:
            for entry in s.list_sas():
                for name, ike in entry.items():
                    child_sas = list((ike.get("child-sas") or {}).values())
                    ids = {}
                    for c in child_sas:
                        ids.setdefault(_text(c.get("name")), []).append(int(_text(c.get("uniqueid")) or 0))
                    if out.get(_text(name), {}).get("ike") == "ESTABLISHED" != _text(ike.get("state")):
                        continue  # two IKE_SAs of one connection (a peer restarted): the working one
                    out[_text(name)] = {
                        "ike": _text(ike.get("state")),
                        "ike_id": int(_text(ike.get("uniqueid")) or 0),
                        "children": {_text(c.get("name")): _text(c.get("state")) for c in child_sas},
                        "udp_encap": {_text(c.get("name")): _text(c.get("encap")) == "yes" for c in child_sas},
                        "child_ids": ids}
        return out

    def auth_failures(self) -> dict:
        """`auth_failures` of the end of this charon's log."""
        try:
            with open(self.log_file, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - LOG_TAIL_BYTES))
                return auth_failures(f.read().decode(errors="replace").splitlines())
        except OSError:
            return {}

    def wait_installed(self, name: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            sas = self.sas().get(name)
            if sas and sas["ike"] == "ESTABLISHED" and "INSTALLED" in sas["children"].values():
                return sas
            if time.monotonic() > deadline:
                raise CNIError(PLUGIN_FAILED, f"ipsec: tunnel {name} not up after {timeout:.0f}s "
                               f"(state: {sas or 'no IKE_SA'})", self._log_tail())
            time.sleep(0.2)


# -- what charon's log says about failed authentication ------------------------
# Each line of a connection starts with <name|unique id> (filelog ike_name).
# Only these shapes are recognised, and a reason is made from fixed words and
# the identities (checked to be addresses): no text of the log passes through,
# so nothing of a key can (charon never logs it anyway).
_LOG_CONN = re.compile(r"\[(?:IKE|CFG|ENC|NET)\] <([a-z0-9][a-z0-9-]{0,31})\|\d+> (.*)$")
_ID = r"'([0-9a-fA-F.:]{2,45})'"
_AUTH_FAILURES = (  # (the line's shape, which of its groups are identities, the reason)
    (re.compile(rf"tried \d+ shared keys? for {_ID} - {_ID}, but MAC mismatched"), (1, 2),
     lambda m: f"authentication of '{m[2]}' with pre-shared key failed (MAC mismatched: the hosts' "
               "pre-shared keys differ)"),
    (re.compile(rf"no shared key found for {_ID} - {_ID}"), (1, 2),
     lambda m: f"authentication of '{m[2]}' failed: no pre-shared key for it here"),
    (re.compile(r"received AUTHENTICATION_FAILED notify"), (),
     lambda m: "received AUTHENTICATION_FAILED notify: the peer refused this host's authentication "
               "(the hosts' pre-shared keys differ?)"),
    (re.compile(rf"authentication of {_ID} with (pre-shared key|RSA signature|ECDSA[A-Za-z0-9 -]{{0,30}}"
                rf"|EAP[A-Za-z0-9 -]{{0,30}}) failed"), (1,),
     lambda m: f"authentication of '{m[1]}' with {m[2]} failed"),
)
_ESTABLISHED = re.compile(r"IKE_SA [a-z0-9-]{1,32}\[\d+\] established between")
LOG_TAIL_BYTES = 256 * 1024


def _address_ok(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def auth_failures(lines) -> dict:
    """{connection: why its last authentication failed} for the connections
    whose last authentication in `lines` (charon's log) failed; a connection
    that established an IKE_SA since is not in it."""
    out = {}
    for line in lines:
        m = _LOG_CONN.search(line)
        if not m:
            continue
        name, text = m.groups()
        if _ESTABLISHED.search(text):
            out.pop(name, None)
            continue
        for pattern, ids, reason in _AUTH_FAILURES:
            found = pattern.search(text)
            if found and all(_address_ok(found[i]) for i in ids):
                out[name] = reason(found)
                break
    return out


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _text(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def probe_datapath() -> str:
    """"xfrm" when the kernel takes an ESP state, "libipsec" otherwise (needs
    /dev/net/tun). Probed once per boot with the other kernel features, never assumed."""
    if features.has("esp_xfrm"):
        return "xfrm"
    if os.path.exists("/dev/net/tun"):
        return "libipsec"
    raise CNIError(KERNEL_FEATURE_MISSING, "ipsec: the kernel has no ESP (XFRM) and there is no "
                   "/dev/net/tun for the user-space data path")
