from __future__ import annotations

import math

import pytest

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
