"""Units read through activations other than ReLU: traced, counted, ranked and compensated."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.errors import UsageError
from compressor.graph.capture import run_batched
from compressor.graph.trace import trace
from compressor.prune.calibrate import FIRING, count_activations
from compressor.io.data import DataSplits, Dataset
from compressor.measure.widths import WidthMultiple
from compressor.plan import DataFacts, Options, model_facts, plan
from compressor.plan.facts import ThreadFacts
from compressor.prune.config import (CompensateConfig, Compensation, Criterion, FinetuneConfig,
                                     PruneConfig, SelectConfig)
from compressor.prune.error import ranks_by_error
from compressor.prune.cycles import prune
from compressor.prune.select import consumer_norms, unit_scores
from tests.helpers import graph_of, remove_units
from tests.nets import tiny

ACTIVATIONS = {
    "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "silu": nn.SiLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2), "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
    "elu": lambda: nn.ELU(0.5), "hardswish": nn.Hardswish, "relu6": nn.ReLU6, "mish": nn.Mish,
    "softplus": nn.Softplus,
}
KIND = {"gelu_tanh": "gelu", "relu6": "hardtanh"}
NOTHING = torch.tensor([], dtype=torch.int64)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_hidden_layer_is_a_group_read_through_its_activation(name):
    found = trace(graph_of(tiny(ACTIVATIONS[name]), torch.randn(2, 20)))
    assert [g.name for g in found.groups] == ["0", "2", "4"]
    assert {g.kinds for g in found.groups} == {(KIND.get(name, name),)}
    assert found.dense == (("6", "output layer (never pruned)"),)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_a_unit_without_inputs_is_folded_through_its_activation_exactly(name):
    """A unit with no incoming weights outputs act(bias) on every input: removing it and adding
    what it sent to the next bias changes nothing, whatever the activation."""
    net = tiny(ACTIVATIONS[name])
    with torch.no_grad():
        net[0].weight[[1, 9]] = 0
        net[0].bias[1], net[0].bias[9] = -0.8, 1.3
        net[2].weight[4] = 0
    x = torch.randn(300, 20)
    gm = graph_of(net, x[:2])
    before = run_batched(gm, x)
    removed = {"0": torch.tensor([1, 9]), "2": torch.tensor([4]), "4": NOTHING}
    _, done = remove_units(gm, removed, Compensation.NONE, x=x)
    torch.testing.assert_close(run_batched(gm, x), before, rtol=0, atol=1e-5)
    assert {n: d.exact for n, d in done.items()} == {"0": 2, "2": 1, "4": 0}


def test_relu_units_fire_where_non_zero_and_others_above_a_share_of_the_group_mean():
    x = torch.randn(400, 20)
    for act in (nn.ReLU, nn.GELU):
        net = tiny(act)
        with torch.no_grad():  # unit 3 is in GELU's tail: gelu(-4) = -1.3e-4, not exactly 0
            net[0].weight[3], net[0].bias[3] = 0, -4.0
        gm = graph_of(net, x[:2])
        groups = trace(gm).groups
        stats = count_activations(gm, groups, x, batch_size=100)
        h = act()(net[0](x)).detach()
        if act is nn.ReLU:
            expected = (h != 0).sum(0)
        else:
            assert torch.all(h[:, 3] != 0)
            expected = (h.abs() > FIRING * h[:100].abs().double().mean()).sum(0)
        assert torch.equal(stats.counts["0"], expected)
        assert int(stats.counts["0"][3]) == 0 and stats.dead("0") >= 1
        torch.testing.assert_close(stats.magnitudes["0"], h.double().abs().mean(0))
        torch.testing.assert_close(stats.squares["0"], (h.double() ** 2).mean(0))


def test_energy_is_rms_output_times_the_consumer_column_norm_relative_to_the_group():
    net = tiny(nn.GELU)
    x = torch.randn(300, 20)
    gm = graph_of(net, x[:2])
    groups = trace(gm).groups
    stats = count_activations(gm, groups, x)
    scores = unit_scores(gm, groups, SelectConfig("energy"), stats=stats)
    h = nn.GELU()(net[0](x)).detach().double()
    raw = (h ** 2).mean(0).sqrt() * net[2].weight.detach().double().norm(dim=0)
    torch.testing.assert_close(scores["0"], raw / raw.mean())
    torch.testing.assert_close(consumer_norms(gm, groups[0]),
                               net[2].weight.detach().double().norm(dim=0))


def _plan_for(gm, data=DataFacts(True, False), **options):
    return plan(Options(0.5, **options), model_facts(gm, trace(gm)), data, _NoSteps())


class _NoSteps:
    def width_step(self, kernel):
        return WidthMultiple(1, "measured", kernel)

    def threads(self):
        return ThreadFacts(1)


def test_one_shot_ranks_by_error_where_one_linear_reads_each_layer():
    x = torch.randn(300, 20)
    for act in (nn.ReLU, nn.SiLU):
        gm = graph_of(tiny(act), x[:2])
        assert ranks_by_error(gm, trace(gm).groups)
        assert _plan_for(gm).prune.select.criterion is Criterion.ERROR


def _prune(net: nn.Module, method: Compensation):
    x = torch.randn(64, 20)
    gm = graph_of(net, x[:2])
    config = PruneConfig(0.3, SelectConfig("l2"), CompensateConfig(method))
    return prune(gm, trace(gm), None, config, FinetuneConfig(max_epochs=0))


def test_merging_is_refused_where_it_is_not_exact_and_data_free_auto_does_not_merge():
    gelu = graph_of(tiny(nn.GELU), torch.randn(2, 20))
    with pytest.raises(UsageError, match="merge is exact only for .* read through gelu"):
        _plan_for(gelu, DataFacts(False), compensate="merge")
    assert _plan_for(gelu, DataFacts(False)).prune.compensate.method is Compensation.NONE
    leaky = graph_of(tiny(nn.LeakyReLU), torch.randn(2, 20))
    assert _plan_for(leaky, DataFacts(False)).prune.compensate.method is Compensation.MERGE
    # the stage merges only where merging is exact
    assert _prune(tiny(nn.GELU), Compensation.MERGE).cycles[0].merged == 0
    assert _prune(tiny(nn.LeakyReLU), Compensation.MERGE).cycles[0].merged > 0


def test_merging_a_leaky_relu_unit_into_a_scaled_copy_is_exact():
    """LeakyReLU is positively homogeneous: unit 8 = 2.5 x unit 3 before and after it."""
    net = tiny(lambda: nn.LeakyReLU(0.1))
    with torch.no_grad():
        net[0].weight[8], net[0].bias[8] = 2.5 * net[0].weight[3], 2.5 * net[0].bias[3]
    x = torch.randn(256, 20)
    gm = graph_of(net, x[:2])
    before = run_batched(gm, x)
    removed = {"0": torch.tensor([8]), "2": NOTHING, "4": NOTHING}
    _, done = remove_units(gm, removed, Compensation.MERGE)
    torch.testing.assert_close(run_batched(gm, x), before, rtol=0, atol=1e-5)
    assert done["0"].merged == 1


@pytest.mark.parametrize("name", ["gelu", "tanh", "sigmoid"])
def test_lsq_repairs_removal_behind_any_activation(name):
    """The refit needs no ReLU: it regresses the next layer on what the pruned network
    computes, and beats plain removal."""
    torch.manual_seed(1)
    x = torch.randn(1000, 20)
    removed = {"0": torch.arange(0, 32, 3), "2": torch.arange(0, 24, 4), "4": NOTHING}
    errors = {}
    for mode in (Compensation.NONE, Compensation.LSQ):
        gm = graph_of(tiny(ACTIVATIONS[name]), x[:2])
        before = run_batched(gm, x)
        remove_units(gm, removed, mode, x=x)
        errors[mode] = float(((run_batched(gm, x) - before) ** 2).mean())
    assert errors[Compensation.LSQ] < 0.5 * errors[Compensation.NONE]


class _Residual(nn.Module):
    """h = relu(fc1 x); out = head(relu(fc2 h + h)): the join couples fc1's and fc2's units,
    read by fc2 and by head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.head = nn.Linear(20, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        return self.head(torch.relu(self.fc2(h) + h))


def test_a_residual_join_read_twice_is_ranked_by_firing_rate_in_one_shot():
    x = torch.randn(300, 20)
    gm = graph_of(_Residual(), x[:2])
    found = trace(gm)
    assert not ranks_by_error(gm, found.groups)
    chosen = _plan_for(gm)
    assert chosen.prune.select.criterion is Criterion.ACTIVATION
    result = prune(gm, found, DataSplits("random", Dataset(x), Dataset(x[:50]), None),
                   chosen.prune, chosen.finetune)
    assert result.cycles[0].removed > 0
