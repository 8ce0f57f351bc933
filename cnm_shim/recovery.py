"""Containers Docker gave up on because the plug-in was not up yet.

dockerd restores containers with a restart policy as it starts; one attached
to a network of a driver that is not there fails with `plugin "NAME" not
found` and Docker never retries it. The systemd unit orders the plug-in first;
when it starts later anyway (by hand, after a crash loop), this pass starts
those containers once the plug-in answers: restart policy `always` or
`unless-stopped`, not running, a start error recorded by Docker (so not a
container someone stopped), attached to one of our networks.
"""

import logging
import time

import docker

log = logging.getLogger("cnm-shim")
POLICIES = ("always", "unless-stopped")


def stranded(client, drivers) -> list:
    """The containers to start (docker SDK objects)."""
    ours = {net.id for net in client.networks.list() if net.attrs.get("Driver", "").split(":")[0] in drivers}
    found = []
    for container in client.containers.list(all=True, filters={"status": ["exited", "created"]}):
        attrs = container.attrs
        policy = (attrs.get("HostConfig", {}).get("RestartPolicy") or {}).get("Name")
        networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
        if policy in POLICIES and attrs["State"].get("Error") \
                and any(n.get("NetworkID") in ours for n in networks.values()):
            found.append(container)
    return found


def restart_stranded(docker_host: str, drivers, delay: float = 1.0, attempts: int = 5) -> list:
    """Start every stranded container; names of those started. `delay`
    lets the plug-in's workers come up: Docker's start calls us back."""
    time.sleep(delay)
    client = docker.DockerClient(base_url=docker_host, version="auto", timeout=60)
    started = []
    try:
        for attempt in range(attempts):  # a start Docker refuses now may pass once we have warmed up
            pending = [c for c in stranded(client, drivers) if c.name not in started]
            if not pending:
                break
            for container in pending:
                try:
                    container.start()
                    started.append(container.name)
                    log.warning("started %s, which dockerd could not start without us", container.name)
                except docker.errors.APIError as exc:
                    log.warning("starting %s: %s", container.name, exc)
            time.sleep(1 + attempt)
    finally:
        client.close()
    return started
