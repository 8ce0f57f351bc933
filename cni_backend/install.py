"""Writing the CNI executables into a plug-in directory such as /opt/cni/bin.

Each is a three-line script run by this interpreter with -I -S: no site
initialisation, so it starts in ~10 ms instead of ~25 ms, with the package's
own directory and site-packages put on sys.path explicitly."""

import os
import stat
import sys
import sysconfig

import cni_backend
from . import files
from .plugins import PLUGINS

TEMPLATE = """#!{python} -IS
import sys; sys.path[:0] = {paths!r}
from cni_backend.front import main; sys.exit(main({plugin!r}))
"""


def write_executables(directory: str, python: str = sys.executable) -> list:
    os.makedirs(directory, mode=0o755, exist_ok=True)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(cni_backend.__file__)))
    paths = list(dict.fromkeys([package_parent, sysconfig.get_paths()["purelib"]]))
    written = []
    for plugin in PLUGINS:
        path = os.path.join(directory, plugin)
        # never a half-written executable for a runtime to run
        files.write_atomic(path, TEMPLATE.format(python=python, paths=paths, plugin=plugin),
                           stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        written.append(path)
    return written
