"""Crash consistency: what a kill or a power loss may leave of our files and
databases. SQLite and the filesystem are real; os.fsync is watched (it is the
OS's call, not the thing under test) to see what was synced when, and the
sync calls SQLite makes itself are watched with strace, in a child process."""

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import types

import pytest

from cni_backend import files, flatnet, install, vxlan_registry
from cni_backend.invoke import cache
from cni_backend.invoke.api import Attachment
from cni_backend.net import features
from cnm_shim import translate
from cni_backend.ipam import store as store_module
from cni_backend.ipam.store import Allocation, SQLiteStore
from cnm_shim.state import NETWORK, Endpoint, Network, State
from tests.unit.test_http_errors import NET, shim  # noqa: F401 - shim is the fixture used below

FULL = 2  # PRAGMA synchronous


@pytest.fixture
def connections(monkeypatch):
    """(synchronous, journal_mode) of every SQLite connection opened, read
    from the connection itself just before it is closed."""
    seen = []

    class Watched(sqlite3.Connection):
        def close(self):
            seen.append((self.execute("PRAGMA synchronous").fetchone()[0],
                         self.execute("PRAGMA journal_mode").fetchone()[0]))
            super().close()

    real = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **kw: real(*a, factory=Watched, **kw))
    return seen


def test_a_power_loss_cannot_roll_back_an_ipam_allocation(tmp_path, connections):
    """Docker never replays an allocation: every connection of the IPAM
    store syncs the WAL at each commit (synchronous=FULL)."""
    store = SQLiteStore(str(tmp_path))
    allocation = Allocation("10.22.0.0/16", "10.22.0.5", "net", "c1", "eth0")
    store.run(lambda txn: txn.add(allocation))
    assert store.run(lambda txn: txn.all()) == [allocation]
    store.run(lambda txn: txn.remove(allocation))
    assert len(connections) >= 3 and set(connections) == {(FULL, "wal")}, connections


def test_a_power_loss_cannot_roll_back_the_drivers_state(tmp_path, connections):
    state = State(str(tmp_path))
    state.put(NETWORK, "n1", {"id": "n1"})
    assert state.get(NETWORK, "n1") == {"id": "n1"} and state.all(NETWORK) == [{"id": "n1"}]
    state.delete(NETWORK, "n1")
    state._connections.close_idle()  # the connection kept from call to call, closed (and so recorded) here
    assert len(connections) >= 2 and set(connections) == {(FULL, "wal")}, connections


def _taken(state: State) -> sqlite3.Connection:
    """The connection the state's next call would use."""
    with state._connections.connection() as db:
        return db


def test_the_state_connection_is_kept_but_never_crosses_a_fork_or_a_replaced_file(tmp_path):
    state = State(str(tmp_path))
    state.put(NETWORK, "n1", {"id": "n1"})
    kept = _taken(state)
    assert state.get(NETWORK, "n1") == {"id": "n1"} and _taken(state) is kept
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a forked child (a gunicorn worker, a forked CNI call): a connection of its own
        ok = _taken(state) is not kept and state.get(NETWORK, "n1") == {"id": "n1"}
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    os.close(read), os.close(write)
    assert state.get(NETWORK, "n1") == {"id": "n1"}, "the parent's connection still serves after the child's exit"
    os.unlink(tmp_path / "state.db")  # another file at the path (restored, recreated): opened anew
    for leftover in tmp_path.glob("state.db-*"):
        leftover.unlink()
    other = State(str(tmp_path))
    other.put(NETWORK, "n2", {"id": "n2"})
    assert state.all(NETWORK) == [{"id": "n2"}] and _taken(state) is not kept


# -- write_atomic ---------------------------------------------------------------

def test_write_atomic_creates_and_replaces_with_the_mode_given(tmp_path):
    target = tmp_path / "50-net.conflist"
    files.write_atomic(str(target), "first", 0o644)
    assert target.read_text() == "first" and target.stat().st_mode & 0o777 == 0o644
    files.write_atomic(str(target), b"second", 0o600)
    assert target.read_bytes() == b"second" and target.stat().st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["50-net.conflist"]


@pytest.fixture
def disk_events(monkeypatch):
    """("fsync", path synced) and ("rename", src, dst), in order."""
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        events.append(("rename", os.fspath(src), os.fspath(dst)))
        return real_replace(src, dst, **kw)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def _cache_entry(d, monkeypatch):
    cache.save(str(d), Attachment("c1", "/var/run/netns/x", "eth0", "net"), b"{}", {"cniVersion": "1.0.0"})
    return [d / "results" / "net-c1-eth0"]


def _flat_record(d, monkeypatch):
    flat = flatnet.FlatNetwork("br0", "eth1", 0, None, ("10.0.0.0/24",), None, str(d))
    flatnet._write_record(flat, {"uplink": "eth1", "addresses": []})
    return [flat.record_path]


def _feature_cache(d, monkeypatch):
    monkeypatch.setattr(features, "CACHE_DIR", str(d))
    features._write_cache({"vxlan": True})
    return [d / "features.json"]


def _vxlan_record(d, monkeypatch):
    vxlan_registry.record_endpoint(str(d), 42, "c1", ["10.0.0.5/24"], "02:00:00:00:00:05")
    return [d / "vxlan" / "42" / "c1.json"]


def _executables(d, monkeypatch):
    return install.write_executables(str(d))


def _exported_conflist(d, monkeypatch):
    translator = types.SimpleNamespace(settings=types.SimpleNamespace(cni_conf_dir=str(d)))
    return [translate.Translator._export(translator, "net", {"cniVersion": "1.0.0", "name": "net", "plugins": []})]


@pytest.mark.parametrize("writer", [_flat_record, _feature_cache, _executables, _exported_conflist],
                         ids=lambda w: w.__name__.strip("_"))
def test_every_file_is_synced_before_its_rename_and_its_directory_after(tmp_path, monkeypatch, disk_events, writer):
    """A power loss after the write returned keeps the new file: its data was
    on disk before it took the name, and the rename was made durable."""
    written = [os.fspath(p) for p in writer(tmp_path, monkeypatch)]
    assert written
    for path in written:
        renames = [i for i, e in enumerate(disk_events) if e[0] == "rename" and e[2] == path]
        assert renames, f"{path} was not written through a rename: {disk_events}"
        i = renames[-1]
        temp = disk_events[i][1]
        assert ("fsync", temp) in disk_events[:i], f"{path}: data not synced before the rename: {disk_events}"
        assert ("fsync", os.path.dirname(path)) in disk_events[i + 1:], \
            f"{path}: directory not synced after the rename: {disk_events}"
        assert os.path.dirname(temp) == os.path.dirname(path)
    assert not [n for p in written for n in os.listdir(os.path.dirname(p)) if n.endswith(".tmp")]


@pytest.mark.parametrize("writer", [_cache_entry, _vxlan_record], ids=lambda w: w.__name__.strip("_"))
def test_an_attachments_record_is_renamed_into_place_without_a_sync(tmp_path, monkeypatch, disk_events, writer):
    """The records a power loss may roll back (cni_backend/files.py: the
    attachment goes with them) still take their name by a rename, whole."""
    written = [os.fspath(p) for p in writer(tmp_path, monkeypatch)]
    for path in written:
        assert [e for e in disk_events if e[0] == "rename" and e[2] == path], disk_events
    assert not [e for e in disk_events if e[0] == "fsync"], disk_events
    assert not [n for p in written for n in os.listdir(os.path.dirname(p)) if n.endswith(".tmp")]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "record.json"
    target.write_text('{"old": true}')

    def disk_full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        files.write_atomic(str(target), '{"new": true}')
    assert target.read_text() == '{"old": true}' and os.listdir(tmp_path) == ["record.json"]


_WRITER = r"""
import sys
from cni_backend import files
path, size = sys.argv[1], int(sys.argv[2])
print("ready", flush=True)
n = 0
while True:
    files.write_atomic(path, (b"ab"[n % 2:n % 2 + 1]) * size)
    n += 1
"""


def test_a_writer_killed_at_any_moment_leaves_the_old_content_or_the_new(tmp_path):
    """kill -9 of a process rewriting a 4 MiB file, at many points: the file
    is always one whole version, never a part, never empty."""
    target, size = tmp_path / "state.json", 4 << 20
    target.write_bytes(b"a" * size)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for delay in (0.0, 0.005, 0.01, 0.02, 0.05, 0.08, 0.13, 0.2):
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(target), str(size)],
                                  stdout=subprocess.PIPE, text=True, cwd=root)
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        content = target.read_bytes()
        assert content in (b"a" * size, b"b" * size), f"after {delay} s: {len(content)} bytes, mixed or cut"
        # a kill between the temp file's creation and the rename can leave it:
        # hidden, and named so that no reader of the directory takes it
        assert all(name == "state.json" or (name.startswith(".state.json.") and name.endswith(".tmp"))
                   for name in os.listdir(tmp_path))


def test_temp_files_left_by_a_killed_writer_are_removed_by_the_next_write(tmp_path, monkeypatch):
    """By the process's first write in the directory, and again once
    STALE_AFTER_S has passed since: not a listing of the directory at every
    write (the CNI cache holds an entry per attachment)."""
    target = tmp_path / "net-c1-eth0"
    old, fresh = tmp_path / ".net-c1-eth0.k1ll3d00.tmp", tmp_path / ".net-c1-eth0.wr1t1ng0.tmp"
    other = tmp_path / ".net-c2-eth0.k1ll3d00.tmp"  # another entry's, killed too
    foreign = tmp_path / ".someone-elses.tmp"  # not of the shape ours have: not ours to remove
    for leftover in (old, fresh, other, foreign):
        leftover.write_text("part")
    past = time.time() - files.STALE_AFTER_S - 60
    for leftover in (old, other, foreign):
        os.utime(leftover, (past, past))
    files.write_atomic(str(target), "whole")
    # the fresh one may be another process's write in progress: it stays
    assert sorted(os.listdir(tmp_path)) == sorted([target.name, fresh.name, foreign.name])
    later = tmp_path / ".net-c3-eth0.k1ll3d00.tmp"
    later.write_text("part")
    os.utime(later, (past, past))
    files.write_atomic(str(target), "again")
    assert later.exists(), "listed again at the very next write"
    monkeypatch.setitem(files._swept, str(tmp_path), time.time() - files.STALE_AFTER_S - 1)  # that long ago
    files.write_atomic(str(target), "once more")
    assert not later.exists(), "not removed once STALE_AFTER_S had passed"


# SQLite syncs its log itself (fdatasync, in C): counted with strace, between
# two markers the child sets by changing its directory.
_SQLITE_CHILD = r"""
import json, os, sys
from cni_backend import skel
from cni_backend.plugins import load
from cni_backend.ipam.store import Allocation, SQLiteStore, keep_files_open
from cnm_shim.state import Endpoint, Network, State
keep_files_open()  # as the shim's and the CNI daemon's workers do: a commit's close is not the file's last
state, store = State(sys.argv[1]), SQLiteStore(sys.argv[1])
state.save(Network(id="n1"))
store.run(lambda txn: txn.all())
allocation = Allocation("10.22.0.0/16", "10.22.0.5", "net", "c1", "eth0")
ep = Endpoint(network_id="n1", endpoint_id="e1", address="10.22.0.5/16")
ipam = json.dumps({"cniVersion": "1.1.0", "name": "net", "type": "rancher-bridge", "ipam": {
    "type": "rancher-ipam", "ranges": [[{"subnet": "10.23.0.0/16"}]], "dataDir": sys.argv[1]}}).encode()


def ipam_plugin(command):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c9", "CNI_IFNAME": "eth0", "CNI_NETNS": "/proc/self/ns/net",
           "CNI_PATH": "/nonexistent"}
    out, code, _ = skel.dispatch(load("rancher-ipam"), env, ipam)
    assert code == 0, out


steps = {
    "network": lambda: state.save(Network(id="n2")),
    "endpoint created": lambda: state.save(ep, synced=True),
    "endpoint updated": lambda: [state.save(ep) for ep.src_name in ("a", "b", "c")],
    "endpoint forgotten": lambda: state.forget(ep),
    "address of an attachment": lambda: store.run(lambda txn: txn.add(allocation), synced=False),
    "address released": lambda: store.run(lambda txn: txn.remove(allocation)),
    "rancher-ipam ADD": lambda: ipam_plugin("ADD"),
    "rancher-ipam DEL": lambda: ipam_plugin("DEL"),
}
*before, measured = sys.argv[2:]
for name in before:
    steps[name]()
os.chdir(os.path.join(sys.argv[1], "begin"))
steps[measured]()
os.chdir(os.path.join(sys.argv[1], "end"))
"""


def _sqlite_syncs(tmp_path, *steps: str) -> int:
    """How many fsync/fdatasync calls the child's last step made."""
    assert shutil.which("strace"), "strace is missing: `make deps` installs it"
    for marker in ("begin", "end"):
        (tmp_path / marker).mkdir(exist_ok=True)
    log = tmp_path / "strace.log"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run(["strace", "-f", "-qq", "-o", str(log), "-e", "trace=fsync,fdatasync,chdir",
                    sys.executable, "-c", _SQLITE_CHILD, str(tmp_path), *steps], check=True, cwd=root, timeout=60)
    calls = re.findall(r"\b(fsync|fdatasync|chdir)\((.*?)\)", log.read_text())
    marks = [i for i, (call, _) in enumerate(calls) if call == "chdir"]
    assert len(marks) == 2, calls
    return sum(1 for call, _ in calls[marks[0]:marks[1]] if call != "chdir")


@pytest.mark.parametrize("steps", [["network"], ["endpoint created"], ["endpoint created", "endpoint forgotten"],
                                   ["address of an attachment", "address released"],
                                   ["rancher-ipam ADD", "rancher-ipam DEL"]], ids=lambda s: s[-1])
def test_what_docker_holds_and_every_removal_is_synced_at_its_commit(tmp_path, steps):
    assert _sqlite_syncs(tmp_path, *steps) >= 1


@pytest.mark.parametrize("steps", [["endpoint created", "endpoint updated"], ["address of an attachment"],
                                   ["rancher-ipam ADD"]], ids=lambda s: s[-1])
def test_what_only_records_an_attachment_is_committed_without_a_sync(tmp_path, steps):
    """A power loss may roll these back; it takes the attachment with them
    (cni_backend/sqlite_file.py)."""
    assert _sqlite_syncs(tmp_path, *steps) == 0


def test_an_unsynced_commit_leaves_its_connection_syncing_again(tmp_path, connections, monkeypatch):
    monkeypatch.setattr(store_module, "_idle", {})
    monkeypatch.setattr(store_module, "_keep_open", True)  # as in a worker: its connections are kept and reused
    state = State(str(tmp_path))
    ep = Endpoint(network_id="n1", endpoint_id="e1")
    state.save(ep)
    state.save(Network(id="n1"))
    assert state.endpoint("n1", "e1") == ep
    store = SQLiteStore(str(tmp_path))
    store.run(lambda txn: txn.add(Allocation("10.22.0.0/16", "10.22.0.5", "net", "c1", "eth0")), synced=False)
    state._connections.close_idle()
    for idle in store_module._idle.values():
        idle.close_idle()
    assert len(connections) >= 2 and set(connections) == {(FULL, "wal")}, connections


def test_an_endpoint_is_synced_when_created_and_not_when_joined(shim):  # noqa: F811 - the fixture's value
    """CreateEndpoint's record is on disk before the ADD allocates for it, so
    that after a power loss Docker's cleanup finds it and its DEL releases
    what the CNI side holds; the Join's and the ports' saves are not."""
    saves, save = [], shim.services.state.save

    def watched(record, synced=None):
        saves.append((record.KIND, record.SYNCED if synced is None else synced))
        return save(record, synced)
    shim.monkeypatch.setattr(shim.services.state, "save", watched)
    endpoint = "7" * 64
    shim.ok("/NetworkDriver.CreateEndpoint", {"NetworkID": NET, "EndpointID": endpoint,
                                              "Interface": {"Address": "10.60.0.5/24"}})  # the fake ADD's
    assert saves == [("endpoint", True)]
    shim.ok("/NetworkDriver.Join", {"NetworkID": NET, "EndpointID": endpoint, "SandboxKey": "/x", "Options": {}})
    shim.ok("/NetworkDriver.ProgramExternalConnectivity", {"NetworkID": NET, "EndpointID": endpoint, "Options": {
        "com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostPort": 8090}]}})
    assert len(saves) > 2 and set(saves[1:]) == {("endpoint", False)}, saves
