"""No timer of the agents' leases, renewals or resyncs reads the wall clock
(issue 20): a clock set forward or back must change nothing. The behaviour
under a shifted clock is tested in tests/netns/test_vxlan_lease.py; this
checks the source, so a wall-clock read added anywhere in these modules is
caught even where no test drives it."""

import ast
import pathlib

import pytest

import cni_backend

MODULES = ["etcd_lease.py", "vxlan_registry.py", "ipsec_registry.py"]
WALL = {("time", "time"), ("time", "time_ns"), ("time", "ctime"), ("time", "localtime"), ("time", "gmtime"),
        ("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today"), ("date", "today")}


@pytest.mark.parametrize("module", MODULES)
def test_no_wall_clock_is_read(module):
    tree = ast.parse((pathlib.Path(cni_backend.__file__).parent / module).read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and (node.value.id, node.attr) in WALL:
            found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
        if isinstance(node, ast.ImportFrom) and node.module in ("time", "datetime"):
            found += [f"line {node.lineno}: from {node.module} import {a.name}" for a in node.names
                      if (node.module, a.name) in WALL or a.name in ("datetime", "date")]
    assert not found, f"{module} reads the wall clock: {found}; use time.monotonic()"
    assert "time.monotonic()" in (pathlib.Path(cni_backend.__file__).parent / module).read_text()
