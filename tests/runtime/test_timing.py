"""The one latency loop: warm-up, interleaved rounds, best of the rounds' medians."""

from __future__ import annotations

import time

from compressor.runtime import timing


def test_rounds_interleave_the_runs_after_the_warm_up():
    calls = []
    runs = [lambda: calls.append("a"), lambda: calls.append("b")]
    found = timing.timings(runs, seconds=0.0, rounds=3, min_calls=2, warmup=4)
    assert calls == ["a"] * 4 + ["b"] * 4 + ["a", "a", "b", "b"] * 3
    assert [len(per_round) for per_round in found] == [3, 3]
    assert all(len(times) == 2 for per_round in found for times in per_round)


def test_every_round_makes_at_least_min_calls_however_short_the_time():
    calls = []
    timing.timings([lambda: calls.append(1)], seconds=0.0, rounds=2, min_calls=7, warmup=0)
    assert len(calls) == 14


def test_a_run_is_timed_until_its_share_of_the_time_is_spent():
    calls = []
    start = time.perf_counter()
    found = timing.timings([lambda: calls.append(1)], seconds=0.05, rounds=1, min_calls=1,
                           warmup=0)
    assert time.perf_counter() - start >= 0.05
    assert len(found[0][0]) == len(calls) > 100


def test_latency_is_the_best_rounds_median_in_milliseconds():
    assert timing.best_median_ms([[0.003, 0.001, 0.002], [0.005, 0.004, 0.0045]]) == 2.0
