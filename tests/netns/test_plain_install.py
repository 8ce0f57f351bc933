"""Every `cnm-shim` command on the install the README makes: `make run`
installs the project into a fresh venv with `pip install .` and no extras
(Makefile, $(VENV)/.installed). This test makes such a venv (from the
wheelhouse packaging/prefetch.sh fills, since the sandbox has no network),
runs every subcommand's --help and each read-only subcommand in it: none may
end in a traceback, and `compare`, whose chart library is an extra, still
writes its reports. Root and the sandbox: `version` probes the kernel and
`doctor` reads the host."""

import json
import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.netns

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WHEELS = os.path.join(os.environ.get("ROOTFS_CACHE", "/var/cache/rancher-cni"), "wheels")


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    if not os.path.isdir(WHEELS):
        pytest.skip(f"no wheelhouse at {WHEELS}: run packaging/prefetch.sh (make prefetch) first")
    root = tmp_path_factory.mktemp("plain")
    source = root / "src"  # a copy: pip builds in the tree it is given
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(PROJECT, name), source / name)
    for package in ("cnm_shim", "cni_backend"):
        shutil.copytree(os.path.join(PROJECT, package), source / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    venv = root / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin/pip"), "install", "-q", "--no-index", "--find-links", WHEELS, str(source)],
                   check=True, timeout=600)
    return venv


# no PYTHONPATH, and a working folder outside the source tree: the venv's own
# copy must be what runs
CLEAN = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def shim(venv, *argv) -> subprocess.CompletedProcess:
    done = subprocess.run([str(venv / "bin/cnm-shim"), *argv], capture_output=True, text=True, timeout=120,
                          cwd=str(venv), env=CLEAN, stdin=subprocess.DEVNULL)
    assert "Traceback" not in done.stderr, (argv, done.stderr[-3000:])
    return done


def subcommands(venv) -> list:
    usage = shim(venv, "--help").stdout
    choices = usage[usage.index("{") + 1:usage.index("}")]
    return choices.split(",")


def test_the_plain_install_has_no_extras(plain):
    found = subprocess.run([str(plain / "bin/python"), "-c", "import importlib.util as u; "
                            "print(u.find_spec('matplotlib') is None)"],
                           capture_output=True, text=True, cwd=str(plain), env=CLEAN)
    assert found.stdout.strip() == "True"


def test_every_subcommand_has_help(plain):
    names = subcommands(plain)
    assert {"serve", "status", "options", "version", "compare", "doctor"} <= set(names)
    for name in names:
        done = shim(plain, name, "--help")
        assert done.returncode == 0 and done.stdout.startswith("usage: cnm-shim " + name), (name, done.stderr)


def test_read_only_subcommands_work(plain, tmp_path):
    for argv in (["options"], ["options", "ipsec"], ["options", "bridge", "--json"]):
        done = shim(plain, *argv)
        assert done.returncode == 0 and done.stdout, (argv, done.stderr)
    assert json.loads(shim(plain, "options", "flat", "--json").stdout)["backend"] == "flat"

    found = json.loads(shim(plain, "version", "--json").stdout)
    assert found["optional_packages"]["matplotlib"]["present"] is False
    assert found["kernel_features"] is not None  # root: probed
    text = shim(plain, "version").stdout
    assert "matplotlib: absent (pip install 'rancher-cnm-cni[compare]')" in text

    state = tmp_path / "state"
    status = json.loads(shim(plain, "status", "--json", "--state-dir", str(state)).stdout)
    assert status["networks"] == [] and "features" in status["host"]
    assert shim(plain, "status", "--state-dir", str(state)).returncode == 0

    doctor = shim(plain, "doctor", "--json", "--state-dir", str(state), "--ipam-data-dir", str(tmp_path / "ipam"),
                  "--run-dir", str(tmp_path / "run"), "--docker-host", "")
    assert doctor.returncode in (0, 1) and json.loads(doctor.stdout) is not None, doctor.stderr


def test_compare_without_a_daemon_says_so_in_one_line(plain, tmp_path):
    done = shim(plain, "compare", "--cni-socket", str(tmp_path / "none.sock"), "--out", str(tmp_path / "r"))
    assert done.returncode != 0 and "no CNI daemon" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_compares_report_is_written_without_the_chart_library(plain, tmp_path):
    """What `compare` does after measuring, on the plain install: report.md
    and report.json, no chart.png, and a one-line note saying how to get it."""
    figures = tmp_path / "figures.json"
    from tests.unit.test_compare_report import FIGURES
    figures.write_text(json.dumps(FIGURES))
    script = ("import json, sys; from cnm_shim.compare import report; assert \"site-packages\" in report.__file__; "
              "written = report.write(json.load(open(sys.argv[1])), sys.argv[2]); "
              "print(sorted(written)); print(report.NO_CHART if 'chart.png' not in written else '')")
    done = subprocess.run([str(plain / "bin/python"), "-c", script, str(figures), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60, cwd=str(tmp_path), env=CLEAN)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "['report.json', 'report.md']"
    assert "matplotlib is not installed" in done.stdout
    assert sorted(os.listdir(tmp_path / "out")) == ["report.json", "report.md"]
