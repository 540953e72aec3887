"""Budgets: limits and rows."""

from __future__ import annotations

import math

import pytest

from compressor.measure.budgets import Budgets, Measured, evaluate


@pytest.mark.parametrize("kwargs", [{"max_size": -1}, {"max_params": 1.5}, {"min_accuracy": 2},
                                    {"max_latency_ms": math.nan}, {"max_latency_ratio": 0}])
def test_budgets_reject_impossible_limits(kwargs):
    with pytest.raises(ValueError):
        Budgets(**kwargs)


def test_only_set_budgets_count():
    assert not Budgets().any and Budgets(max_flops=0).any
    assert Budgets(max_latency_ratio=1.1).needs_latency and not Budgets(max_size=1).needs_latency


def test_limits_are_inclusive_and_only_set_budgets_get_rows():
    measured = {"size": Measured(100), "accuracy": Measured(0.9), "flops": Measured(10)}
    rows = evaluate(Budgets(max_size=100, min_accuracy=0.9), measured)
    assert [(r.name, r.passed) for r in rows] == [("size", True), ("accuracy", True)]
    rows = evaluate(Budgets(max_size=99, min_accuracy=0.91), measured)
    assert [(r.name, r.passed, r.comparison) for r in rows] == [
        ("size", False, "100 B > 99 B"), ("accuracy", False, "90.00% < 91.00%")]
