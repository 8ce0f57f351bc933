"""CreateEndpoint answers Docker first and runs the endpoint's ADD after
(translate.attach_ahead, api.after_answer) when the interface can be made
right in the host: the Join waits for that ADD and does not repeat it, a
failed one is run again by the Join (whose error Docker gets), and an
endpoint deleted before any Join is torn down after it.

The Flask test client runs the work after the answer when the response is
closed, as gunicorn's worker does once it has written it: a response left
open is an ADD still under way. The CNI caller is test_http_errors's fake."""

import logging
import threading

import pytest

from tests.unit.test_http_errors import FAILED, NET, RESULT, shim  # noqa: F401 - shim is the fixture used below

EP = "4" * 64
ADDRESS = RESULT["ips"][0]["address"]  # what the fake ADD answers, as Docker's IPAM chose it
CREATE = {"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": ADDRESS}}
JOIN = {"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/var/run/docker/netns/4444", "Options": {}}


@pytest.fixture
def handing_over(shim, monkeypatch):  # noqa: F811 - the fixture's value
    """Every plug-in of the network counts as ours (the unit layer has no
    executables to find), and each ADD is recorded: container ID, handover name."""
    monkeypatch.setattr(shim.services.translator, "_hands_over", lambda conf: True)
    adds, add = [], shim.cni.add

    def recording(conf, raw, att, prev_result=None):
        adds.append((att.container_id, dict(att.args).get("RANCHER_HANDOVER_IFNAME")))
        return add(conf, raw, att, prev_result)
    shim.cni.add = recording
    shim.adds = adds
    return shim


def waiting_call(shim, path: str, body: dict) -> tuple:
    """`path` posted on a thread of its own, checked to be still waiting a
    second later: (the thread, the list its (status, answer) goes to)."""
    answers = []
    call = threading.Thread(target=lambda: answers.append(shim.post(path, body)))
    call.start()
    call.join(timeout=1)
    assert call.is_alive() and answers == [], f"{path} went on while the ADD after CreateEndpoint was under way"
    return call, answers


def test_the_add_runs_after_the_answer_and_the_join_waits_for_it_without_repeating_it(handing_over):
    shim = handing_over
    reply = shim.client.post("/NetworkDriver.CreateEndpoint", json=CREATE)
    assert reply.status_code == 200 and shim.adds == []
    join, answers = waiting_call(shim, "/NetworkDriver.Join", JOIN)
    reply.close()
    join.join(timeout=30)
    assert shim.adds == [(EP, "rc" + EP[:12])]  # one ADD, the interface made in the host under Join's name
    status, answer = answers[0]
    assert status == 200 and answer["InterfaceName"]["SrcName"] == "rc" + EP[:12], answer
    ep = shim.services.state.endpoint(NET, EP)
    assert ep.result == RESULT and ep.sandbox_key == JOIN["SandboxKey"]


def test_a_join_that_reads_the_endpoint_just_before_the_add_ahead_ends_does_not_run_it_again(handing_over):
    """The interleaving `make bench` met: the ADD after CreateEndpoint's
    answer ended (its result saved, its lock removed) between the Join's
    read of the endpoint and its look at the lock. The Join ran the ADD
    again, found the interface made already, and Docker's run failed."""
    shim = handing_over
    reply = shim.client.post("/NetworkDriver.CreateEndpoint", json=CREATE)
    translator, read = shim.services.translator, shim.services.translator._endpoint

    def read_then_the_add_ends(request):
        found = read(request)
        reply.close()  # the ADD runs to its end now, right after this read
        return found
    translator._endpoint = read_then_the_add_ends
    status, answer = shim.post("/NetworkDriver.Join", JOIN)
    assert status == 200 and answer["InterfaceName"]["SrcName"] == "rc" + EP[:12], answer
    assert shim.adds == [(EP, "rc" + EP[:12])], "the Join ran the ADD again"
    assert shim.services.state.endpoint(NET, EP).sandbox_key == JOIN["SandboxKey"]


def test_a_failed_add_ahead_is_run_again_by_the_join_whose_error_docker_gets(handing_over, caplog):
    shim = handing_over
    shim.fail("add", FAILED())
    with caplog.at_level(logging.WARNING, logger="cnm-shim"):
        shim.ok("/NetworkDriver.CreateEndpoint", CREATE)
    assert "its Join runs it again" in caplog.text and "exit code 2" in caplog.text
    status, answer = shim.post("/NetworkDriver.Join", JOIN)
    assert status == 400 and "CNI ADD on" in answer["Err"] and "exit code 2" in answer["Err"], answer
    assert [container for container, _ in shim.adds] == [EP, EP]
    assert shim.services.state.endpoint(NET, EP).result is None


def test_an_endpoint_deleted_before_any_join_is_torn_down_after_its_add(handing_over):
    shim = handing_over
    deleted = []
    shim.cni.delete = lambda conf, raw, att: deleted.append(att.container_id)
    reply = shim.client.post("/NetworkDriver.CreateEndpoint", json=CREATE)
    delete, answers = waiting_call(shim, "/NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP})
    reply.close()
    delete.join(timeout=30)
    assert answers == [(200, {})] and shim.adds == [(EP, "rc" + EP[:12])] and deleted == [EP]
    assert shim.services.state.endpoint(NET, EP) is None


def test_a_repeated_create_endpoint_adds_nothing_more(handing_over):
    shim = handing_over
    shim.ok("/NetworkDriver.CreateEndpoint", CREATE)
    shim.ok("/NetworkDriver.CreateEndpoint", CREATE)
    assert shim.adds == [(EP, "rc" + EP[:12])]
