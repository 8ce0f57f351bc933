"""explore"""
import os, time
from cni_backend import ipsec_tunnels
from tests.netns.test_ipsec import hosts, ipsec_config, UNDERLAY  # noqa: F401
from tests.conftest import ns_exec


def test_explore(hosts, make_netns, tmp_path):
    (host_a, host_b), envs, psk = hosts
    bad = str(tmp_path / "bad")
    fd = os.open(bad, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"0123456789abcdef0123456789abcdef")
    os.close(fd)
    for n, host in reversed(list(enumerate((host_a, host_b)))):
        c = make_netns()
        code, result = envs[n].exec("ADD", ipsec_config(envs[n], n, psk if n == 0 else bad), c, container_id=f"c{n}", host_netns=host)
        assert code == 0, result
    time.sleep(8)
    for n in range(2):
        ch = ipsec_tunnels.Charon(str(envs[n].state / "ipsec" / "charon"))
        print(n, ch.sas())
        print(open(ch.log_file).read())
    assert 0
