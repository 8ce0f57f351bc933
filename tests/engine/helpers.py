"""Docker CLI helpers for engine tests (used with the `docker` fixture)."""

import json
import os
import pathlib
import time

from tests.conftest import is_locked, unique


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


def post_unix(socket_path, call, body=b"", timeout=30):
    """One plug-in call over its Unix socket as Docker makes it (no
    Content-Type; `body` b"" is the body-less retry): (status, parsed JSON)."""
    import socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(socket_path)
        conn.sendall(f"POST /{call} HTTP/1.1\r\nHost: plugin\r\nContent-Length: {len(body)}\r\n"
                     "Accept: application/vnd.docker.plugins.v1.2+json\r\nConnection: close\r\n\r\n".encode() + body)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


def wait_for_teardowns(state_dir, timeout: float = 20) -> None:
    """Wait until no endpoint teardown of the shim with `state_dir` is under
    way. Docker has DeleteEndpoint's answer before the teardown runs (it runs
    after the answer, holding the endpoint's lock in STATE/teardown:
    translate.endpoint_teardown), so a test that looks at the host right
    after `docker rm` waits for it first. A lock file nobody holds (a killed
    shim's) does not count."""
    folder = pathlib.Path(state_dir) / "teardown"
    deadline = time.monotonic() + timeout
    while any(is_locked(path) for path in (folder.iterdir() if folder.is_dir() else ())):
        if time.monotonic() > deadline:
            raise TimeoutError(f"an endpoint teardown in {folder} still runs after {timeout} s")
        time.sleep(0.01)
