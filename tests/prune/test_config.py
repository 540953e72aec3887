from __future__ import annotations

import math

import pytest

from compressor.cli.options import parse_fraction, parse_positive, parse_size
from compressor.commands.config import CompressConfig
from compressor.measure.budgets import Budgets
from compressor.prune.config import FinetuneConfig, PruneConfig, Scope


@pytest.mark.parametrize("target", [0, 1, -0.5, 1.5, math.nan, math.inf])
def test_prune_config_rejects_targets_outside_0_1(target):
    with pytest.raises(ValueError, match="target"):
        PruneConfig(target=target)


def test_prune_config_accepts_strings_for_enums():
    assert PruneConfig(target=0.5, scope="local").scope is Scope.LOCAL


@pytest.mark.parametrize("kwargs", [{"max_epochs": -1}, {"patience": 0}, {"lr": 0},
                                    {"distill": 1.5}, {"temperature": 0}])
def test_finetune_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        FinetuneConfig(**kwargs)


@pytest.mark.parametrize("text, size", [("300000", 300_000), ("300KB", 300_000), ("200KiB", 204_800),
                                        ("1.5 MB", 1_500_000), ("2mib", 2 * 2**20), ("12B", 12)])
def test_sizes_take_decimal_and_binary_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "12XB", "-5", "KB", "1e3", "nan", "1 2 KB"])
def test_sizes_refuse_anything_else(text):
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize("text, value", [("0.88", 0.88), ("88%", 0.88), ("100%", 1.0), ("0", 0.0)])
def test_fractions_take_decimals_and_percentages(text, value):
    assert parse_fraction(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["88", "1.5", "-0.1", "nan", "abc", "%"])
def test_fractions_refuse_values_outside_0_1(text):
    with pytest.raises(ValueError, match="is not a fraction"):
        parse_fraction(text)


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "fast"])
def test_positive_numbers_refuse_zero_nan_and_text(text):
    with pytest.raises(ValueError, match="is not a positive number"):
        parse_positive(text)


@pytest.mark.parametrize("kwargs", [{"max_size": -1}, {"max_params": 1.5}, {"min_accuracy": 2},
                                    {"max_latency_ms": math.nan}, {"max_latency_ratio": 0}])
def test_budgets_reject_impossible_limits(kwargs):
    with pytest.raises(ValueError):
        Budgets(**kwargs)


def test_a_latency_budget_needs_the_latency_measurement_at_its_batch():
    with pytest.raises(ValueError, match="drop --no-latency"):
        CompressConfig(PruneConfig(0.5), bench=None, budgets=Budgets(max_latency_ms=1.0))
    assert not Budgets().any and Budgets(max_flops=0).any
