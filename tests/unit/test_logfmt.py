"""Our log format (cni_backend/logfmt.py): the json shape, the text line,
the request ID (only a valid one, never a forged line), journald priorities
when stderr is the journal's stream, and gunicorn's logs through it."""

import io
import json
import logging
import os
import re
import subprocess
import sys

import pytest

from cni_backend import logfmt

TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [A-Z]+ [\w.-]+\[\d+\] req=(-|[0-9a-f]{8,32}) ")


def emit(formatter, level=logging.INFO, msg="hello %s", args=("world",), exc_info=None, **extra):
    logger = logging.getLogger("rancher-cni.test")
    record = logger.makeRecord(logger.name, level, __file__, 1, msg, args, exc_info, extra=extra or None)
    return formatter.format(record)


def test_json_is_one_object_with_the_fields_and_the_extras():
    with logfmt.request("9f3a1c0de2b47a61"):
        line = emit(logfmt.Formatter("json"), verb="NetworkDriver.Join", ms=1.5)
    assert "\n" not in line
    entry = json.loads(line)
    assert set(entry) == {"time", "level", "logger", "pid", "request_id", "message", "verb", "ms"}
    assert (entry["level"], entry["logger"], entry["pid"], entry["request_id"], entry["message"]) == \
        ("INFO", "rancher-cni.test", os.getpid(), "9f3a1c0de2b47a61", "hello world")
    assert (entry["verb"], entry["ms"]) == ("NetworkDriver.Join", 1.5)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])


def test_json_carries_a_traceback_in_exc_and_stays_one_line():
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        line = emit(logfmt.Formatter("json"), logging.ERROR, "failed", (), exc_info=sys.exc_info())
    entry = json.loads(line)
    assert "\n" not in line and "ValueError: bad" in entry["exc"] and entry["request_id"] is None


def test_text_line_and_no_forged_line_from_a_message():
    forged = "2026-01-01T00:00:00.000Z ERROR rancher-cni[1] req=0000000000000000 forged"
    with logfmt.request("00ff00ff"):
        text = emit(logfmt.Formatter("text"), logging.WARNING, "network %r: %s", ("x", f"a\n{forged}\rb"))
    first, *rest = text.split("\n")
    assert TEXT_LINE.match(first) and " WARNING rancher-cni.test[" in first and "req=00ff00ff " in first
    assert rest and all(line.startswith("    ") for line in rest), "continuation lines are indented"
    assert [line for line in text.split("\n") if TEXT_LINE.match(line)] == [first]


def test_a_traceback_in_text_is_indented_under_its_line():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        text = emit(logfmt.Formatter("text"), logging.ERROR, "failed", (), exc_info=sys.exc_info())
    first, *rest = text.split("\n")
    assert first.endswith(" failed") and "req=- " in first
    assert rest[0] == "    Traceback (most recent call last):" and rest[-1] == "    RuntimeError: boom"


@pytest.mark.parametrize("bad", ["abcdef12\nforged", "ABCDEF12", "abcdef1", "a" * 33, "abcdef12 ", "", None, 12345678])
def test_only_8_to_32_lowercase_hex_is_an_id(bad):
    assert logfmt.valid_id(bad) is None
    with logfmt.request(bad) as made:
        assert logfmt.valid_id(made) and made != bad and logfmt.current() == made
    line = emit(logfmt.Formatter("text"), request_id=bad)
    assert "\n" not in line and "req=- " in line, "an invalid explicit ID is not written either"


def test_request_gives_the_previous_id_back_and_ids_differ():
    assert logfmt.current() is None
    with logfmt.request("aaaaaaaa"):
        with logfmt.request() as inner:
            assert logfmt.current() == inner != "aaaaaaaa"
        assert logfmt.current() == "aaaaaaaa"
    assert logfmt.current() is None
    assert len({logfmt.new_id() for _ in range(100)}) == 100


@pytest.mark.parametrize("level,priority", [(logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4),
                                            (logging.ERROR, 3), (logging.CRITICAL, 2)])
def test_journal_priority_prefix_on_every_line(tmp_path, monkeypatch, level, priority):
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        for kind in logfmt.FORMATS:
            formatter = logfmt.formatter(kind, stream)
            assert formatter.journal
            text = emit(formatter, level, "one\ntwo", ())
            assert all(line.startswith(f"<{priority}>") for line in text.split("\n")), text
        if level == logging.INFO:
            json.loads(emit(logfmt.formatter("json", stream))[3:])  # journald strips <6>: JSON is left


def test_no_prefix_when_stderr_is_not_the_journals_stream(tmp_path, monkeypatch):
    with open(tmp_path / "a", "w") as a, open(tmp_path / "b", "w") as b:
        st = os.fstat(a.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert not logfmt.formatter("text", b).journal, "a child whose stderr went elsewhere inherits only the env"
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not logfmt.formatter("text", a).journal
        assert not emit(logfmt.formatter("text", a)).startswith("<")


def test_setup_writes_our_lines_and_the_format_comes_from_the_environment(monkeypatch):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        stream = io.StringIO()
        monkeypatch.setenv(logfmt.FORMAT_ENV, "json")
        logfmt.setup("INFO", stream=stream)
        logging.getLogger("cnm-shim").info("one")
        logging.getLogger("cnm-shim").debug("not this")
        entries = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [(e["logger"], e["message"]) for e in entries] == [("cnm-shim", "one")]
        with pytest.raises(ValueError, match="text or json"):
            logfmt.setup("INFO", "yaml", stream=stream)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_a_bad_log_format_is_refused_with_what_is_valid():
    env = dict(os.environ, **{logfmt.FORMAT_ENV: "yaml"})
    done = subprocess.run([sys.executable, "-m", "cnm_shim.cli", "options", "bridge"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "'yaml' is not valid: text or json" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "-m", "cnm_shim.cli", "serve", "--log-format", "yaml"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "invalid choice: 'yaml'" in done.stderr


def test_gunicorns_error_log_is_ours_and_its_access_log_is_off_by_default():
    from gunicorn.config import Config
    from cnm_shim.server import ShimLogger
    cfg = Config()
    logger = ShimLogger(cfg)
    assert logger.access_log.handlers == [] and cfg.accesslog is None
    assert logger.error_log.handlers and all(isinstance(h.formatter, logfmt.Formatter)
                                             for h in logger.error_log.handlers)
    cfg.set("accesslog", "-")
    logger.setup(cfg)
    assert all(isinstance(h.formatter, logfmt.Formatter) for h in logger.access_log.handlers + logger.error_log.handlers)


def test_each_docker_request_has_its_own_id_on_its_line(tmp_path):
    from tests.unit.shim_client import Client, app_in
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logfmt.Formatter("json"))
    shim_log = logging.getLogger("cnm-shim")
    shim_log.addHandler(handler)
    saved = shim_log.level
    shim_log.setLevel(logging.INFO)
    try:
        post = Client(app_in(tmp_path))
        for _ in range(2):
            post("/NetworkDriver.Join", {"NetworkID": "n" * 64, "EndpointID": "e" * 64, "SandboxKey": "/x"})
        post("/NetworkDriver.GetCapabilities", b"")  # a query: DEBUG, not written at INFO
    finally:
        shim_log.removeHandler(handler)
        shim_log.setLevel(saved)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    joins = [e for e in lines if e.get("verb") == "NetworkDriver.Join"]
    assert len(joins) == 2 and not any(e.get("verb") == "NetworkDriver.GetCapabilities" for e in lines), lines
    ids = {e["request_id"] for e in joins}
    assert len(ids) == 2 and all(logfmt.valid_id(i) for i in ids), "one ID per request"
    assert all((e["endpoint"], e["network"], e["ok"]) == ("e" * 64, "n" * 64, False) for e in joins), joins
    assert joins[0]["message"].startswith(f"NetworkDriver.Join endpoint={'e' * 12} network={'n' * 12} -> error")
    assert all(e["request_id"] in ids for e in lines if e["level"] != "DEBUG"), "the call's other lines carry it"
    assert logfmt.current() is None, "no ID left bound after the request"
