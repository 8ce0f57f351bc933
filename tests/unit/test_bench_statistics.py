"""bench/docker_run.py's interval for the per-pair ratios: what the closing
notes quote when a ratio sits at 1.0 within the run's noise."""

import random

from bench.docker_run import median_interval


def noisy_ratios(centre: float, spread: float, pairs: int, seed: int) -> list:
    draw = random.Random(seed)
    return [draw.gauss(centre, spread) for _ in range(pairs)]


def test_the_interval_holds_the_median_and_is_the_same_for_the_same_samples():
    ratios = noisy_ratios(1.0, 0.08, 30, seed=1)
    median, low, high = median_interval(ratios)
    assert low <= median <= high
    assert low < high
    assert median_interval(ratios) == (median, low, high)


def test_more_pairs_give_a_narrower_interval():
    def width(pairs):
        _, low, high = median_interval(noisy_ratios(1.0, 0.08, pairs, seed=2))
        return high - low
    assert width(200) < width(15)


def test_a_ratio_clearly_below_one_gets_an_interval_below_one():
    _, low, high = median_interval(noisy_ratios(0.85, 0.05, 30, seed=3))
    assert high < 1.0 and low > 0.7


def test_identical_pairs_give_a_point():
    assert median_interval([0.97] * 8) == (0.97, 0.97, 0.97)
