"""One `docker run`'s request ID, followed through our log (issue 19, item 2).

The shim runs with `CNM_SHIM_LOG_FORMAT=json` (what the managed plug-in's env
sets): every line in its log, from the master, gunicorn's error log, the
workers, the plug-ins they run and the CNI daemon it started, is one JSON
object. The shim makes an ID for each of Docker's calls, logs it on the
call's line, and hands it to the CNI calls it makes for it:
- rancher-bridge: our plug-in, run in the worker on a thread of its own right
  after CreateEndpoint's answer (translate.attach_ahead), logs its ADD with
  CreateEndpoint's ID;
- a conflist network whose reference bridge plug-in (a third-party
  executable) calls our rancher-ipam executable for its addresses: the ADD
  runs at Join, and the executable hands the call to the CNI daemon, whose
  worker logs the ADD with the Join's ID, two executions away from the shim.
"""

import json
import os

import pytest

from cni_backend import logfmt
from tests.engine.helpers import container, network
from tests.engine.test_docker_conflist import reference_bridge, write_conflist  # noqa: F401 (a fixture)

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module", autouse=True)
def json_logs():
    """Before the module's engine starts its shim: the shim logs JSON."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(logfmt.FORMAT_ENV, "json")
        yield


def log_entries(shim) -> list:
    """Every line of the shim's log, each parsed: one that is not JSON fails the test."""
    entries = []
    for number, line in enumerate((shim.root / "shim.log").read_text().splitlines(), 1):
        try:
            entries.append(json.loads(line))
        except ValueError:
            pytest.fail(f"line {number} of the shim's log is not a JSON object: {line!r}")
    return entries


def endpoint_of(docker, name: str, net: str) -> str:
    return json.loads(docker("inspect", name).stdout)[0]["NetworkSettings"]["Networks"][net]["EndpointID"]


def call_line(entries: list, endpoint: str, verb: str = "NetworkDriver.Join") -> dict:
    calls = [e for e in entries if e.get("verb") == verb and e.get("endpoint") == endpoint]
    assert len(calls) == 1, f"one {verb} line for endpoint {endpoint}: {calls}"
    call = calls[0]
    assert call["logger"] == "cnm-shim" and call["level"] == "INFO" and call["ok"] is True, call
    assert logfmt.valid_id(call["request_id"]), call
    return call


def test_every_line_is_our_json_and_gunicorn_logs_through_it(docker):
    entries = log_entries(docker.shim)
    assert entries, "the shim logged nothing"
    for entry in entries:
        assert {"time", "level", "logger", "pid", "request_id", "message"} <= set(entry), entry
    assert any(e["logger"] == "gunicorn.error" and "Booting worker" in e["message"] for e in entries), \
        "gunicorn's error log in our format"
    assert not any(e["logger"] == "gunicorn.access" for e in entries), "no access log by default"


def test_a_docker_run_request_id_reaches_the_plugin_run_in_the_worker(docker):
    net = network(docker, "--subnet", "10.151.0.0/24")
    name = container(docker, net)
    entries = log_entries(docker.shim)
    endpoint = endpoint_of(docker, name, net)
    create = call_line(entries, endpoint, "NetworkDriver.CreateEndpoint")
    assert call_line(entries, endpoint)["request_id"] != create["request_id"], "one ID per Docker request"
    same = [e for e in entries if e["request_id"] == create["request_id"]]
    adds = [e for e in same if e["logger"] == "rancher-cni" and e.get("command") == "ADD"]
    assert [(e["plugin"], e["ok"]) for e in adds] == [("rancher-bridge", True)], same
    # our plug-ins run in the worker that took Docker's call, on a thread of their own (invoke/own.py)
    assert adds[0]["pid"] == create["pid"], "the ADD ran in another process than the worker"


def test_a_docker_run_request_id_reaches_the_cni_daemon_worker(docker, reference_bridge, tmp_path):  # noqa: F811
    cni_name = f"rid{os.getpid() % 100000}"
    write_conflist(docker, cni_name, [{"type": "bridge", "bridge": reference_bridge, "isGateway": True,
                                       "isDefaultGateway": True,  # a gateway for Join: no docker_gwbridge
                                       "ipam": {"type": "rancher-ipam", "ranges": [[{"subnet": "10.152.0.0/24"}]],
                                                "dataDir": str(tmp_path / "ipam")}}])
    net = network(docker, "--subnet", "10.152.0.0/24", "-o", f"cni.conflist={cni_name}", driver="rancher-conflist")
    name = container(docker, net)
    entries = log_entries(docker.shim)
    join = call_line(entries, endpoint_of(docker, name, net))
    served = [e for e in entries if e["request_id"] == join["request_id"] and e["logger"] == "rancher-cni"
              and e.get("command") == "ADD"]
    assert [(e["plugin"], e["network"], e["ok"]) for e in served] == [("rancher-ipam", cni_name, True)], served
    listening = [e for e in entries if e["logger"] == "rancher-cni" and "daemon listening" in e["message"]]
    assert listening, "the CNI daemon's own line"
    assert served[0]["pid"] != listening[-1]["pid"] and served[0]["pid"] != join["pid"], \
        "a daemon worker served it, neither the daemon's parent nor the shim's worker"
    docker("rm", "-f", name)
    docker.made["containers"].remove(name)
    entries = log_entries(docker.shim)
    dels = [e for e in entries if e.get("command") == "DEL" and e.get("plugin") == "rancher-ipam"
            and e.get("network") == cni_name]
    detaches = {e["request_id"] for e in entries if e.get("verb") in ("NetworkDriver.Leave",
                                                                         "NetworkDriver.DeleteEndpoint")}
    assert dels and all(e["request_id"] in detaches for e in dels), "the DELs carry the ID of Docker's call"
