"""The Docker side's Flask app in a test's own directory, and Docker's way of
calling it: a POST with a JSON body and no Content-Type, answered with a
status and a JSON body."""

import json
import os

from cnm_shim.app import create_app


def app_in(root):
    """The app with its state, run, IPAM and CNI config directories under `root`
    and a CNI path where no plug-in is (tests that run CNI replace the caller)."""
    root = str(root)
    return create_app({"state_dir": os.path.join(root, "state"), "run_dir": os.path.join(root, "run"),
                       "ipam_data_dir": os.path.join(root, "ipam"), "cni_conf_dir": os.path.join(root, "net.d"),
                       "cni_path": (os.path.join(root, "none"),)})


class Client:
    def __init__(self, app):
        self.client = app.test_client()

    def post(self, path: str, body) -> tuple:
        """`body` is sent as JSON, or as it is when it is bytes: (status, answer)."""
        reply = self.client.post(path, data=body if isinstance(body, bytes) else json.dumps(body))
        try:
            return reply.status_code, reply.get_json()
        finally:
            reply.close()  # as gunicorn's worker closes it, once written: the work after the answer runs

    __call__ = post  # a fixture may hand out the client as its `post`

    def ok(self, path: str, body) -> dict:
        status, answer = self.post(path, body)
        assert status == 200, answer
        return answer
