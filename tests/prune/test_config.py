from __future__ import annotations

import math

import pytest

from compressor.prune.config import (AVERAGE_EPOCHS, CNN_SCHEDULE, LONGER_MAX, MLP_SCHEDULE,
                                     Compensation, Criterion, FinetuneConfig, PruneConfig, Scope,
                                     final_epochs)


@pytest.mark.parametrize("target", [0, 1, -0.5, 1.5, math.nan, math.inf])
def test_prune_config_rejects_targets_outside_0_1(target):
    with pytest.raises(ValueError, match="target"):
        PruneConfig(target=target)


def test_prune_config_accepts_strings_for_enums():
    assert PruneConfig(target=0.5, scope="local").scope is Scope.LOCAL


@pytest.mark.parametrize("factor, value", [(None, None), ("auto", None), ("off", 0), (0, 0),
                                           (12, 12)])
def test_factor_takes_auto_off_or_a_rank(factor, value):
    assert PruneConfig(target=0.5, factor=factor).factor == value


@pytest.mark.parametrize("factor", [-1, 2.5, "half", True])
def test_factor_refuses_anything_else(factor):
    with pytest.raises(ValueError, match="factor must be 'auto'"):
        PruneConfig(target=0.5, factor=factor)
    with pytest.raises(ValueError, match="drop --factor"):
        PruneConfig(target=0.5, factor=8, score="neurons-weights")


@pytest.mark.parametrize("kwargs", [{"max_epochs": -1}, {"patience": 0}, {"lr": 0},
                                    {"distill": 1.5}, {"temperature": 0}, {"average": -1}])
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


def test_the_last_cycles_epochs_grow_past_85_percent_in_proportion_to_what_is_left():
    assert [final_epochs(6, t) for t in (None, 0.5, 0.85, 0.9, 0.95, 0.99)] == \
        [3 * 6, 3 * 6, 3 * 6, 27, LONGER_MAX * 3 * 6, LONGER_MAX * 3 * 6]
    tuning = FinetuneConfig().resolved(channels=False, target=0.95)
    assert tuning.final_epochs == 54 and tuning.last().max_epochs == 54
    assert tuning.last().patience == 3 * 9  # patience grows alike
    assert FinetuneConfig(final_epochs=7).resolved(channels=False, target=0.95).final_epochs == 7


def test_criterion_and_compensation_left_to_the_model_follow_how_it_is_pruned():
    def chosen(config=PruneConfig(target=0.5), **situation):
        resolved = config.resolved(channels=False, **situation)
        return resolved.criterion, resolved.compensate

    # fine-tuned ReLU layers, each read by one Linear: relative l2 norm, no refit
    assert chosen(relu=True, linear=True, tuned=True) == (Criterion.L2, Compensation.NONE)
    # one shot: the least-squares error ranking; the refit stays left to the data
    assert chosen(relu=True, linear=True) == (Criterion.ERROR, Compensation.AUTO)
    # conv channels, joins (not one Linear per group) and GELU layers keep their rankings
    assert chosen(relu=True, tuned=True) == (Criterion.ACTIVATION, Compensation.AUTO)
    assert chosen(relu=False, linear=True, tuned=True) == (Criterion.ENERGY, Compensation.AUTO)
    # what the user gives is kept
    given = PruneConfig(target=0.5, criterion="activation", compensate="lsq")
    assert chosen(given, relu=True, linear=True, tuned=True) == (Criterion.ACTIVATION,
                                                                 Compensation.LSQ)
    assert chosen(PruneConfig(target=0.5, criterion="activation"), relu=True, linear=True,
                  tuned=True) == (Criterion.ACTIVATION, Compensation.NONE)


def test_the_weight_average_is_on_for_mlp_neurons_and_off_where_it_was_not_measured():
    assert FinetuneConfig().resolved(channels=False).average == AVERAGE_EPOCHS
    assert FinetuneConfig().resolved(channels=True).average == 0
    assert FinetuneConfig().resolved(channels=False, tokens=True).average == 0
    assert FinetuneConfig(average=0).resolved(channels=False).average == 0
    assert FinetuneConfig(average=3).resolved(channels=True).average == 3
    resolved = FinetuneConfig().resolved(channels=False)
    assert resolved.resolved(channels=True) == resolved  # resolving twice changes nothing
