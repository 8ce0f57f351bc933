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
