"""The two doors from the Docker side into the CNI side (issue 14): the
runtime-side caller (cni_backend.runtime) and the host-network façade
(cni_backend.hostnet). The modules that translate CNM into CNI and check the
result import nothing else of cni_backend, at any depth of the file (a
function-level import counts too)."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOORS = {"cni_backend.runtime", "cni_backend.hostnet"}
THROUGH_THE_DOORS = ["cnm_shim/translate.py", "cnm_shim/doctor.py", "cnm_shim/ipam_driver.py",
                     "cnm_shim/docker_sync.py"] + sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "cnm_shim" / "backends").glob("*.py"))


def cni_imports(path: pathlib.Path) -> set:
    """Every cni_backend module `path` imports, as a dotted name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "cni_backend"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] == "cni_backend":
            if node.module == "cni_backend":  # from cni_backend import X: X is a module
                found |= {f"cni_backend.{alias.name}" for alias in node.names}
            else:  # from cni_backend.X import Y: the module is X (Y a name in it, or a submodule of X)
                found.add(node.module)
    return found


def test_the_checker_sees_every_form_of_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import cni_backend.net.netlink\nfrom cni_backend import staging, runtime\n"
                      "from cni_backend.invoke.api import CNI\nfrom . import backends\n"
                      "def f():\n    from cni_backend.plugins import bridge\n")
    assert cni_imports(sample) == {"cni_backend.net.netlink", "cni_backend.staging", "cni_backend.runtime",
                                   "cni_backend.invoke.api", "cni_backend.plugins"}


@pytest.mark.parametrize("name", THROUGH_THE_DOORS)
def test_the_docker_side_reaches_the_cni_side_only_through_the_two_doors(name):
    others = cni_imports(ROOT / name) - DOORS
    assert not others, f"{name} imports {sorted(others)}; go through cni_backend.runtime or cni_backend.hostnet"


def test_translate_and_doctor_use_both_doors():
    for name in ("cnm_shim/translate.py", "cnm_shim/doctor.py"):
        assert cni_imports(ROOT / name) == DOORS, name


# -- the host-network façade picks a network's host side by its plug-in type ----------

@pytest.mark.parametrize("name,kind,ports", [("bridge", "Bridge", []), ("flat", "Flat", ["eth9"]),
                                             ("vxlan", "Vxlan", ["vtep1042"])])
def test_the_host_side_is_the_one_of_the_conflists_plug_in_type(name, kind, ports):
    from cni_backend import hostnet
    from cnm_shim import backends, render
    from tests.unit.test_backends import IPAM, parsed_defaults
    entry = backends.get(name)
    conf = render.conflist("rancher-test", entry.render("rx-test", parsed_defaults(entry), IPAM))
    host = hostnet.network_of(conf)
    assert (type(host).__name__, host.bridge, host.ports()) == (kind, "rx-test", ports)


def test_a_plug_in_type_without_a_host_side_is_refused_naming_the_known_ones():
    from cni_backend import errors, hostnet
    with pytest.raises(errors.CNIError, match="plug-in 'rancher-portmap' has no host-side network; known: "
                                              "rancher-bridge, rancher-flat, rancher-vxlan") as raised:
        hostnet.network_of({"plugins": [{"type": "rancher-portmap"}]})
    assert raised.value.code == errors.INVALID_CONFIG
