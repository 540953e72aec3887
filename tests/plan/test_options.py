"""Options as given: each value checked alone, the message naming the option by keyword."""

from __future__ import annotations

import math

import pytest

from compressor.errors import OptionError
from compressor.plan import Options
from compressor.prune.config import Criterion, Scope


@pytest.mark.parametrize("target", [0, 1, -0.5, 1.5, math.nan, math.inf, "0.5", True])
def test_targets_outside_0_1_are_refused(target):
    with pytest.raises(OptionError, match="`target`"):
        Options(target=target)


def test_strings_become_choices_and_auto_leaves_the_choice_to_the_plan():
    options = Options(0.5, scope="local", criterion="auto", align="auto", device="auto")
    assert options.scope is Scope.LOCAL
    assert (options.criterion, options.align, options.device) == (None, None, None)
    assert Options(0.5, criterion="l2").criterion is Criterion.L2


@pytest.mark.parametrize("factor, value", [(None, None), ("auto", None), ("off", 0), (0, 0),
                                           (12, 12), ("12", 12)])
def test_factor_takes_auto_off_or_a_rank(factor, value):
    assert Options(0.5, factor=factor).factor == value


@pytest.mark.parametrize("name, value", [
    ("factor", -1), ("factor", 2.5), ("factor", "half"), ("factor", True), ("align", 0),
    ("cycles", 0), ("epochs", -1), ("patience", 0), ("lr", 0), ("distill", 1.5),
    ("temperature", 0), ("average", -1), ("recover", 100), ("rank_energy", 0),
    ("merge_threshold", 2), ("criterion", "best"), ("format", "zip"), ("device", "tpu"),
    ("input_shape", (0, 3)),
])
def test_bad_values_are_refused_naming_the_keyword(name, value):
    with pytest.raises(OptionError, match=f"`{name}`"):
        Options(0.5, **{name: value})


def test_a_value_not_given_is_its_plain_default_and_reads_as_not_given():
    options = Options(0.5, lr=0.01)
    assert options.given("lr") and not options.given("patience")
    assert (options.value("lr"), options.value("patience"), options.value("criterion")) == \
        (0.01, 3, None)
