"""Properties over random MLP shapes with planted dead and constant neurons (hypothesis)."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compressor.errors import NothingToPruneError
from compressor.export.to_onnx import to_onnx
from compressor.export.verify import run_onnx
from compressor.graph.count import weights
from compressor.graph.trace import trace
from compressor.io.data import Dataset, DataSplits
from compressor.prune.calibrate import count_activations
from compressor.prune.config import (CompensateConfig, Compensation, Criterion, FinetuneConfig,
                                     PruneConfig, SelectConfig)
from compressor.prune.cycles import prune
from compressor.runtime import session
from models.mlp import mlp
from tests.helpers import graph_of, remove_units

LIVE, DEAD, SILENT, CONSTANT = "live", "dead", "silent", "constant"


@st.composite
def planted_mlps(draw):
    """An MLP whose hidden units are live (fire on every input), dead (weights, bias -100:
    never fire), silent (no weights, bias < 0) or constant (no weights, bias > 0); the first
    unit of every layer is live. Returns the net, the kinds per layer and inputs in [-1, 1]."""
    widths = [draw(st.integers(2, 8)), *draw(st.lists(st.integers(1, 10), min_size=1, max_size=3)),
              draw(st.integers(2, 4))]
    kinds = [[LIVE] + draw(st.lists(st.sampled_from([LIVE, DEAD, SILENT, CONSTANT]),
                                    min_size=w - 1, max_size=w - 1)) for w in widths[1:-1]]
    torch.manual_seed(draw(st.integers(0, 2**16)))
    net = mlp(tuple(widths))
    with torch.no_grad():
        for layer, layer_kinds in zip(net[::2], kinds):
            for unit, kind in enumerate(layer_kinds):
                w, b = layer.weight[unit], layer.bias[unit:unit + 1]
                w.mul_(0 if kind in (SILENT, CONSTANT) else 0.2 / max(1, math.sqrt(w.numel())))
                b.fill_({LIVE: 1.0, DEAD: -100.0, SILENT: -0.5, CONSTANT: 0.75}[kind])
    x = torch.rand(300, widths[0]) * 2 - 1
    return net.eval(), kinds, x


@settings(max_examples=40)
@given(planted_mlps())
def test_dead_neurons_are_found_and_removing_them_changes_no_output(case):
    net, kinds, x = case
    gm = graph_of(net, x[:2])
    expected = gm(x).detach()
    groups = trace(gm).groups
    stats = count_activations(gm, groups, x)
    for g, layer_kinds in zip(groups, kinds):  # found exactly the neurons that never fire
        never = [k in (DEAD, SILENT) for k in layer_kinds]
        assert (stats.counts[g.name] == 0).tolist() == never
    removed = {g.name: torch.tensor([i for i, k in enumerate(layer_kinds) if k != LIVE],
                                    dtype=torch.int64) for g, layer_kinds in zip(groups, kinds)}
    resized, _ = remove_units(gm, removed)
    assert [g.size for g in resized] == [k.count(LIVE) for k in kinds]
    torch.testing.assert_close(gm(x).detach(), expected, rtol=1e-5, atol=1e-5)


@st.composite
def pruning_cases(draw):
    net, _, x = draw(planted_mlps())
    return net, x, draw(st.floats(0.05, 0.95)), draw(st.sampled_from(list(Compensation)))


def pruned(net, x, target, compensation):
    """`net` pruned one shot to `target` (None when the target is out of reach)."""
    gm = graph_of(net, x[:2])
    found = trace(gm)
    config = PruneConfig(target, SelectConfig(Criterion.L1), CompensateConfig(compensation))
    splits = None  # data-free, unless the compensation needs data (unlabelled: one shot)
    if compensation.needs_data:
        splits = DataSplits("x", Dataset(x), Dataset(x[:50]), None)
    before = weights(gm, found)
    try:
        prune(gm, found, splits, config, FinetuneConfig())
    except NothingToPruneError:
        return gm, found, before, None
    return gm, found, before, weights(gm, found)


@settings(max_examples=40)
@given(pruning_cases())
def test_the_weight_budget_is_met_whenever_it_can_be(case):
    net, x, target, compensation = case
    gm, found, before, after = pruned(net, x, target, compensation)
    widths = [w.shape for w in (p for n, p in net.named_parameters() if n.endswith("weight"))]
    smallest = widths[0][1] + len(widths) - 2 + widths[-1][0]  # one unit left in every layer
    if after is None:
        assert math.floor((1 - target) * before) < smallest
    else:
        assert after <= math.floor((1 - target) * before)


@settings(max_examples=12)
@given(pruning_cases())
def test_the_exported_onnx_matches_the_pruned_pytorch_model(case):
    net, x, target, compensation = case
    gm, _, _, after = pruned(net, x, target, compensation)
    model = to_onnx(gm, x[:2])
    torch.testing.assert_close(run_onnx(session(model), x), gm(x).detach(), rtol=1e-4, atol=1e-4)
