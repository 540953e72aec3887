"""torchvision's architectures, built small (32 x 32 inputs, few channels): each traced, pruned
to 40% fewer FLOPs in one shot and exported within parity; what stays dense is named."""

from __future__ import annotations

import pytest
import torch

import compressor
from compressor.graph.trace import trace
from models.vision import import_torchvision
from tests.helpers import graph_of

tv = import_torchvision()
from torchvision.models import convnext, regnet, resnet, shufflenetv2  # noqa: E402

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
}
DENSE = {  # what may stay dense, by model
    "mobilenet_v3_small": {"output layer"},
    "regnet_y": {"output layer"},
    "resnext": {"output layer"},
    "shufflenet_v2": {"output layer", "reshaped by view", "depthwise convolution"},
    "convnext": {"output layer", "residual stream", "depthwise convolution", "filters the "},
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
    dense = {row.note for row in report.layers if not row.note.startswith("pruned")}
    assert all(any(known in note for known in DENSE[name]) for note in dense), dense


def test_squeeze_excitation_and_linear_bottlenecks_leave_nothing_dense_in_mobilenet_v3():
    net = SMALL["mobilenet_v3_small"]().eval()
    found = trace(graph_of(net, torch.rand(2, 3, 32, 32)))
    assert [why for _, why in found.dense] == ["output layer (never pruned)"]
    gated = [g for g in found.groups if "gated" in g.kinds]
    assert gated and all(any("fc2" in s.param for s in g.weights) for g in gated)
