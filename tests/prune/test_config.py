from __future__ import annotations

import math

import pytest

from compressor.prune.config import CNN_SCHEDULE, MLP_SCHEDULE, FinetuneConfig, PruneConfig, Scope


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


def test_scope_cycles_and_epochs_left_to_the_model_follow_its_units():
    cnn, mlp = (PruneConfig(target=0.5).resolved(channels=c) for c in (True, False))
    assert (cnn.scope, cnn.cycles) == (Scope.LOCAL, CNN_SCHEDULE[0])
    assert (mlp.scope, mlp.cycles) == (Scope.GLOBAL, MLP_SCHEDULE[0])
    assert FinetuneConfig().resolved(channels=True).max_epochs == CNN_SCHEDULE[1]
    assert FinetuneConfig().resolved(channels=False).max_epochs == MLP_SCHEDULE[1]
    given = PruneConfig(target=0.5, scope="global", cycles=3).resolved(channels=True)
    assert (given.scope, given.cycles) == (Scope.GLOBAL, 3)
    assert FinetuneConfig(max_epochs=0).resolved(channels=True).max_epochs == 0
    tokens = PruneConfig(target=0.5).resolved(channels=False, tokens=True)
    assert (tokens.scope, tokens.cycles) == (Scope.GLOBAL, CNN_SCHEDULE[0])
    assert FinetuneConfig().resolved(channels=False, tokens=True).max_epochs == CNN_SCHEDULE[1]
