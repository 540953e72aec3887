"""Channels concatenated on the channel axis (Inception branches, DenseNet layers, skips):
each input keeps its own group at an offset in what the consumers read, and the offsets move
as the groups before it shrink."""

from __future__ import annotations

import pytest
import torch

from compressor.export.to_onnx import to_onnx
from compressor.export.verify import verify
from compressor.graph.capture import get_tensor
from compressor.graph.groups import weight_count
from compressor.graph.trace import trace
from compressor.prune.calibrate import count_activations
from compressor.prune.compensate import compensate
from compressor.prune.config import CompensateConfig, Compensation
from compressor.prune.shrink import expand, shrink
from tests.helpers import graph_of, remove_units
from tests.nets import DenseBlock, Inception, InputSkip

X = torch.rand(64, 1, 12, 12, generator=torch.Generator().manual_seed(5))


def _kill(conv: torch.nn.Conv2d, channel: int) -> None:
    """Channel `channel` of `conv` never fires after its ReLU."""
    with torch.no_grad():
        conv.weight[channel] = 0
        conv.bias[channel] = -1.0


def _units(gm, removed: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return {g.name: torch.tensor(removed.get(g.name, []), dtype=torch.int64)
            for g in trace(gm).groups}


def test_channels_that_never_fire_in_concatenated_branches_go_without_changing_the_output():
    net = Inception()
    _kill(net.b1, 0)
    _kill(net.b3, 2)
    _kill(net.b3, 4)
    _kill(net.bp, 1)
    gm = graph_of(net, X[:2])
    stats = count_activations(gm, trace(gm).groups, X)
    for name, dead in (("b1", [0]), ("b3", [2, 4]), ("bp", [1])):
        assert set(dead) <= set((stats.counts[name] == 0).nonzero().flatten().tolist())
    assert int(stats.counts["b3"][0]) > 0
    with torch.no_grad():
        before = gm(X)
    groups, _ = remove_units(gm, _units(gm, {"b1": [0], "b3": [2, 4], "bp": [1]}))
    with torch.no_grad():
        torch.testing.assert_close(gm(X), before, rtol=0, atol=1e-5)
    assert get_tensor(gm, "head_weight").shape == (4, 8 * 36)  # 36 columns per channel went
    offsets = {g.name: g.consumers[0].offset for g in groups if g.name != "stem.0"}
    assert offsets == {"b1": 0, "b3": 3 * 36, "bp": 6 * 36}  # behind 3, then 3 + 3 channels


def test_a_denseblock_layer_read_by_every_later_layer_is_removed_from_all_of_them():
    net = DenseBlock()
    _kill(net.stem, 1)
    _kill(net.l1, 0)
    gm = graph_of(net, X[:2])
    with torch.no_grad():
        before = gm(X)
    groups, _ = remove_units(gm, _units(gm, {"stem": [1], "l1": [0]}))
    with torch.no_grad():
        torch.testing.assert_close(gm(X), before, rtol=0, atol=1e-5)
    shapes = {n: tuple(p.shape) for n, p in gm.named_parameters() if n.endswith("weight")}
    assert shapes["l1_weight"] == (2, 3, 3, 3) and shapes["l2_weight"] == (3, 5, 3, 3)
    assert shapes["transition_weight"] == (6, 8, 1, 1)
    l2 = next(g for g in groups if g.name == "l2")
    assert l2.consumers[0].offset == 5  # 3 stem + 2 l1 channels before it (nested cats)


def test_the_model_input_in_a_cat_keeps_its_channel_and_constants_fold_exactly_behind_it():
    net = InputSkip()
    with torch.no_grad():  # channel 2 outputs relu(0.4) everywhere; c has no padding: exact
        net.a.weight[2], net.a.bias[2] = 0, 0.4
    gm = graph_of(net, X[:2])
    with torch.no_grad():
        before = gm(X)
    remove_units(gm, _units(gm, {"a": [2]}))
    with torch.no_grad():
        torch.testing.assert_close(gm(X), before, rtol=0, atol=1e-5)
    assert get_tensor(gm, "c_weight").shape == (4, 5, 3, 3)  # the input's channel stays


@pytest.mark.parametrize("net", [Inception, DenseBlock])
def test_lsq_refits_a_consumer_of_several_groups_once_from_all_it_keeps(net):
    removed = {"Inception": {"b1": [1, 3], "b3": [0, 2], "bp": [0]},
               "DenseBlock": {"stem": [0, 2], "l1": [1], "l2": [2]}}[net.__name__]
    errors = {}
    for mode in (Compensation.NONE, Compensation.LSQ):
        gm = graph_of(net(), X[:2])
        with torch.no_grad():
            before = gm(X)
        remove_units(gm, _units(gm, removed), mode, x=X)
        with torch.no_grad():
            errors[mode] = float(((gm(X) - before) ** 2).mean())
    assert errors[Compensation.LSQ] < 0.5 * errors[Compensation.NONE], errors


def test_lsq_keeps_the_columns_of_the_other_groups_a_consumer_reads():
    """Removing one branch's units must not zero what the consumer reads from the others."""
    gm = graph_of(Inception(), X[:2])
    groups = trace(gm).groups
    drop = {g.name: torch.tensor([0] if g.name == "b3" else [], dtype=torch.int64)
            for g in groups}
    compensate(gm, groups, drop, CompensateConfig(Compensation.LSQ), x=X)
    head = get_tensor(gm, "head_weight")
    assert bool((head[:, 4 * 36:5 * 36] == 0).all())  # b3's channel 0
    assert int((head.abs().sum(0) == 0).sum()) == 36  # and nothing else


def test_weight_count_of_a_shared_axis_is_what_shrinking_leaves():
    gm = graph_of(DenseBlock(), X[:2])
    found = trace(gm)
    removed = _units(gm, {"stem": [0, 3], "l1": [2], "l2": [0, 1], "transition": [5]})
    shapes = {la.weight: tuple(get_tensor(gm, la.weight).shape) for la in found.layers}
    sizes = {g.name: g.size - len(removed[g.name]) for g in found.groups}
    predicted = weight_count(shapes, list(found.groups), sizes)
    compensate(gm, found.groups, removed, CompensateConfig(Compensation.NONE))
    shrink(gm, found.groups, removed)
    assert predicted == sum(get_tensor(gm, la.weight).numel() for la in found.layers)


def test_expand_is_the_exact_unpack_of_shrink_behind_cats():
    gm = graph_of(DenseBlock(), X[:2])
    original = trace(gm).groups
    removed = _units(gm, {"stem": [1], "l1": [0, 2], "l2": [1]})
    compensate(gm, original, removed, CompensateConfig(Compensation.NONE))
    with torch.no_grad():
        masked = gm(X)  # removed columns are zero now: what the shrunk model computes
    shrink(gm, original, removed)
    kept = {g.name: torch.tensor([u for u in range(g.size) if u not in removed[g.name]])
            for g in original}
    full = expand(original, gm, kept)
    assert get_tensor(full, "transition_weight").shape == (6, 10, 1, 1)
    assert bool((get_tensor(full, "transition_weight")[:, [1, 4, 6, 8]] == 0).all())
    with torch.no_grad():
        torch.testing.assert_close(full(X), masked, rtol=0, atol=1e-6)


def test_a_pruned_denseblock_exports_and_matches_in_onnxruntime():
    gm = graph_of(DenseBlock(), X[:2])
    remove_units(gm, _units(gm, {"stem": [0], "l1": [1], "l2": [0, 2]}), Compensation.LSQ, x=X)
    verify(to_onnx(gm, X[:2]), gm, X, tolerance=1e-5)


def test_units_read_through_an_activation_after_the_cat_are_counted_there_at_their_offset():
    """relu(cat(relu(a), relu(b))): counted at the ReLU after the cat, each branch's channels
    at its offset: the same counts as at the branch's own ReLU."""
    from tests.nets import Concat

    net = Concat()
    gm = graph_of(net, X[:2])
    groups = {g.name: g for g in trace(gm).groups}
    assert groups["a"].activations == groups["b"].activations == ("relu_2",)
    assert (groups["a"].offsets, groups["b"].offsets) == ((0,), (4,))
    stats = count_activations(gm, tuple(groups.values()), X)
    with torch.no_grad():
        own = (torch.relu(net.b(X)) != 0).sum(dim=(0, 2, 3))
    assert torch.equal(stats.counts["b"], own) and stats.positions["b"] == 144
