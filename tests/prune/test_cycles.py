from __future__ import annotations

import pytest
import torch

from compressor.graph.trace import trace
from compressor.io.data import DataSplits, Dataset
from compressor.prune.config import FINAL_EPOCHS, FinetuneConfig, PruneConfig
from compressor.prune.cycles import prune, schedule
from tests.conftest import labelled
from tests.helpers import graph_of
from tests.nets import tiny


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


def _tuned_epochs(target: float = 0.4, **tuning) -> list[int]:
    """Epochs each cycle of a 3-cycle run on the tiny model fine-tuned (patience never hit)."""
    x, y = (torch.from_numpy(a) for a in labelled(600))
    gm = graph_of(tiny(), x[:2])
    splits = DataSplits("labelled", Dataset(x[:500], y[:500]), Dataset(x[500:], y[500:]), None)
    result = prune(gm, trace(gm), splits, PruneConfig(target, cycles=3),
                   FinetuneConfig(max_epochs=1, patience=100, **tuning))
    return [row.epochs for row in result.cycles]


def test_the_last_of_several_cycles_fine_tunes_longer():
    assert _tuned_epochs() == [1, 1, FINAL_EPOCHS]
    assert _tuned_epochs(final_epochs=2) == [1, 1, 2]
    assert FinetuneConfig(max_epochs=6, patience=3).last().patience == 9


def test_the_last_cycle_fine_tunes_longer_still_at_a_high_target():
    assert _tuned_epochs(0.95) == [1, 1, 3 * FINAL_EPOCHS]  # 5% left: 3 times longer
    assert _tuned_epochs(0.95, final_epochs=2) == [1, 1, 2]  # what the user gives is kept


def test_auto_alignment_uses_the_machine_step_only_for_layers_four_steps_wide():
    from torch import nn

    from compressor.prune.cycles import _alignment

    net = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, 48),
                        nn.ReLU(), nn.Linear(48, 4))
    gm = graph_of(net, torch.rand(2, 1, 12, 12))
    groups = trace(gm).groups
    original = {g.name: g.size for g in groups}
    config = PruneConfig(0.5, channel_multiple=16, linear_multiple=16)
    assert _alignment(gm, groups, config, original) == {"0": 8, "2": 16, "5": 16, "7": 1}
    exact = PruneConfig(0.5, channel_multiple=16, linear_multiple=1)
    assert _alignment(gm, groups, exact, original)["5"] == 1
    assert set(_alignment(gm, groups, PruneConfig(0.5, align=4), original).values()) == {4}


def test_auto_alignment_weighs_conv_widths_by_the_time_they_take():
    """With `--align auto` the last cycle's choice among conv widths sees the machine's conv
    step (time model of conv groups only); with an explicit `--align N` it does not."""
    from torch import nn

    from compressor.prune.cycles import _step_time

    net = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(64 * 8 * 8, 48), nn.ReLU(), nn.Linear(48, 4))
    gm = graph_of(net, torch.rand(2, 1, 12, 12))
    found = trace(gm)
    original = {g.name: g.size for g in found.groups}
    time = _step_time(gm, found, found.groups, PruneConfig(0.5, channel_multiple=16), original)
    assert time is not None and time.steps == {"0": 16, "2": 16}
    assert _step_time(gm, found, found.groups, PruneConfig(0.5, align=8), original) is None
    mlp = graph_of(nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 2)), torch.rand(2, 8))
    mlp_found = trace(mlp)
    assert _step_time(mlp, mlp_found, mlp_found.groups, PruneConfig(0.5),
                      {g.name: g.size for g in mlp_found.groups}) is None
