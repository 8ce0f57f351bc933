"""The kept iptables-restore (cni_backend/net/kept_restore.py), each test in
namespaces of its own: a kept process leaves the rules a run of the command
would, answers a failing script as the command would, is replaced when it
ends, takes no one else's commit for its own, ends with its owner, and
serves nothing it cannot answer for. The ADDs and DELs of a warmed process
(the shim's workers, the CNI daemon) commit through it."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ns_exec, run

pytestmark = pytest.mark.netns

RESTORE = ["iptables-restore", "-w", "--noflush"]

# Steps from stdin, one JSON object per line; one JSON answer per step on stdout.
_DRIVER = r'''
import json, os, signal, sys
from cni_backend.net import kept_restore, tools
for line in sys.stdin:
    step = json.loads(line)
    if step["op"] == "enable":
        kept_restore.enable()
        answer = kept_restore.available("iptables-restore")
    elif step["op"] == "run":
        served = kept_restore.serves(step["argv"], step["script"])
        answer = [kept_restore.run(step["argv"], step["script"]), served]
    elif step["op"] == "tools":
        answer = tools.run(step["argv"], step["script"], check=False)
    elif step["op"] == "pid":
        kept = kept_restore._kept.get("iptables-restore")
        answer = kept.process.pid if kept and kept.process and kept.process.poll() is None else None
    elif step["op"] == "signal":
        os.kill(kept_restore._kept["iptables-restore"].process.pid, step["signal"])
        answer = True
    elif step["op"] == "timeout":
        kept_restore.TIMEOUT_S = step["seconds"]
        answer = True
    elif step["op"] == "ipset":
        from pyroute2.ipset import IPSet
        with IPSet() as ipset:
            try:
                getattr(ipset, step["do"])(step["name"], **({"stype": "hash:ip"} if step["do"] == "create" else {}))
                answer = "done"
            except Exception as exc:  # noqa: BLE001 - the answer says what the kernel said
                answer = str(exc)
    elif step["op"] == "exit":
        os._exit(0)
    print(json.dumps(answer), flush=True)
'''


class Driver:
    """A Python process in `netns` that takes the driver's steps."""

    def __init__(self, netns: str):
        self.process = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", _DRIVER],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))

    def step(self, op: str, **fields):
        self.process.stdin.write(json.dumps(dict(fields, op=op)) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"the driver died at {op}"
        return json.loads(line)

    def run(self, script: str):
        answer, served = self.step("run", argv=RESTORE, script=script)
        return answer, served

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)


@pytest.fixture
def driver(make_netns):
    made = []

    def start(netns=None):
        d = Driver(netns or make_netns())
        made.append(d)
        return d
    yield start
    for d in made:
        d.close()


def saved(netns: str) -> list:
    return [line for line in ns_exec(netns, "iptables-save").stdout.splitlines()
            if line and not line.startswith("#")]


SCRIPTS = [
    "*filter\n:RK-A - [0:0]\n-A RK-A -s 10.1.0.2/32 -i rkbr0 -m comment --comment one -j ACCEPT\nCOMMIT\n"
    "*nat\n:RK-N - [0:0]\n-A RK-N -s 10.1.0.2/32 ! -d 224.0.0.0/4 -j MASQUERADE\nCOMMIT\n",
    "*filter\n-A RK-A -d 10.1.0.3/32 -o rkbr0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\nCOMMIT\n",
    "*filter\n:RK-B - [0:0]\n-A RK-A -j RK-B\n-I RK-A 1 -s 10.1.0.4/32 -j DROP\nCOMMIT\n",
    "*filter\n-D RK-A -j RK-B\n-X RK-B\nCOMMIT\n*nat\n-D RK-N -s 10.1.0.2/32 ! -d 224.0.0.0/4 -j MASQUERADE\nCOMMIT\n",
]


def test_one_kept_process_serves_every_script_and_leaves_the_rules_a_run_of_the_command_would(driver, make_netns):
    kept, reference = make_netns(), make_netns()
    d = driver(kept)
    assert d.step("enable") is True
    pids = set()
    for script in SCRIPTS:
        answer, served = d.run(script)
        assert served and answer == [0, "", ""], answer
        pids.add(d.step("pid"))
        run("ip", "netns", "exec", reference, *RESTORE, input=script)
    assert len(pids) == 1 and None not in pids, f"the scripts were served by {pids}"
    assert saved(kept) == saved(reference)


def test_a_failing_script_answers_as_the_command_and_the_next_one_gets_a_new_process(driver, make_netns):
    kept, reference = make_netns(), make_netns()
    d = driver(kept)
    d.step("enable")
    assert d.run(SCRIPTS[0])[0][0] == 0
    first = d.step("pid")
    # the first table commits, the second refers to a chain that is not there
    failing = "*filter\n-A RK-A -s 10.1.0.9/32 -j ACCEPT\nCOMMIT\n*filter\n-A RK-MISSING -j ACCEPT\nCOMMIT\n"
    answer, served = d.run(failing)
    run("ip", "netns", "exec", reference, *RESTORE, input=SCRIPTS[0])
    by_command = run("ip", "netns", "exec", reference, *RESTORE, check=False, input=failing)
    assert served and answer[0] != 0 and by_command.returncode != 0
    assert answer[2].strip() == by_command.stderr.strip(), "the same message, its line the script's own"
    assert "line 5 failed" in answer[2]
    assert d.step("pid") is None, "the process that failed is gone"
    assert saved(kept) == saved(reference), "what committed before the failure stays, as with the command"
    assert d.run(SCRIPTS[1])[0][0] == 0
    assert d.step("pid") not in (None, first)


def test_once_a_deletion_is_answered_what_the_deleted_rules_held_is_released(driver):
    """As a command's exit waits for nf_tables' clean-up: a set the deleted
    rule matched can be destroyed right after (the VXLAN guard's ipset)."""
    d = driver()
    d.step("enable")
    assert d.step("ipset", do="create", name="rk-set") == "done"
    assert d.run("*filter\n-A INPUT -m set --match-set rk-set src -j ACCEPT\nCOMMIT\n")[0][0] == 0
    answer, served = d.run("*filter\n-D INPUT -m set --match-set rk-set src -j ACCEPT\nCOMMIT\n")
    assert served and answer[0] == 0
    assert d.step("ipset", do="destroy", name="rk-set") == "done"


def test_a_killed_process_is_replaced_at_the_next_script(driver):
    d = driver()
    d.step("enable")
    assert d.run(SCRIPTS[0])[0][0] == 0
    killed = d.step("pid")
    d.step("signal", signal=signal.SIGKILL)
    answer, served = d.run(SCRIPTS[1])
    assert served and answer == [0, "", ""]
    assert d.step("pid") not in (None, killed)


def test_only_its_own_process_commits_acknowledge_a_script(driver, make_netns):
    """While the kept process is stopped, commits by others go on; the
    script is not taken as done by them: it times out, and fails."""
    netns = make_netns()
    d = driver(netns)
    d.step("enable")
    assert d.run(SCRIPTS[0])[0][0] == 0
    d.step("signal", signal=signal.SIGSTOP)
    d.step("timeout", seconds=3)
    others = subprocess.Popen(["ip", "netns", "exec", netns, "sh", "-c",
                               "while :; do iptables -N RK-OTHER; iptables -X RK-OTHER; done"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        answer, served = d.run(SCRIPTS[1])
    finally:
        others.kill()
        others.wait()
    assert served and answer[0] != 0 and "no answer" in answer[2]
    assert d.step("pid") is None, "the process that did not answer was ended"
    assert d.run(SCRIPTS[1])[0] == [0, "", ""]


def test_the_kept_process_ends_with_its_owner(driver):
    d = driver()
    d.step("enable")
    assert d.run(SCRIPTS[0])[0][0] == 0
    kept = d.step("pid")
    d.process.stdin.write(json.dumps({"op": "exit"}) + "\n")
    d.process.stdin.flush()
    d.process.wait(timeout=30)
    deadline = time.monotonic() + 30  # not a timing assertion: how long to wait for it to go
    while os.path.exists(f"/proc/{kept}") and open(f"/proc/{kept}/stat").read().split()[2] != "Z":
        assert time.monotonic() < deadline, "the kept iptables-restore outlived its owner"
        time.sleep(0.05)


def test_what_it_cannot_answer_for_runs_the_command(driver):
    d = driver()
    assert d.run(SCRIPTS[0]) == (None, False), "not enabled"
    assert d.step("tools", argv=RESTORE, script=SCRIPTS[0]) == "", "the command ran"
    d.step("enable")
    for script, by_command in (("*filter\n:RK-C - [0:0]\nCOMMIT\n", ""),   # a table that may commit nothing
                               ("*filter\n-F RK-A\nCOMMIT\n", ""),          # a flush of what may be empty
                               ("*filter\n-A RK-A -j ACCEPT\n", None)):      # no COMMIT: the command refuses it
        assert d.run(script) == (None, False), script
        assert d.step("tools", argv=RESTORE, script=script) == by_command, script
    other = d.step("run", argv=["iptables-restore", "--noflush"], script=SCRIPTS[1])
    assert other == [None, False], "other arguments"
    assert d.step("pid") is None, "none of them started a kept process"


def test_another_pid_namespace_runs_the_command(make_netns):
    """In a PID namespace of its own the kernel names its children by other
    pids than it knows them by: nothing is kept, the command still runs."""
    netns = make_netns()
    code = ("from cni_backend.net import kept_restore, tools\n"
            "kept_restore.enable()\n"
            "print(kept_restore.available('iptables-restore'), "
            f"tools.run({RESTORE!r}, {SCRIPTS[0]!r}) == '')\n")
    out = ns_exec(netns, "unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code).stdout
    assert out.split() == ["False", "True"]
    assert any("RK-A" in line for line in saved(netns))


_ADDS = r'''
import json, os, sys
from cni_backend import runtime
from cni_backend.invoke.api import CNI, Attachment
root = sys.argv[1]
runtime.warm_own_plugins()
conf = {"cniVersion": "1.1.0", "name": "rk", "plugins": [{"type": "rancher-bridge", "bridge": "rkbr0",
        "isGateway": True, "ipMasq": True,
        "ipam": {"type": "rancher-ipam", "ranges": [[{"subnet": "10.77.0.0/24"}]], "dataDir": root + "/ipam"}}]}
raw = json.dumps(conf).encode()
cni = CNI([root + "/bin"], cache_dir=root + "/cache", runner=runtime.own_runner)
os.makedirs(root + "/ns", exist_ok=True)
for i in range(4):
    cni.add(conf, raw, Attachment(f"c{i}", sys.argv[2 + i], "eth0"))
for i in range(4):
    cni.delete(conf, raw, Attachment(f"c{i}", sys.argv[2 + i], "eth0"))
'''

_LISTEN = r"""
import json, select, socket, struct, sys
from cni_backend.net import nft_generation as gen
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, gen.NETLINK_NETFILTER)
s.bind((0, 0))
s.setsockopt(270, 1, gen.NFNLGRP_NFTABLES)
print("listening", flush=True)
committers = {}
while True:
    ready = select.select([s, sys.stdin], [], [])[0]
    if sys.stdin in ready and not sys.stdin.readline():
        break
    if s not in ready:
        continue
    data = s.recv(1 << 20)
    offset = 0
    while offset + 20 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if kind == (gen.NFNL_SUBSYS_NFTABLES << 8) | gen.NFT_MSG_NEWGEN:
            attrs, at = {}, offset + 20
            while at + 4 <= offset + length:
                size, code = struct.unpack_from("=HH", data, at)
                attrs[code & 0x3fff] = data[at + 4:at + size]
                at += (size + 3) & ~3
            name = attrs.get(3, b"?").rstrip(b"\0").decode()
            committers.setdefault(name, set()).add(struct.unpack("!I", attrs[2])[0])
        offset += (length + 3) & ~3
print(json.dumps({k: len(v) for k, v in committers.items()}))
"""


def test_the_adds_and_dels_of_a_warmed_process_commit_through_one_kept_process(make_netns, tmp_path):
    """What the shim's workers and the CNI daemon do: every firewall commit
    of four ADDs and their DELs comes from one iptables-restore process."""
    from cni_backend import install
    host = make_netns()
    containers = [make_netns() for _ in range(4)]
    install.write_executables(str(tmp_path / "bin"))
    listener = subprocess.Popen(["ip", "netns", "exec", host, sys.executable, "-c", _LISTEN],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "listening"
        ns_exec(host, sys.executable, "-c", _ADDS, str(tmp_path), *[f"/var/run/netns/{c}" for c in containers])
    finally:
        out = listener.communicate("", timeout=30)[0]  # its stdin closed: it tells who committed
    assert json.loads(out) == {"iptables-restor": 1}, out
    assert not [line for line in saved(host) if "rcni-" in line], "the DELs left rules behind"
