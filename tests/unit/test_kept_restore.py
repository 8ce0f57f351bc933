"""Which scripts a kept iptables-restore takes (cni_backend/net/kept_restore.py):
only those whose every table commits something, each table one commit the
kernel will say it made. The process itself: tests/netns/test_kept_restore.py."""

import pytest

from cni_backend.net import kept_restore


@pytest.mark.parametrize("script,commits", [
    ("*filter\n-A X -j ACCEPT\nCOMMIT\n", 1),
    ("*filter\n:X - [0:0]\n-A FORWARD -j X\nCOMMIT\n*nat\n-I POSTROUTING 1 -j RETURN\nCOMMIT\n", 2),
    ("# made by us\n*filter\n-D X -j ACCEPT\n-F X\n-X X\nCOMMIT\n\n", 1),
    ("*raw\n-N Y\nCOMMIT\n*mangle\n-R Y 1 -j RETURN\nCOMMIT", 2),
    # a table that may change nothing: its commit would send no notification
    ("*filter\n:X - [0:0]\nCOMMIT\n", 0),
    ("*filter\n-F X\nCOMMIT\n", 0),
    ("*filter\n-A X -j ACCEPT\nCOMMIT\n*nat\n-Z\nCOMMIT\n", 0),
    # not a whole script
    ("*filter\n-A X -j ACCEPT\n", 0),
    ("-A X -j ACCEPT\nCOMMIT\n", 0),
    ("*filter\n*nat\n-A X -j ACCEPT\nCOMMIT\n", 0),
    ("", 0),
    (None, 0),
])
def test_a_script_is_taken_only_when_every_table_commits(script, commits):
    assert kept_restore._commits(script) == commits


def test_nothing_is_served_before_it_is_enabled(monkeypatch):
    monkeypatch.setattr(kept_restore, "_home", None)  # as in a process that never enabled it
    script = "*filter\n-A X -j ACCEPT\nCOMMIT\n"
    assert not kept_restore.serves(["iptables-restore", "-w", "--noflush"], script)
    assert kept_restore.run(["iptables-restore", "-w", "--noflush"], script) is None
