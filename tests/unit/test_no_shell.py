"""Nothing the plug-in runs goes through a shell: every subprocess gets an
argument list (user strings stay single arguments), no shell=True, no
os.system/os.popen. Read from the source's syntax tree."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SOURCES = sorted(p for package in ("cnm_shim", "cni_backend") for p in (ROOT / package).rglob("*.py"))
SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output", "getoutput", "getstatusoutput"}


def _offences(tree) -> list:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        if owner == "os" and name in ("system", "popen") or name in ("getoutput", "getstatusoutput"):
            found.append((node.lineno, f"{owner}.{name}"))
        if owner == "subprocess" and name in SUBPROCESS_CALLS:
            if any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                   for k in node.keywords):
                found.append((node.lineno, "shell="))
            if node.args and isinstance(node.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp)):
                found.append((node.lineno, "a command string"))
    return found


def test_the_scan_finds_a_shell_when_there_is_one():
    bad = ast.parse("import os, subprocess\nsubprocess.run('ip ' + x, shell=True)\nos.system(f'ip {x}')\n")
    assert [what for _, what in _offences(bad)] == ["shell=", "a command string", "os.system"]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_shell_with_user_strings(path):
    assert _offences(ast.parse(path.read_text())) == []
