"""`cnm-shim compare` on a private Docker engine and shim (the engine test
layer's harness), for one or more backends; used by `make compare`.

    tests/sandbox.sh .venv/bin/python bench/compare_rig.py [--backends bridge,flat,vxlan] [-n 10] [--out DIR]

Each backend's report goes to DIR/BACKEND/. Run it in tests/sandbox.sh when
other Docker engines or a rancher-bridge plug-in run on the machine: the shim
takes /run/docker/plugins/rancher-*.sock.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.isolation import bench_main_guard  # noqa: E402
from tests.engine.conftest import Shim  # noqa: E402
from tests.engine.dockerd import Dockerd  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="bridge,flat,vxlan")
    parser.add_argument("-n", "--containers", type=int, default=10)
    parser.add_argument("--out", default="compare-reports")
    parser.add_argument("--iperf-seconds", type=int, default=3)
    opts = parser.parse_args()
    bench_main_guard(__file__)  # before anything is made
    root = Path(tempfile.mkdtemp(prefix="rcmp-rig."))
    shim = Shim(root)
    dockerd = None
    failed = 0
    try:
        dockerd = Dockerd()
        for backend in filter(None, opts.backends.split(",")):
            argv = [sys.executable, "-m", "cnm_shim.cli", "--log-level", "WARNING", "compare", "--backend", backend,
                    "-n", str(opts.containers), "--docker-host", f"unix://{dockerd.socket}",
                    "--cni-socket", shim.cni_socket, "--cni-path", str(shim.bin),
                    "--cni-conf-dir", str(shim.export_dir), "--iperf-seconds", str(opts.iperf_seconds),
                    "--out", os.path.join(opts.out, backend)]
            print("$ cnm-shim " + " ".join(argv[argv.index("compare"):]), flush=True)
            failed |= subprocess.run(argv).returncode
    finally:
        if dockerd:
            dockerd.close()
        shim.stop()
        shutil.rmtree(root, ignore_errors=True)
    return failed


if __name__ == "__main__":
    sys.exit(main())
