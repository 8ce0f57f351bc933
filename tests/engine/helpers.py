"""Docker CLI helpers for engine tests (used with the `docker` fixture)."""

import json

from tests.conftest import unique


def network(docker, *args, name=None, driver="rancher-bridge"):
    name = name or unique("n")
    docker("network", "create", "-d", driver, *args, name)
    docker.made["networks"].append(name)
    return name


def container(docker, net, *args, name=None, command=("sleep", "600")):
    name = name or unique("c")
    docker.made["containers"].append(name)
    docker("run", "-d", "--name", name, "--network", net, *args, docker.dockerd.image, *command)
    return name


def address(docker, name, net):
    info = json.loads(docker("inspect", name).stdout)[0]
    return info["NetworkSettings"]["Networks"][net]["IPAddress"]


def can_ping(docker, source, target) -> bool:
    return docker("exec", source, "ping", "-c", "1", "-W", "2", target, check=False).returncode == 0
