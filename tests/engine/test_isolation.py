"""Isolation and privilege, as Docker's own bridge driver promises them:
containers on two of our networks (or on ours and a Docker bridge network)
do not reach each other unless one container is on both; the plug-in's
sockets are root's, mode 0660; nothing it runs listens on TCP."""

import os
import stat

import pytest

from tests.conftest import process_tree
from tests.engine.conftest import PLUGIN_DIR
from tests.engine.helpers import address, can_ping, container, network

pytestmark = pytest.mark.engine


def test_networks_are_isolated_unless_a_container_is_on_both(docker):
    ours_a = network(docker, "--subnet", "10.161.0.0/24")
    ours_b = network(docker, "--subnet", "10.162.0.0/24")
    dockers = network(docker, "--subnet", "10.163.0.0/24", driver="bridge")
    a, b, c = container(docker, ours_a), container(docker, ours_b), container(docker, dockers)
    ip_a, ip_b, ip_c = address(docker, a, ours_a), address(docker, b, ours_b), address(docker, c, dockers)
    assert not can_ping(docker, a, ip_b) and not can_ping(docker, b, ip_a), "our two networks"
    assert not can_ping(docker, a, ip_c) and not can_ping(docker, c, ip_a), "ours and Docker's bridge network"
    both = container(docker, ours_a)
    docker("network", "connect", ours_b, both)
    assert can_ping(docker, both, ip_a) and can_ping(docker, both, ip_b), "a container on both reaches both"
    assert not can_ping(docker, a, ip_b), "still isolated for the others"


def _socket_inodes(pids) -> set:
    inodes = set()
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        for fd in os.listdir(fd_dir) if os.path.isdir(fd_dir) else []:
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def _tcp_listeners() -> set:
    """Inodes of every listening TCP socket in this namespace (state 0A)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).readlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                inodes.add(fields[9])
    return inodes


def test_sockets_are_roots_0660_and_nothing_listens_on_tcp(docker):
    for driver in ("rancher-bridge", "rancher-flat", "rancher-vxlan"):
        info = os.stat(os.path.join(PLUGIN_DIR, f"{driver}.sock"))
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660, driver
        assert (info.st_uid, info.st_gid) == (0, 0), driver
    processes = process_tree(docker.shim.process.pid)
    assert len(processes) >= 3, "gunicorn master, workers and the CNI daemon"
    assert _socket_inodes(processes), "the scan sees the processes' sockets"
    assert _socket_inodes(processes) & _tcp_listeners() == set()
