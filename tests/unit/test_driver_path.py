"""bench/driver_path.py: which spans make one `docker run -d`'s stretch in
the driver, and the medians it reports of them."""

from bench.driver_path import CREATION, creation_calls, path_figures


def spans_of_one_run(t0: float, call_ms: float = 1.0, gap_ms: float = 2.0) -> list:
    """The creation calls one after the other: each `call_ms` long, `gap_ms` apart."""
    spans, at = [], t0
    for verb in CREATION:
        spans.append({"span": "shim", "t0": at, "ms": call_ms, "path": f"/NetworkDriver.{verb}"})
        at += (call_ms + gap_ms) / 1000
    return spans


def test_a_run_s_calls_are_those_in_its_window_in_order():
    mine, other = spans_of_one_run(100.0), spans_of_one_run(200.0)
    noise = [{"span": "netlink", "t0": 100.001, "ms": 0.1, "op": "get_link"},
             {"span": "shim", "t0": 100.002, "ms": 0.1, "path": "/Plugin.Activate"}]
    calls = creation_calls(list(reversed(mine)) + other + noise, 99.9, 100.1)
    assert [c["path"] for c in calls] == [f"/NetworkDriver.{verb}" for verb in CREATION]


def test_a_run_without_every_creation_call_is_left_out():
    partial = spans_of_one_run(100.0)[:-1]  # the last EndpointOperInfo fell outside the window
    assert creation_calls(partial, 99.9, 100.1) == []


def test_the_figures_are_the_calls_the_gaps_and_the_stretch():
    runs = [spans_of_one_run(100.0, call_ms=1.0, gap_ms=2.0),
            spans_of_one_run(200.0, call_ms=1.0, gap_ms=2.0),
            spans_of_one_run(300.0, call_ms=3.0, gap_ms=4.0)]
    figure = path_figures(runs)
    assert figure["runs"] == 3
    assert [verb for verb, _ in figure["calls"]] == list(CREATION)
    assert all(ms == 1.0 for _, ms in figure["calls"])
    assert figure["gaps"] == [2.0] * (len(CREATION) - 1)
    assert figure["in_driver_ms"] == len(CREATION) * 1.0
    assert figure["stretch_ms"] == len(CREATION) * 1.0 + (len(CREATION) - 1) * 2.0
