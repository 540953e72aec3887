"""Unstructured pruning: weight scores, removal, harvesting neurons exactly, masks held."""

from __future__ import annotations

import math

import pytest
import torch

from compressor.graph.capture import get_tensor, run_batched, set_tensor
from compressor.graph.count import weights
from compressor.graph.trace import trace
from compressor.io.data import Dataset
from compressor.prune.calibrate import count_activations
from compressor.prune.config import CompensateConfig, FinetuneConfig, Method, Scope
from compressor.prune.finetune import finetune
from compressor.prune.shrink import expand
from compressor.prune.sparsify import (
    harvest,
    masks,
    prunable_weights,
    remove_weights,
    weight_scores,
)
from tests.conftest import labelled
from tests.helpers import graph_of
from tests.nets import tiny


def _tiny():
    x = torch.from_numpy(labelled()[0])
    gm = graph_of(tiny(), x[:2])
    return gm, trace(gm), x


def test_activation_score_is_the_fed_neurons_firing_rate_times_the_weight():
    gm, found, x = _tiny()
    stats = count_activations(gm, found.groups, x, batch_size=100)
    scores = weight_scores(gm, found.groups, Method.ACTIVATION, stats=stats)
    g = found.groups[0]
    w = get_tensor(gm, g.weights[0].param).detach().double()
    rate = stats.counts[g.name].double() / stats.samples
    assert torch.allclose(scores[g.weights[0].param], rate[:, None] * w.abs())
    magnitude = weight_scores(gm, found.groups, Method.MAGNITUDE)
    assert torch.equal(magnitude[g.weights[0].param], w.abs())


def test_zero_weights_score_minus_infinity_and_are_not_counted_again():
    gm, found, _ = _tiny()
    name = found.groups[0].weights[0].param
    w = get_tensor(gm, name).detach().clone()
    w[0, :5] = 0
    set_tensor(gm, name, w)
    scores = weight_scores(gm, found.groups, Method.MAGNITUDE)
    assert (scores[name][0, :5] == -math.inf).all()
    before = weights(gm, found, nonzero=True)
    assert remove_weights(gm, found.groups, scores, 7, scope=Scope.GLOBAL,
                          original={p: get_tensor(gm, p).numel()
                                    for p in prunable_weights(found.groups)}) == 7
    assert weights(gm, found, nonzero=True) == before - 7


def test_global_removal_takes_the_lowest_scores_across_layers():
    gm, found, _ = _tiny()
    scores = weight_scores(gm, found.groups, Method.MAGNITUDE)
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    threshold = flat.sort().values[99]
    remove_weights(gm, found.groups, scores, 100, scope=Scope.GLOBAL, original={})
    for p, s in scores.items():
        w = get_tensor(gm, p)
        assert bool(((w == 0) == (s <= threshold)).all())


def test_local_removal_keeps_the_same_fraction_of_every_layer():
    gm, found, _ = _tiny()
    original = {p: get_tensor(gm, p).numel() for p in prunable_weights(found.groups)}
    scores = weight_scores(gm, found.groups, Method.MAGNITUDE)
    count = sum(original.values()) // 2
    assert remove_weights(gm, found.groups, scores, count, scope=Scope.LOCAL,
                          original=original) == count
    for p, n in original.items():
        kept = int(torch.count_nonzero(get_tensor(gm, p)))
        assert abs(kept / n - 0.5) <= 1 / n + 1e-9, (p, kept, n)


def test_harvest_removes_neurons_without_inputs_or_outputs_and_changes_no_output():
    gm, found, x = _tiny()
    g0, g1 = found.groups[:2]
    w = get_tensor(gm, g0.weights[0].param).detach().clone()
    w[[3, 7]] = 0  # neurons 3 and 7 of layer 0: no incoming weights, output relu(bias)
    set_tensor(gm, g0.weights[0].param, w)
    b = get_tensor(gm, g0.biases[0].param).detach().clone()
    b[3], b[7] = 0.5, -0.5  # one constant that matters, one that is zero
    set_tensor(gm, g0.biases[0].param, b)
    c = get_tensor(gm, g1.consumers[0].param).detach().clone()
    c[:, 5] = 0  # neuron 5 of layer 1: no outgoing weights
    set_tensor(gm, g1.consumers[0].param, c)
    before = run_batched(gm, x)
    groups, removed = harvest(gm, found.groups)
    assert removed[g0.name].tolist() == [3, 7] and removed[g1.name].tolist() == [5]
    assert groups[0].size == g0.size - 2 and groups[1].size == g1.size - 1
    assert torch.allclose(run_batched(gm, x), before, atol=1e-5)


def test_fine_tuning_keeps_pruned_weights_zero():
    gm, found, x = _tiny()
    y = torch.from_numpy(labelled()[1])
    scores = weight_scores(gm, found.groups, Method.MAGNITUDE)
    remove_weights(gm, found.groups, scores, 600, scope=Scope.GLOBAL, original={})
    held = masks(gm, found.groups)
    finetune(gm, Dataset(x[:500], y[:500]), Dataset(x[500:], y[500:]),
             FinetuneConfig(max_epochs=2, patience=2, lr=1e-2), masks=held)
    for p, mask in held.items():
        w = get_tensor(gm, p)
        assert bool((w[~mask] == 0).all()) and bool((w[mask] != 0).any())


@pytest.mark.parametrize("removed", [[0, 5, 31], [1]])
def test_expand_is_the_exact_unpack_of_shrink(removed):
    from compressor.prune.compensate import compensate
    from compressor.prune.shrink import shrink

    gm, found, x = _tiny()
    original = found.groups
    drop = {g.name: torch.tensor(removed if i == 0 else [], dtype=torch.int64)
            for i, g in enumerate(original)}
    compensate(gm, original, drop, CompensateConfig("none"))
    small = shrink(gm, original, drop)
    kept = {g.name: torch.tensor([u for u in range(g.size) if u not in drop[g.name].tolist()])
            for g in original}
    full = expand(original, gm, kept)
    # the same function; the zero columns change only the order of float additions
    torch.testing.assert_close(run_batched(full, x), run_batched(gm, x), atol=1e-6, rtol=0)
    for name, p in full.named_parameters():
        assert p.shape == get_tensor(graph_of(tiny(), x[:2]), name).shape
    again = shrink(full, original, drop)  # pack(unpack(x)) == x, bit for bit
    assert [g.size for g in again] == [g.size for g in small]
    for name, p in gm.named_parameters():
        assert torch.equal(get_tensor(full, name), p)
