"""rancher-portmap chained after rancher-bridge, driven by `cnm-shim cni`."""

import json
import subprocess
import sys

import pytest

from tests.conftest import run
from tests.rigs import http_get, wait_for_http

pytestmark = pytest.mark.netns


def test_published_port_reaches_a_namespace_and_disappears_on_del(cni_daemon_env, make_netns, tmp_path):
    env = cni_daemon_env
    config = env.bridge_config(subnet="10.128.0.0/24")
    plugin = {k: v for k, v in config.items() if k not in ("cniVersion", "name")}
    conf = {"cniVersion": "1.0.0", "name": config["name"],
            "plugins": [plugin, {"type": "rancher-portmap", "capabilities": {"portMappings": True}}]}
    (env.conf_dir / "10-ports.conflist").write_text(json.dumps(conf))
    netns = make_netns()
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello-from-netns\n")
    ports = json.dumps({"portMappings": [{"hostPort": 18181, "containerPort": 80, "protocol": "tcp"}]})
    base = [sys.executable, "-m", "cnm_shim.cli", "cni", "--conf-dir", str(env.conf_dir), "--cache-dir",
            str(env.cache), "--cni-path", str(env.bin)]
    subprocess.run(base[:4] + ["add", config["name"], netns] + base[4:] + ["--cap-args", ports],
                   check=True, capture_output=True, env=env.env)
    server = subprocess.Popen(["ip", "netns", "exec", netns, "busybox", "httpd", "-f", "-p", "80", "-h", str(www)])
    try:
        assert wait_for_http("http://127.0.0.1:18181/") == "hello-from-netns\n"
        assert "RANCHER-CNI-HOSTPORT" in run("iptables-save", "-t", "nat").stdout
    finally:
        server.kill()
        server.wait()
    subprocess.run(base[:4] + ["del", config["name"], netns] + base[4:], check=True, capture_output=True, env=env.env)
    assert "RANCHER-CNI" not in run("iptables-save").stdout
    with pytest.raises(OSError):
        http_get("http://127.0.0.1:18181/")
