from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor.graph.capture import get_tensor
from compressor.graph.groups import constant_outputs
from compressor.graph.trace import trace
from tests.helpers import graph_of
from tests.nets import CatBeforeActivation, CatOfJoined, Concat, Depthwise, ImageNet, NotPrunable, SmallCNN, Tied, small_resnet, tiny


def test_finds_every_hidden_layer_of_an_mlp_and_never_the_output_layer():
    found = trace(graph_of(tiny(), torch.randn(2, 20)))
    assert [g.name for g in found.groups] == ["0", "2", "4"]
    assert [g.size for g in found.groups] == [32, 24, 16]
    assert found.dense == (("6", "output layer (never pruned)"),)
    assert [layer.name for layer in found.layers] == ["0", "2", "4", "6"]


def test_follows_flatten_dropout_functional_relu_and_adds_missing_consumer_bias():
    gm = graph_of(ImageNet(), torch.randn(2, 1, 28, 28))
    found = trace(gm)
    assert [g.name for g in found.groups] == ["fc1", "fc2"]
    fc1 = found.groups[0]
    assert get_tensor(gm, fc1.consumer_biases[0]).shape == (24,)  # fc2 had no bias
    assert torch.count_nonzero(get_tensor(gm, fc1.consumer_biases[0])) == 0


def test_layers_it_does_not_understand_stay_dense_with_a_reason():
    found = trace(graph_of(NotPrunable(), torch.randn(2, 20)))
    assert found.groups == ()
    assert found.dense == (("a", "not followed by an elementwise activation (found softmax)"),
                           ("b", "output layer (never pruned)"))


class Branching(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 6), nn.Linear(6, 4), nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.a(x))
        return self.b(h) + self.c(h)


def test_a_relu_read_by_two_layers_is_one_group_with_both_as_consumers():
    gm = graph_of(Branching(), torch.randn(2, 8))
    found = trace(gm)
    assert [g.name for g in found.groups] == ["a"]
    group = found.groups[0]
    assert [(s.param, s.axis) for s in group.consumers] == [("b_weight", 1), ("c_weight", 1)]
    assert found.dense == (("b", "output layer (never pruned)"),
                           ("c", "output layer (never pruned)"))


def test_layers_with_shared_weights_are_not_pruned_and_count_once():
    found = trace(graph_of(Tied(), torch.randn(2, 20)))
    assert found.groups == ()
    assert ("a", "its weights are shared with another layer") in found.dense
    assert [layer.name for layer in found.layers] == ["a", "b"]


def test_convolutions_are_groups_and_a_flatten_gives_each_channel_its_columns():
    found = trace(graph_of(SmallCNN(padding=1), torch.randn(2, 1, 12, 12)))
    assert [(g.name, g.size) for g in found.groups] == [("features.0", 6), ("features.4", 8),
                                                         ("head.1", 16)]
    conv0, conv1, _ = found.groups
    assert [(s.param, s.axis, s.block) for s in conv0.consumers] == [
        ("features_4_weight", 1, 1)]
    assert [(s.axis, s.block) for s in conv1.consumers] == [(1, 9)]  # 8 channels x 3 x 3
    assert [(layer.kind, layer.positions) for layer in found.layers] == [
        ("conv", 144), ("conv", 36), ("linear", 1), ("linear", 1)]


def test_a_residual_add_joins_the_spaces_of_its_inputs_into_one_group():
    found = trace(graph_of(small_resnet(), torch.randn(2, 1, 12, 12)))
    groups = {g.name: g for g in found.groups}
    assert sorted(groups) == ["0", "3.conv1", "4.conv1", "4.conv2"]
    stem = groups["0"]  # the stem and the identity block's second conv share channels
    assert [s.param for s in stem.weights] == ["p_0_weight", "p_3_conv2_weight"]
    assert [s.param for s in stem.consumers] == ["p_3_conv1_weight", "p_4_conv1_weight",
                                                 "p_4_shortcut_0_weight"]
    assert len(stem.activations) == 2 and not stem.exact_constants
    assert [s.param for s in groups["4.conv2"].weights] == ["p_4_conv2_weight",
                                                            "p_4_shortcut_0_weight"]
    assert found.dense == (("7", "output layer (never pruned)"),)


def test_a_channel_cat_keeps_each_input_a_group_at_its_offset():
    found = trace(graph_of(Concat(), torch.randn(2, 1, 12, 12)))
    groups = {g.name: g for g in found.groups}
    assert sorted(groups) == ["a", "b", "c"]
    assert [(s.param, s.offset) for s in groups["a"].consumers] == [("c_weight", 0)]
    assert [(s.param, s.offset) for s in groups["b"].consumers] == [("c_weight", 4)]
    assert groups["b"].functions == ("relu_1", "relu_2")  # its ReLU, then the one after the cat


def test_a_layer_reading_one_space_twice_through_a_cat_leaves_it_dense():
    found = trace(graph_of(CatOfJoined(), torch.randn(2, 1, 12, 12)))
    dense = dict(found.dense)
    assert dense["a"] == dense["b"] == "conv2d_2 reads its channels twice (through a cat)"
    assert [g.name for g in found.groups] == ["c"]


def test_what_the_tracer_does_not_follow_behind_a_cat_stays_dense_with_the_reason():
    found = trace(graph_of(CatBeforeActivation(), torch.randn(2, 1, 12, 12)))
    groups = {g.name: g for g in found.groups}
    assert sorted(groups) == ["a", "b"]  # relu(cat(a, b)): counted after the cat
    assert groups["b"].offsets == (3,)
    dense = dict(found.dense)
    assert dense["c"] == ("its concatenated output feeds add, which the tracer follows only "
                          "for the output of one layer")
    assert dense["d"].startswith("its output is added to cat (cat_1)")



def test_a_depthwise_conv_carries_its_input_channels_and_is_pruned_with_them():
    found = trace(graph_of(Depthwise(), torch.randn(2, 1, 12, 12)))
    assert [g.name for g in found.groups] == ["a", "pw"]
    a = found.groups[0]
    assert [s.param for s in a.weights] == ["a_weight", "dw_weight"]
    assert [s.param for s in a.consumers] == ["pw_weight"] and len(a.grouped_nodes) == 1
    assert a.activations == ("relu_1",)  # counted after the depthwise filter, not before


def test_only_padding_free_conv_consumers_take_folded_constants():
    padded = trace(graph_of(SmallCNN(padding=1), torch.randn(2, 1, 12, 12))).groups[0]
    valid = trace(graph_of(SmallCNN(padding=0), torch.randn(2, 1, 12, 12))).groups[0]
    assert (padded.exact_constants, valid.exact_constants) == (False, True)


class _QuickGelu(torch.autograd.Function):
    """A custom activation: torch.export inlines its forward, x * sigmoid(1.702 x)."""

    @staticmethod
    def forward(ctx, x):
        return x * torch.sigmoid(1.702 * x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _Wrap(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _between(fn) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 32), _Wrap(fn), nn.Linear(32, 4))


def test_a_custom_function_is_followed_through_the_ops_it_is_made_of():
    """x * sigmoid(1.702 x) is elementwise per unit: a group, counted at the product, whose
    constant units are not folded (the product's value needs both factors)."""
    found = trace(graph_of(_between(_QuickGelu.apply), torch.randn(2, 20)))
    [group] = found.groups
    assert group.kinds == ("gated",) and not group.exact_constants


def test_a_scaled_activation_folds_constants_through_the_scale_too():
    net = _between(lambda x: torch.relu(x) * 2.0)
    with torch.no_grad():
        net[0].weight[3], net[0].bias[3] = 0, 0.7
    gm = graph_of(net, torch.randn(2, 20))
    [group] = trace(gm).groups
    assert group.kinds == ("relu",) and group.exact_constants
    assert float(constant_outputs(gm, group)[3]) == pytest.approx(1.4)


def test_an_op_that_mixes_units_leaves_the_layer_dense_with_its_name():
    found = trace(graph_of(_between(lambda x: torch.cumsum(torch.relu(x), 1)),
                           torch.randn(2, 20)))
    assert found.groups == ()
    assert found.dense[0] == ("0", "its relu output feeds cumsum, which couples channels in a "
                                   "way the tracer does not follow")
