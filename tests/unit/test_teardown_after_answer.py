"""DeleteEndpoint answers Docker first and tears the endpoint down after
(translate.endpoint_teardown, api.after_answer): what must see the endpoint
gone waits for that teardown, and nothing is torn down twice.

The Flask test client runs the work after the answer when the response is
closed, as gunicorn's worker does once it has written it: a response left
open is a teardown still under way."""

import os
import threading

from tests.conftest import is_locked
from tests.unit.test_http_errors import EP1, EP2, NET, shim  # noqa: F401 - shim is the fixture used below


def _recording_deletes(shim):  # noqa: F811 - the fixture's value
    deleted = []
    shim.cni.delete = lambda conf, raw, att: deleted.append(att.container_id)
    return deleted


def _delete_endpoint_left_open(shim, endpoint):  # noqa: F811
    reply = shim.client.post("/NetworkDriver.DeleteEndpoint", data=f'{{"NetworkID": "{NET}", "EndpointID": "{endpoint}"}}')
    assert (reply.status_code, reply.get_json()) == (200, {})
    return reply


def test_docker_has_the_answer_before_the_teardown_and_the_endpoint_is_gone_after_it(shim):  # noqa: F811
    deleted = _recording_deletes(shim)
    reply = _delete_endpoint_left_open(shim, EP2)
    assert deleted == [] and shim.services.state.endpoint(NET, EP2) is not None
    reply.close()
    assert deleted == [EP2] and shim.services.state.endpoint(NET, EP2) is None


def test_delete_network_waits_for_a_teardown_under_way_and_does_not_repeat_it(shim):  # noqa: F811
    deleted = _recording_deletes(shim)
    reply = _delete_endpoint_left_open(shim, EP2)
    answers = []
    other = threading.Thread(target=lambda: answers.append(shim.post("/NetworkDriver.DeleteNetwork",
                                                                     {"NetworkID": NET})))
    other.start()
    other.join(timeout=1)
    assert other.is_alive() and answers == [], "DeleteNetwork went on while EP2's teardown was under way"
    reply.close()
    other.join(timeout=30)
    assert answers == [(200, {})]
    assert deleted.count(EP2) == 1 and EP1 in deleted  # EP2 by its own teardown only; EP1 by DeleteNetwork
    assert shim.services.state.network(NET) is None


def test_a_repeated_delete_endpoint_waits_for_the_first_and_finds_nothing_left(shim):  # noqa: F811
    deleted = _recording_deletes(shim)
    first = _delete_endpoint_left_open(shim, EP2)
    answers = []
    second = threading.Thread(target=lambda: answers.append(shim.post("/NetworkDriver.DeleteEndpoint",
                                                                      {"NetworkID": NET, "EndpointID": EP2})))
    second.start()
    second.join(timeout=1)
    assert second.is_alive(), "the second DeleteEndpoint did not wait for the first one's teardown"
    first.close()
    second.join(timeout=30)
    assert answers == [(200, {})] and deleted == [EP2]


def test_the_teardown_runs_and_lets_go_of_its_lock_whatever_answer_flask_gave(shim, monkeypatch):  # noqa: F811
    """A hook failing after the handler queued the teardown (here, counting
    the call) changes the answer Flask gives, not the teardown after it."""
    from cnm_shim import metrics
    deleted = _recording_deletes(shim)

    def broken(*_args, **_kwargs):
        raise RuntimeError("counting the call failed")
    monkeypatch.setattr(metrics.CALLS, "observe", broken)
    shim.post("/NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP2})
    assert deleted == [EP2] and shim.services.state.endpoint(NET, EP2) is None
    teardown_dir = os.path.join(shim.services.translator.settings.state_dir, "teardown")
    assert not any(is_locked(os.path.join(teardown_dir, name)) for name in os.listdir(teardown_dir))
