"""Default paths of the Docker side, in one place, with the CNI side's
defaults it hands on (cni_backend/paths.py). Each is only a default: a
command-line option, and for some the environment, overrides it where it is
used."""

from cni_backend import paths as cni_paths

STATE_DIR = "/var/lib/rancher-cnm"     # the driver's state, the CNI cache of Docker's endpoints
RUN_DIR = "/run/rancher-cnm"           # Join's staging namespaces
PLUGIN_DIR = "/run/docker/plugins"     # where dockerd finds the drivers' sockets
IPAM_DATA_DIR = cni_paths.STATE_DIR    # rancher-ipam's store, shared with CNI runtimes
CNI_CONF_DIR = cni_paths.CNI_CONF_DIR  # where -o cni.export=true writes
CNI_SOCKET = cni_paths.DAEMON_SOCKET   # the CNI daemon `serve` starts
CNI_BIN_DIR = cni_paths.CNI_BIN_DIR    # our CNI executables
CNI_PATH = (CNI_BIN_DIR, "/usr/lib/cni")  # searched, in order, by the CNI calls of serve and doctor
