"""Default paths of the CNI side, in one place. Each is only a default: the
network config (`dataDir`, `stateDir`), the environment (`RANCHER_TRACE_CONTROL`,
the daemon socket's variable) or a command-line option overrides it where it
is used. No imports: the executables' front reads it too."""

STATE_DIR = "/var/lib/rancher-cni"          # IPAM store, flat and VXLAN network records
RUN_DIR = "/run/rancher-cni"                # locks, the kernel feature cache
FIREWALL_DIR = f"{RUN_DIR}/firewall"       # per network namespace: our rules' records and lock
DAEMON_SOCKET = f"{RUN_DIR}/cni.sock"       # cnm-shim cni-server
TRACE_CONTROL = f"{RUN_DIR}/trace"
CNI_CACHE_DIR = "/var/lib/cni"              # libcni's results cache, shared with other runtimes
CNI_CONF_DIR = "/etc/cni/net.d"
CNI_BIN_DIR = "/opt/cni/bin"                # where CNI runtimes look for plug-ins; install-cni writes ours there
