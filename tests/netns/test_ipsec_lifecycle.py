"""charon's lifecycle on two hosts (namespaces) joined by rancher-ipsec: the
ipsec agent starts a charon killed with -9 again with its tunnels (and, when
that cannot be done whole, leaves none running and tries again), doctor's
check and repair, rekeys that lose no packet, and a wrong key named in the
data path's text without any key in it."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from cni_backend import ipsec_tunnels
from cni_backend.plugins import ipsec
from tests.conftest import ns_exec, ping
from tests.netns.test_ipsec import UNDERLAY, alive, charon_pid, hosts, ipsec_config, wait_child  # noqa: F401

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not os.access(ipsec_tunnels.CHARON, os.X_OK),
                       reason="strongSwan's charon is not installed (make deps)"),
    pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun for kernel-libipsec"),
]

RUN_PY = ("import json, sys; from cni_backend import datapath, hostnet; from cni_backend.plugins import ipsec; "
          "conf = json.loads(sys.argv[1]); ")


def attach_both(hosts, make_netns, configs) -> list:
    """An ADD on each host (B, the answering side, first); [(container, address)]."""
    (host_a, host_b), envs, _ = hosts
    out = [None, None]
    for n, host in ((1, host_b), (0, host_a)):
        container = make_netns()
        code, result = envs[n].exec("ADD", configs[n], container, container_id=f"c{n}", host_netns=host)
        assert code == 0, result
        out[n] = (container, result["ips"][0]["address"].split("/")[0])
    return out


def charon_of(env) -> ipsec_tunnels.Charon:
    return ipsec_tunnels.Charon(str(env.state / "ipsec" / "charon"))


def until(what, check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        time.sleep(0.25)


def running_charon(env) -> int | None:
    try:
        pid = charon_pid(env)
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


@pytest.fixture
def agents(hosts, tmp_path):
    """Start `cnm-shim ipsec-agent` in a host namespace; stopped (SIGTERM)
    before the hosts' charons are killed."""
    started = []

    def start(host: str, env, interval: float = 0.5):
        log = open(tmp_path / f"agent-{host}.log", "w+")
        argv = ["ip", "netns", "exec", host, sys.executable, "-m", "cnm_shim.cli", "ipsec-agent",
                "--state-dir", str(env.state), "--interval", str(interval)]
        started.append((subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), log))
        return log

    yield start
    for process, log in started:
        process.terminate()
        process.wait(10)
        log.close()


def test_charon_killed_with_9_comes_back_with_its_tunnels(hosts, agents, make_netns):
    (host_a, host_b), envs, psk = hosts
    configs = [ipsec_config(envs[n], n, psk) for n in range(2)]
    (a, ip_a), (b, ip_b) = attach_both(hosts, make_netns, configs)
    child_a = ipsec.load_network(configs[0]).connection(UNDERLAY[1])
    wait_child(charon_of(envs[0]), child_a)
    assert ping(a, ip_b, count=2)
    logs = [agents(host, env) for host, env in zip((host_a, host_b), envs)]

    # the answering side (B) killed: its agent starts it again, B itself makes
    # the new IKE_SA, which replaces the one A still holds of the dead charon
    for n in (1, 0):  # then the initiating side (A)
        old = charon_pid(envs[n])
        os.kill(old, 9)
        until(f"host {n}'s charon started again", lambda: running_charon(envs[n]) not in (None, old))
        until("a container reaches the other host again", lambda: ping(a, ip_b))
        assert ping(b, ip_a), "and back"
        wait_child(charon_of(envs[0]), child_a)
        logs[n].seek(0)
        assert "started it again" in logs[n].read()

    # the key unreadable while charon is dead: the agent says so, leaves no
    # charon half-configured, and succeeds once the key is fine again
    os.chmod(psk, 0o644)
    old = charon_pid(envs[1])
    os.kill(old, 9)
    logs[1].seek(0)
    until("the agent's complaint", lambda: logs[1].seek(0) == 0 and "could not be started" in logs[1].read())
    assert running_charon(envs[1]) is None, "no charon without its tunnels"
    assert "mode 0600" in (logs[1].seek(0) == 0 and logs[1].read())
    os.chmod(psk, 0o600)
    until("host B's charon started again", lambda: running_charon(envs[1]) is not None)
    until("traffic resumes", lambda: ping(a, ip_b))
    assert not [line for log in logs for line in (log.seek(0) == 0 and log.read()).splitlines()
                if open(psk).read().strip() in line], "no key in the agent's log"


def test_doctor_names_a_dead_charon_and_repair_brings_it_back(hosts, make_netns):
    (host_a, host_b), envs, psk = hosts
    configs = [ipsec_config(envs[n], n, psk) for n in range(2)]
    (a, ip_a), (b, ip_b) = attach_both(hosts, make_netns, configs)
    wait_child(charon_of(envs[0]), ipsec.load_network(configs[0]).connection(UNDERLAY[1]))
    code = ("import json, sys; from cnm_shim import doctor; from cnm_shim.translate import Settings; "
            "d = doctor.Doctor.__new__(doctor.Doctor); d.settings = Settings(ipam_data_dir=sys.argv[1]); "
            "d.findings = []; d.check_ipsec(sys.argv[2] == 'repair'); "
            "print(json.dumps([f.line() for f in d.findings]))")

    def doctor(host, env, mode):
        return json.loads(ns_exec(host, sys.executable, "-c", code, str(env.state), mode).stdout)

    until("the tunnel up on both sides", lambda: doctor(host_b, envs[1], "check") == [])
    os.kill(charon_pid(envs[1]), 9)
    found = doctor(host_b, envs[1], "check")
    assert len(found) == 1 and "ipsec" in found[0] and "charon: not running" in found[0] \
        and "[repairable]" in found[0], found
    found = doctor(host_b, envs[1], "repair")
    assert "[repaired]" in found[0] and "started again" in found[0], found
    until("traffic resumes", lambda: ping(a, ip_b))
    until("doctor finds nothing", lambda: doctor(host_b, envs[1], "check") == [])


def sa_events(log: str) -> list:
    """charon's IKE lines without its packets and their parsing: what a rekey did."""
    return [line for line in log.splitlines() if "[IKE]" in line]


def test_rekeys_lose_no_packet(hosts, make_netns):
    """The initiator (A, the lower underlay address) rekeys every SA first; the
    other side's timers are later, so no rekey collides with another."""
    (host_a, host_b), envs, psk = hosts
    configs = [dict(ipsec_config(envs[n], n, psk), childRekeyTime=6, ikeRekeyTime=15) for n in range(2)]
    (a, ip_a), (b, ip_b) = attach_both(hosts, make_netns, configs)
    charon_a = charon_of(envs[0])
    child = ipsec.load_network(configs[0]).connection(UNDERLAY[1])
    wait_child(charon_a, child)
    # -D -O: each line timed, and a missing reply named as it is missed
    pinger = subprocess.Popen(["ip", "netns", "exec", a, "ping", "-D", "-O", "-i", "0.1", "-c", "250", "-W", "2", ip_b],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    child_ids, ike_ids = set(), set()
    try:
        while pinger.poll() is None:
            for sa in charon_a.sas().values():
                child_ids.update(sa["child_ids"].get(child, []))
                ike_ids.add(sa["ike_id"])
            time.sleep(0.2)
    finally:
        if pinger.poll() is None:
            pinger.kill()
        out = pinger.communicate()[0]
    assert pinger.returncode == 0, out
    sent, received = (int(n) for n in re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
    logs = [open(charon_of(env).log_file).read() for env in envs]
    events = "\n".join(f"{host}: {line}" for host, log in zip("AB", logs) for line in sa_events(log))
    # the side that rekeys a CHILD_SA logs "establishing CHILD_SA <name>{n} reqid r"
    # (the first one has no reqid yet); kernel-libipsec's "creating rekey job"
    # also comes for SAs already replaced, so it counts no rekeys
    rekeys = [len(re.findall(r"establishing CHILD_SA \S+ reqid", log)) for log in logs]
    assert rekeys[0] >= 1 and len(child_ids) >= 2, f"at least one CHILD_SA rekey while pinging: {child_ids}"
    ike_rekeys = logs[0].count("initiating IKE_SA") - 1  # the first one made it
    assert ike_rekeys >= 1, f"A rekeyed the IKE_SA:\n{events}"
    assert rekeys[1] == logs[1].count("initiating IKE_SA") == 0, f"B rekeyed nothing:\n{events}"
    assert "collision" not in logs[0] + logs[1], f"no rekey collided with another:\n{events}"
    assert "closing expired CHILD_SA" not in logs[0] + logs[1], \
        f"every CHILD_SA was replaced by a rekey, none reached its hard expiry:\n{events}"
    lost = "\n".join(line for line in out.splitlines() if "bytes from" not in line)
    assert sent == received == 250, f"no packet lost across {rekeys[0]} CHILD_SA rekeys:\n{lost}\n{events}"
    print(f"{rekeys[0]} CHILD_SA and {ike_rekeys} IKE_SA rekeys ({len(child_ids)} CHILD_SAs, {len(ike_ids)} IKE_SAs seen on A), "
          f"{sent} pings, none lost")


def test_a_wrong_key_is_named_in_the_data_path_without_any_key(hosts, make_netns, tmp_path):
    (host_a, host_b), envs, psk = hosts
    other = str(tmp_path / "other-psk")
    fd = os.open(other, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, os.urandom(24).hex().encode())
    os.close(fd)
    configs = [ipsec_config(envs[0], 0, psk), ipsec_config(envs[1], 1, other)]
    (a, ip_a), (b, ip_b) = attach_both(hosts, make_netns, configs)
    code = RUN_PY + "print(json.dumps(hostnet.network_of({'name': conf['name'], 'cniVersion': '1.0.0', 'plugins': [conf]}).datapath(conf['name'])))"

    def status(n):
        return json.loads(ns_exec((host_a, host_b)[n], sys.executable, "-c", code, json.dumps(configs[n])).stdout)

    found_b = until("B names the failure", lambda: (lambda s: "auth_failure" in s["ipsec"]["peers"][UNDERLAY[0]] and s)(status(1)))
    found_a = until("A names the failure", lambda: (lambda s: "auth_failure" in s["ipsec"]["peers"][UNDERLAY[1]] and s)(status(0)))
    assert f"authentication of '{UNDERLAY[0]}' with pre-shared key failed" in found_b["summary"], found_b
    assert "AUTHENTICATION_FAILED" in found_a["summary"], found_a
    for found in (found_a, found_b):
        assert "user-space ESP" in found["summary"] and "charon pid" in found["summary"], found
        assert found["ipsec"]["peers"][UNDERLAY[0] if found is found_b else UNDERLAY[1]]["ike_sa"] is None, found
        text = json.dumps(found)
        for key_file in (psk, other):
            assert open(key_file).read().strip() not in text, "no key in the status"
    assert not ping(a, ip_b), "the hosts with different keys do not reach each other"
    health = RUN_PY + "print(json.dumps(hostnet.ipsec_health(conf['stateDir'])))"
    problems = json.loads(ns_exec(host_b, sys.executable, "-c", health, json.dumps(configs[1])).stdout)
    assert problems and "MAC mismatched" in problems[0][1] and open(other).read().strip() not in json.dumps(problems)
