"""The one flock helper (cni_backend/locks.py)."""

import os

import pytest

from cni_backend import locks
from tests.conftest import is_locked


def test_the_lock_makes_its_folder_and_is_held_only_inside_the_block(tmp_path):
    path = tmp_path / "run" / "firewall.lock"
    with locks.held(str(path)):
        assert is_locked(path)
    assert not is_locked(path)


def test_the_lock_is_released_when_the_block_raises(tmp_path):
    path = tmp_path / "x.lock"
    with pytest.raises(RuntimeError):
        with locks.held(str(path)):
            raise RuntimeError("boom")
    assert not is_locked(path)


def test_a_held_lock_times_out_with_its_path(tmp_path):
    path = str(tmp_path / "x.lock")
    with locks.held(path):
        with pytest.raises(TimeoutError, match="x.lock stayed locked"):
            with locks.held(path, timeout=0.05):
                pass
    with locks.held(path, timeout=0.05):  # free again
        pass


def test_the_lock_file_gets_the_mode_asked_for(tmp_path):
    path = tmp_path / "db.lock"
    with locks.held(str(path), mode=0o600):
        pass
    assert (path.stat().st_mode & 0o777) == 0o600


def test_discard_removes_the_file_and_releases_the_lock(tmp_path):
    path = tmp_path / "flat-rf-x.lock"
    with locks.held(str(path)) as lock:
        assert is_locked(path)
        lock.discard()
        assert not path.exists()
    assert not path.exists()  # leaving the block does not make it again
    with locks.held(str(path), timeout=0.05):  # and the lock can be taken anew
        assert is_locked(path)


def _contend(path: str, marker: str, counter: str, rounds: int, discard_every: int, failures) -> None:
    """One process: `rounds` critical sections; inside, it must be alone (the
    marker is made exclusively) and its read-modify-write of the counter must
    not be lost; every `discard_every`-th round ends by removing the lock."""
    try:
        for i in range(rounds):
            with locks.held(path) as lock:
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    failures.put(f"pid {os.getpid()}: two holders at once")
                    return
                with open(counter) as f:
                    value = int(f.read())
                os.sched_yield()
                with open(counter, "w") as f:
                    f.write(str(value + 1))
                os.unlink(marker)
                if i % discard_every == 0:
                    lock.discard()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        failures.put(repr(exc))


def test_processes_discarding_the_lock_never_hold_it_two_at_a_time(tmp_path):
    """Several processes take one lock, and some remove its file as they
    leave while others wait on the file just removed: the waiters must lock
    the new file, not the removed one, so the critical sections never overlap
    and no counter update is lost."""
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    path, marker, counter = (str(tmp_path / n) for n in ("vxlan-42.lock", "inside", "counter"))
    (tmp_path / "counter").write_text("0")
    failures = ctx.Queue()
    workers, rounds = 4, 300
    procs = [ctx.Process(target=_contend, args=(path, marker, counter, rounds, 3 + n, failures))
             for n in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    found = []
    while not failures.empty():
        found.append(failures.get())
    assert found == []
    assert all(p.exitcode == 0 for p in procs)
    assert int((tmp_path / "counter").read_text()) == workers * rounds
