"""The one flock helper (cni_backend/locks.py)."""

import fcntl
import os

import pytest

from cni_backend import locks


def is_locked(path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


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
