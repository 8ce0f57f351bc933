"""The systemd units in packaging/systemd pass `systemd-analyze verify`: keys,
values, ordering dependencies and that every Exec command exists. The units
name the installed venv (/opt/rancher-cni); here they point at the test venv's
own `cnm-shim`, the same program."""

import os
import shutil
import subprocess
import sys

import pytest

UNITS = os.path.join(os.path.dirname(__file__), "..", "..", "packaging", "systemd")
INSTALLED = "/opt/rancher-cni/venv/bin/cnm-shim"


@pytest.mark.parametrize("unit,instance", [("rancher-cnm.service", "rancher-cnm.service"),
                                           ("rancher-vxlan-agent@.service", "rancher-vxlan-agent@1042.service")])
def test_unit_passes_systemd_analyze_verify(tmp_path, unit, instance):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: make deps installs the systemd package"
    text = open(os.path.join(UNITS, unit)).read()
    assert INSTALLED in text
    (tmp_path / unit).write_text(text.replace(INSTALLED, os.path.join(os.path.dirname(sys.executable), "cnm-shim")))
    done = subprocess.run([analyze, "verify", "--man=no", instance], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr


def test_verify_catches_a_broken_unit(tmp_path):
    """The check above can fail: a unit whose program does not exist is refused."""
    text = open(os.path.join(UNITS, "rancher-cnm.service")).read()
    (tmp_path / "rancher-cnm.service").write_text(text.replace(INSTALLED, "/nonexistent/cnm-shim"))
    done = subprocess.run([shutil.which("systemd-analyze"), "verify", "--man=no", "rancher-cnm.service"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "/nonexistent/cnm-shim" in done.stderr
