from __future__ import annotations

import math

import pytest

from compressor.prune.config import (CompensateConfig, Compensation, FinetuneConfig,
                                     PruneConfig, Scope, SelectConfig)


@pytest.mark.parametrize("target", [0, 1, -0.5, 1.5, math.nan, math.inf])
def test_prune_config_rejects_targets_outside_0_1(target):
    with pytest.raises(ValueError, match="target"):
        PruneConfig(target=target)


def test_stage_configs_accept_strings_for_enums():
    assert SelectConfig(scope="local").scope is Scope.LOCAL
    assert CompensateConfig("lsq").method is Compensation.LSQ


@pytest.mark.parametrize("kwargs", [{"max_epochs": -1}, {"patience": 0}, {"lr": 0},
                                    {"distill": 1.5}, {"temperature": 0}, {"average": -1}])
def test_finetune_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        FinetuneConfig(**kwargs)


def test_the_last_cycle_trains_final_epochs_with_patience_in_proportion():
    tuning = FinetuneConfig(max_epochs=6, patience=3, final_epochs=18)
    assert (tuning.last().max_epochs, tuning.last().patience) == (18, 9)
    assert FinetuneConfig(max_epochs=6).last() == FinetuneConfig(max_epochs=6)


def test_the_alignment_of_a_prune_config_cannot_be_changed_after_the_plan():
    config = PruneConfig(0.5, align={"0": 16})
    with pytest.raises(TypeError):
        config.align["0"] = 8
