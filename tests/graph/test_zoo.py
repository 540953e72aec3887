"""torchvision's architectures, built small (32 x 32 inputs, few channels): each traced, pruned
to 40% fewer FLOPs in one shot and exported within parity; what stays dense is named."""

from __future__ import annotations

import operator

import onnx
import pytest
import torch

import compressor
from compressor.graph.trace import trace
from compressor.measure.onnx_file import flops_per_sample
from models.vision import import_torchvision
from tests.helpers import graph_of

tv = import_torchvision()
from torchvision.models import convnext, regnet, resnet, shufflenetv2, swin_transformer

SMALL = {
    "mobilenet_v3_small": lambda: tv.models.mobilenet_v3_small(width_mult=0.25, num_classes=10),
    "regnet_y": lambda: regnet.RegNet(regnet.BlockParams.from_init_params(
        depth=4, w_0=16, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25), num_classes=10),
    "resnext": lambda: resnet.ResNet(resnet.Bottleneck, [1, 1, 1, 1], groups=4,
                                     width_per_group=4, num_classes=10),
    "shufflenet_v2": lambda: shufflenetv2.ShuffleNetV2([2, 2, 2], [12, 24, 48, 96, 128],
                                                       num_classes=10),
    "convnext": lambda: convnext.ConvNeXt([convnext.CNBlockConfig(16, 32, 1),
                                           convnext.CNBlockConfig(32, None, 1)], num_classes=10),
    "swin": lambda: swin_transformer.SwinTransformer([4, 4], 32, [2, 2], [2, 4], [4, 4],
                                                     num_classes=10),  # 2 x 2 windows, shifted
    "vit": lambda: tv.models.VisionTransformer(32, 8, num_layers=2, num_heads=4, hidden_dim=32,
                                               mlp_dim=64, num_classes=10),
}
DENSE = {  # what may stay dense, by model
    "mobilenet_v3_small": {"output layer"},
    "regnet_y": {"output layer"},
    "resnext": {"output layer"},
    "shufflenet_v2": {"output layer", "reshaped by view", "depthwise convolution"},
    "convnext": {"output layer", "residual stream", "depthwise convolution", "filters the "},
    "swin": {"output layer", "residual stream"},
    "vit": {"output layer", "residual stream"},
}


@pytest.mark.parametrize("name", list(SMALL))
def test_a_small_torchvision_model_prunes_to_the_flop_target_within_parity(name):
    torch.manual_seed(0)
    net = SMALL[name]().eval()
    x = torch.rand(48, 3, 32, 32)
    result = compressor.compress(net, 0.4, of="flops", data=x, latency=False)
    report = result.report
    assert 0.4 <= report.size.flop_reduction <= 0.42
    assert report.parity.max_abs_diff <= 1e-4
    # `compress check` counts the file as the report counts the graph (Swin's windows too)
    assert flops_per_sample(onnx.load_from_string(result.onnx)) == (report.size.flops_after, ())
    dense = {row.note for row in report.layers if not row.note.startswith("pruned")}
    assert all(any(known in note for known in DENSE[name]) for note in dense), dense


def test_squeeze_excitation_and_linear_bottlenecks_leave_nothing_dense_in_mobilenet_v3():
    net = SMALL["mobilenet_v3_small"]().eval()
    found = trace(graph_of(net, torch.rand(2, 3, 32, 32)))
    assert [why for _, why in found.dense] == ["output layer (never pruned)"]
    gated = [g for g in found.groups if "gated" in g.kinds]
    assert gated and all(any("fc2" in s.param for s in g.weights) for g in gated)


def test_swin_window_heads_take_their_relative_position_bias_and_shifted_window_mask():
    net = SMALL["swin"]().eval()
    x = torch.rand(2, 3, 32, 32)
    gm = graph_of(net, x)
    heads = [g for g in trace(gm, x[:1]).groups if "heads" in g.kinds]
    assert [g.size for g in heads] == [2, 2, 4, 4]  # the shifted blocks' too
    tables = [s.param for g in heads for s in g.carried]
    assert len(tables) == 4 and all("relative_position_bias_table" in t for t in tables)
    assert all(s.axis == 1 for g in heads for s in g.carried)  # [positions, heads]
    shifted = heads[1]  # the per-window mask is added between two views that write the heads
    assert sum(1 for name, _, per_unit in shifted.reshapes if name.startswith("view")) == 2


def test_vit_heads_are_pruned_in_every_layer_though_export_shares_batch_times_heads():
    net = SMALL["vit"]().eval()
    x = torch.rand(2, 3, 32, 32)
    gm = graph_of(net, x)
    heads = [g for g in trace(gm, x[:1]).groups if "heads" in g.kinds]
    assert [g.size for g in heads] == [4, 4]  # nn.MultiheadAttention, tokens first
    sizes = [name for g in heads for name, _, _ in g.reshapes
             if next(n for n in gm.graph.nodes if n.name == name).target is operator.mul]
    assert len(sizes) == len(set(sizes)) == 2  # each layer's batch x heads its own
