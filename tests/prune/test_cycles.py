from __future__ import annotations

import pytest

from compressor.prune.cycles import schedule


def test_schedule_reproduces_the_papers_five_cycles_at_80_percent():
    cumulative = schedule(0.8, 5)
    per_cycle = [b - a for a, b in zip([0.0] + cumulative, cumulative)]
    assert [round(100 * p, 2) for p in per_cycle] == [23.80, 19.04, 15.23, 12.18, 9.75]
    assert cumulative[-1] == 0.8


@pytest.mark.parametrize("cycles", [1, 3, 10])
def test_schedule_is_increasing_and_ends_at_the_target(cycles):
    cumulative = schedule(0.85, cycles)
    assert len(cumulative) == cycles and cumulative[-1] == 0.85
    assert all(a < b for a, b in zip(cumulative, cumulative[1:]))
