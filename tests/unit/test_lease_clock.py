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


@pytest.mark.parametrize("text", ["0", "1", "-5", "x", "1e3", "3601", ""])
def test_a_lease_ttl_out_of_range_is_refused_saying_what_is_valid(text):
    import argparse
    from cnm_shim.cli import lease_ttl
    with pytest.raises(argparse.ArgumentTypeError, match="whole seconds from 2 to 3600"):
        lease_ttl(text)


def test_the_lease_ttl_defaults_to_10_and_is_taken_from_the_environment(monkeypatch):
    from cnm_shim import cli
    for command in ("vxlan-agent", "ipsec-registry"):
        monkeypatch.delenv("RANCHER_LEASE_TTL", raising=False)
        assert cli.build_parser().parse_args([command]).ttl == 10
        monkeypatch.setenv("RANCHER_LEASE_TTL", "30")
        assert cli.build_parser().parse_args([command]).ttl == 30
        assert cli.build_parser().parse_args([command, "--ttl", "4"]).ttl == 4
