"""The one latency loop: warm-up, interleaved rounds, best of the rounds' medians."""

from __future__ import annotations

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


def test_a_run_is_timed_until_its_share_of_the_time_is_spent(monkeypatch):
    clock = iter(range(10_000))  # a fake clock: every reading is 1 s later than the last
    monkeypatch.setattr(timing.time, "perf_counter", lambda: float(next(clock)))
    calls = []
    found = timing.timings([lambda: calls.append("a"), lambda: calls.append("b")], seconds=40,
                           rounds=2, min_calls=1, warmup=0)
    # each run gets 40 / 2 rounds / 2 runs = 10 s per round: the deadline is read at t, the
    # first call spans t+1..t+2, and each later one is preceded by a deadline check (t+3,
    # t+6, t+9 pass; t+12 does not): 4 calls of 1 s each per round
    assert [[len(r) for r in per_run] for per_run in found] == [[4, 4], [4, 4]]
    assert all(t == 1.0 for per_run in found for r in per_run for t in r)
    assert calls == (["a"] * 4 + ["b"] * 4) * 2


def test_latency_is_the_best_rounds_median_in_milliseconds():
    assert timing.best_median_ms([[0.003, 0.001, 0.002], [0.005, 0.004, 0.0045]]) == 2.0
