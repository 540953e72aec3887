"""The one latency loop: every latency compressor reports, compares or budgets is measured here.

Runs are timed in interleaved rounds, so that a busy moment of the machine slows every run
alike (what a ratio of two latencies needs); a run's latency is the best of its rounds'
medians (noise only ever adds time)."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

Run = Callable[[], object]


def timings(runs: Sequence[Run], *, seconds: float, rounds: int = 5, min_calls: int = 10,
            warmup: int = 5) -> list[list[list[float]]]:
    """Seconds of every call, per run, per round.

    Args:
        runs: callables to time.
        seconds: total measuring time after warm-up, split evenly over rounds and runs.
        rounds: rounds; each round times every run in turn.
        min_calls: least calls per run per round, however long they take.
        warmup: untimed calls of each run before the first round.
    """
    for run in runs:
        for _ in range(warmup):
            run()
    found: list[list[list[float]]] = [[] for _ in runs]
    for _ in range(rounds):
        for run, per_round in zip(runs, found):
            times = []
            deadline = time.perf_counter() + seconds / rounds / len(runs)
            while len(times) < min_calls or time.perf_counter() < deadline:
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            per_round.append(times)
    return found


def best_median_ms(per_round: Sequence[Sequence[float]]) -> float:
    """The best round's median, in milliseconds."""
    return min(statistics.median(r) for r in per_round) * 1e3


def latencies_ms(runs: Sequence[Run], *, seconds: float, rounds: int = 5, min_calls: int = 10,
                 warmup: int = 5) -> list[float]:
    """Each run's latency in ms (best of the rounds' medians), timed in interleaved rounds."""
    return [best_median_ms(r) for r in timings(runs, seconds=seconds, rounds=rounds,
                                               min_calls=min_calls, warmup=warmup)]


def time_ms(run: Run, seconds: float) -> float:
    """Median ms of `run` over `seconds` (at least 20 calls, after 3 warm-up calls)."""
    return latencies_ms([run], seconds=seconds, rounds=1, min_calls=20, warmup=3)[0]
