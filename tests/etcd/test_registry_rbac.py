"""etcd's RBAC as docs/multi-host.md sets it up: each host's etcd user may
write only its own prefix of the VXLAN registry (and the shared IPAM keys),
over TLS with client certificates (issue 15, item 5)."""

import ipaddress
import subprocess

import pytest
import requests

from cni_backend import vxlan_registry as registry
from cni_backend.errors import CNIError
from cni_backend.ipam.etcd_store import EtcdStore, client_for
from tests.etcd.test_etcd_store import _make_certificates, alloc, conf
from tests.etcd_cluster import EtcdCluster

pytestmark = pytest.mark.etcd

A, B = "10.99.0.1", "10.99.0.2"
HOSTS = "/rancher-cni/vxlan/hosts/"
IPSEC_HOSTS, IPSEC_KEYS = "/rancher-cni/ipsec/hosts/", "/rancher-cni/ipsec/keys/"
SUBNETS = [registry.Subnet(ipaddress.ip_network("10.42.0.0/16"), ipaddress.ip_address("10.42.0.1"))]


def _end(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _client_certificate(directory) -> tuple:
    """Signed by the test CA with an empty CommonName: the JSON gateway refuses
    any other once auth is on."""
    def openssl(*argv):
        subprocess.run(["openssl", *argv], check=True, capture_output=True, cwd=directory)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "host.key", "-out", "host.csr", "-subj", "/O=rcnit-host")
    (directory / "host.cnf").write_text("extendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", "host.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "host.pem", "-days", "1", "-extfile", "host.cnf")
    return str(directory / "host.pem"), str(directory / "host.key")


def _set_up_rbac(endpoint: str, tls: dict, passwords: dict) -> None:
    """What the etcdctl commands of docs/multi-host.md do, through the same
    JSON API (Debian's etcd-server ships no etcdctl)."""
    from etcd3gw.utils import _encode
    session = requests.Session()
    session.trust_env, session.verify, session.cert = False, tls["ca"], (tls["cert"], tls["key"])

    def call(path, body):
        reply = session.post(f"{endpoint}/v3/auth/{path}", json=body, timeout=10)
        assert reply.status_code == 200, (path, reply.text)

    def grant(role, permission, prefix):
        call("role/grant", {"name": role, "perm": {"permType": permission, "key": _encode(prefix),
                                                   "range_end": _encode(_end(prefix))}})
    call("user/add", {"name": "root", "password": passwords["root"]})
    call("user/grant", {"user": "root", "role": "root"})
    for host in (A, B):
        role = f"rancher-host-{host}"
        call("role/add", {"name": role})
        grant(role, "READWRITE", f"{HOSTS}{host}/")
        grant(role, "READ", HOSTS)
        for shared in ("pools/", "owners/", "cursors/"):
            grant(role, "READWRITE", f"/rancher-cni/{shared}")
        # rancher-ipsec: its own host entries; the keys made by A alone, read by all
        grant(role, "READWRITE", f"{IPSEC_HOSTS}{host}/")
        grant(role, "READ", IPSEC_HOSTS)
        grant(role, "READWRITE" if host == A else "READ", IPSEC_KEYS)
        call("user/add", {"name": role, "password": passwords[host]})
        call("user/grant", {"user": role, "role": role})
    call("enable", {})


@pytest.fixture
def secured(tmp_path):
    if subprocess.run(["which", "openssl"], capture_output=True).returncode:
        pytest.skip("openssl is not installed")
    server = _make_certificates(tmp_path)
    cert, key = _client_certificate(tmp_path)
    try:
        cluster = EtcdCluster(tls=server)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    passwords = {"root": "root-secret", A: "a-secret", B: "b-secret"}
    client_tls = {"ca": server["ca"], "cert": cert, "key": key}
    try:
        _set_up_rbac(cluster.endpoints[0], client_tls, passwords)
        settings = {}
        for host in (A, B):
            (tmp_path / f"{host}.password").write_text(passwords[host] + "\n")
            settings[host] = dict(client_tls, user=f"rancher-host-{host}", password_file=str(tmp_path / f"{host}.password"))
        yield cluster, settings, server
    finally:
        cluster.close()


def test_a_hosts_etcd_user_writes_its_own_registry_keys_and_no_other_hosts(secured, tmp_path, agents):
    cluster, settings, _ = secured
    endpoint = cluster.endpoints[0]
    for n, host in enumerate((A, B)):
        state = tmp_path / f"state-{n}"
        registry.record_endpoint(str(state), 1042, "c-eth0", [f"10.42.{n + 1}.2/16"], f"02:42:0a:2a:0{n + 1}:02")
        agents[host] = registry.Agent(lambda host=host: client_for(endpoint, settings[host]), "/rancher-cni", 1042,
                                      host, str(state), ttl=5)
        agents[host].register()
    # each host sees the other's container: reading every host's prefix is allowed
    seen = agents[A].view(SUBNETS)
    assert seen.bad == {} and seen.vteps == {B} and seen.endpoints["10.42.2.2"].vtep == B
    # writing under the other host's prefix is not
    from etcd3gw.exceptions import Etcd3Exception
    as_a = client_for(endpoint, settings[A])
    for key in (f"{HOSTS}{B}/1042/endpoints/10.42.2.2", f"{HOSTS}{B}/1042/vtep", f"{HOSTS}{B}x/1042/vtep",
                "/rancher-cni/vxlan/1042/endpoints/10.42.2.2"):
        with pytest.raises(Etcd3Exception) as refused:
            as_a.put(key, '{"ip": "10.42.2.2", "mac": "02:00:00:00:00:66", "vtep": "10.99.0.1"}')
        assert "permission denied" in refused.value.detail_text
    with pytest.raises(Etcd3Exception) as refused:
        as_a.delete(f"{HOSTS}{B}/1042/vtep")
    assert "permission denied" in refused.value.detail_text
    assert agents[A].view(SUBNETS).endpoints["10.42.2.2"].mac == "02:42:0a:2a:02:02"
    # the shared IPAM keys stay writable by every host
    assert alloc(EtcdStore([endpoint], "/rancher-cni", settings[A]), conf(), ("n", "c1", "eth0"))[0].ip == "10.60.0.2"


def test_the_ipsec_key_is_made_by_its_creator_read_by_the_others_and_each_host_writes_its_own_entry(
        secured, tmp_path, agents):
    from cni_backend import ipsec_registry
    from tests.etcd.test_ipsec_registry import SUBNET, _record
    from etcd3gw.exceptions import Etcd3Exception
    cluster, settings, _ = secured
    endpoint = cluster.endpoints[0]
    as_host = {h: ipsec_registry.EtcdSettings((endpoint,), "/rancher-cni", tuple(sorted(settings[h].items())))
               for h in (A, B)}
    paths = {h: tmp_path / f"{h}.psk" for h in (A, B)}
    with pytest.raises(CNIError, match="permission denied") as refused:  # no key yet, and B may not make one
        ipsec_registry.fetch_key(as_host[B], SUBNET, str(paths[B]))
    assert "etcdctl put" in refused.value.details and not paths[B].exists()
    ipsec_registry.fetch_key(as_host[A], SUBNET, str(paths[A]))
    ipsec_registry.fetch_key(as_host[B], SUBNET, str(paths[B]))  # read-only, and the key is there
    assert paths[A].read_bytes() == paths[B].read_bytes()
    key = as_host[A].key(SUBNET)
    with pytest.raises(Etcd3Exception) as denied:
        client_for(endpoint, settings[B]).put(key, "A" * 43 + "=")
    assert "permission denied" in denied.value.detail_text
    records = {}
    for n, host in enumerate((A, B)):
        records[host] = _record(tmp_path / host, "secure", host, f"10.42.{n + 1}.0/24")
        agents[host] = ipsec_registry.Agent(lambda host=host: client_for(endpoint, settings[host]), "/rancher-cni",
                                            str(tmp_path / host), ttl=5)
        agents[host].client = agents[host].connect()
        agents[host].register([records[host]])
    assert agents[A].peers([records[A]]) == {"secure": [B]} and agents[B].peers([records[B]]) == {"secure": [A]}
    for target in (f"{IPSEC_HOSTS}{B}/10.42.0.0%2F16", f"{IPSEC_HOSTS}{B}x/10.42.0.0%2F16"):
        with pytest.raises(Etcd3Exception) as denied:
            agents[A].client.put(target, '{"underlay": "10.99.0.2", "block": "10.42.9.0/24"}')
        assert "permission denied" in denied.value.detail_text


def test_a_wrong_password_or_a_certificate_with_a_common_name_is_a_clear_error(secured, tmp_path):
    cluster, settings, server = secured
    (tmp_path / "wrong").write_text("not-it")
    with pytest.raises(CNIError, match="etcd refused user 'rancher-host-10.99.0.1'") as refused:
        client_for(cluster.endpoints[0], dict(settings[A], password_file=str(tmp_path / "wrong")))
    assert "authentication failed" in refused.value.msg
    with pytest.raises(CNIError, match="CommonName") as refused:
        client_for(cluster.endpoints[0], dict(settings[A], cert=server["cert"], key=server["key"]))  # CN=node
    with pytest.raises(CNIError, match="password file .* cannot be read"):
        client_for(cluster.endpoints[0], dict(settings[A], password_file=str(tmp_path / "missing")))
