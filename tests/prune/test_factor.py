"""Factoring a layer whose inputs are not pruned into in -> r -> out before pruning."""

from __future__ import annotations

import pytest
import torch

from compressor.graph.capture import outputs_of, run_batched
from compressor.graph.trace import trace
from compressor.io.data import DataSplits, Dataset
from compressor.prune.config import FinetuneConfig, PruneConfig
from compressor.prune.cycles import measure, prune
from compressor.prune.factor import candidates, factor
from tests.conftest import labelled
from tests.helpers import graph_of
from tests.nets import tiny


def _correlated(n: int = 3000) -> torch.Tensor:
    """Inputs for `tiny` with most of their variance in 5 directions and a non-zero mean."""
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(5, 20, generator=g)
    return torch.randn(n, 5, generator=g) @ basis + 0.05 * torch.randn(n, 20, generator=g) + 2.0


def test_only_layers_reading_unpruned_inputs_are_candidates():
    x = torch.randn(8, 20)
    gm = graph_of(tiny(), x[:2])
    found = trace(gm)
    assert [g.name for g in found.groups] == ["0", "2", "4"]
    assert candidates(gm, found) == ["0"]  # 2 and 4 read pruned units; 6 is not pruned


def test_full_rank_keeps_every_output_and_adds_one_layer():
    x = _correlated()
    gm = graph_of(tiny(), x[:2])
    reference = run_batched(gm, x)
    done = factor(gm, trace(gm), {"0": 20}, x)
    assert [(f.name, f.inner, f.in_features, f.rank) for f in done] == [("0", "0_in", 20, 20)]
    assert done[0].kept_energy == pytest.approx(1.0)
    assert torch.allclose(run_batched(gm, x), reference, atol=1e-3)
    after = trace(gm)
    names = [layer.name for layer in after.layers]
    assert names[:2] == ["0_in", "0"] and [g.name for g in after.groups] == ["0", "2", "4"]
    assert "0_in" not in candidates(gm, after)  # the factor itself is never pruned


def test_data_aware_factors_beat_the_plain_svd_on_the_calibration_inputs():
    x = _correlated()
    net = tiny()
    gm = graph_of(net, x[:2])
    first = outputs_of(gm, ["linear"])  # the first layer's pre-activation
    exact = first(x)[0].double()
    factor(gm, trace(gm), {"0": 5}, x)
    aware = outputs_of(gm, ["linear"])(x)[0].double()

    w, b = net[0].weight.detach().double(), net[0].bias.detach().double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    plain = x.double() @ (u[:, :5] * s[:5] @ vh[:5]).T + b
    aware_error = (aware - exact).pow(2).mean()
    plain_error = (plain - exact).pow(2).mean()
    assert aware_error < 0.1 * plain_error
    assert aware_error < 0.01 * exact.var(0).sum() / exact.shape[1]


def test_pruning_a_factored_model_counts_the_target_from_the_input_model():
    x, y = (torch.from_numpy(a) for a in labelled(600))
    gm = graph_of(tiny(), x[:2])
    config = PruneConfig(0.6, cycles=2)
    dense = measure(gm, trace(gm), config)
    factor(gm, trace(gm), {"0": 4}, x[:500])
    found = trace(gm)
    start = 1 - measure(gm, found, config) / dense  # what factoring removed: 432 of 1856
    splits = DataSplits("labelled", Dataset(x[:500], y[:500]), Dataset(x[500:], y[500:]), None)
    result = prune(gm, found, splits, config, FinetuneConfig(max_epochs=1, final_epochs=1),
                   reference=dense)
    assert [row.target for row in result.cycles][-1] == pytest.approx(0.6)
    assert start == pytest.approx(432 / 1856) and result.cycles[0].target > start
    assert 1 - measure(gm, found, config) / dense == pytest.approx(0.6, abs=0.03)
    assert gm(x[:3]).shape == (3, 4)
