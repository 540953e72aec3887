"""A channel cat that holds each unit twice: GhostNet's `cat([x, cheap(x)])`, the cheap operation
a depthwise convolution of x. Unit j of x is channel j of each half, so the layers after the cat
(a strided depthwise convolution, a squeeze-excitation gate, a residual add, GhostNetV2's
resized attention gate) read it in two parts, the layers before it once."""

from __future__ import annotations

import copy

import torch
from torch import nn

import compressor
from compressor.graph.capture import get_tensor, set_tensor
from compressor.graph.trace import trace
from tests.helpers import graph_of, remove_units


class Ghost(nn.Module):
    """primary 1x1 conv (BN, ReLU or none) -> x1; cheap depthwise 3x3 of x1 -> x2;
    cat([x1, x2]) cut to `out` channels, as timm writes it. With `gate`, GhostNetV2's
    attention: sigmoid of convolutions of the pooled input, resized back, multiplies it."""

    def __init__(self, cin: int, out: int, act: bool, gate: bool = False) -> None:
        super().__init__()
        half, self.out = out // 2, out
        relu = nn.ReLU if act else nn.Identity
        self.primary = nn.Sequential(nn.Conv2d(cin, half, 1, bias=False), nn.BatchNorm2d(half),
                                     relu())
        self.cheap = nn.Sequential(nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False),
                                   nn.BatchNorm2d(half), relu())
        self.gate = nn.Sequential(nn.Conv2d(cin, out, 1), nn.Conv2d(out, out, (1, 5), padding=(
            0, 2), groups=out), nn.Sigmoid()) if gate else None

    def forward(self, x):
        x1 = self.primary(x)
        out = torch.cat([x1, self.cheap(x1)], dim=1)[:, :self.out]
        if self.gate is not None:
            g = self.gate(nn.functional.avg_pool2d(x, 2, 2))
            out = out * nn.functional.interpolate(g, size=out.shape[-2:], mode="nearest")
        return out


class GhostNet(nn.Module):
    """stem; a ghost bottleneck with an identity shortcut; one strided with a depthwise conv, a
    squeeze-excitation gate, a GhostNetV2 gate and a convolutional shortcut; mean; head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU())
        self.a1, self.a2 = Ghost(16, 16, True), Ghost(16, 16, False)
        self.b1 = Ghost(16, 48, True, gate=True)
        self.dw = nn.Conv2d(48, 48, 3, 2, 1, groups=48)
        self.se_reduce, self.se_expand = nn.Conv2d(48, 8, 1), nn.Conv2d(8, 48, 1)
        self.b2 = Ghost(48, 24, False)
        self.short = nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1, groups=16), nn.Conv2d(16, 24, 1))
        self.head = nn.Linear(24, 4)
        for m in self.modules():  # statistics a trained net could have
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2)
                m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.a2(self.a1(x))
        h = self.dw(self.b1(x))
        h = h * nn.functional.hardsigmoid(self.se_expand(torch.relu(self.se_reduce(
            h.mean((2, 3), keepdim=True)))))
        x = self.b2(h) + self.short(x)
        return self.head(x.mean((2, 3)))


def _x(n: int = 8) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32)


def test_a_doubling_cat_makes_each_unit_two_channels_after_it_and_one_before():
    gm = graph_of(GhostNet().eval(), _x(2))
    found = trace(gm)
    by_name = {g.name: g for g in found.groups}
    assert {name for name, _ in found.dense} == {"head"}
    b1 = by_name["b1.primary.0"]
    assert (b1.size, b1.parts) == (24, 2)
    parts = {s.param: s.parts for s in b1.weights}
    assert parts["b1_primary_0_weight"] == parts["b1_cheap_0_weight"] == 1  # before the cat
    assert parts["dw_weight"] == parts["se_expand_weight"] == parts["b1_gate_0_weight"] == 2
    # the stream: the stem and the shortcut's convolutions hold each unit twice
    stream = by_name["stem.0"]
    assert stream.size == 8 and {s.param: s.parts for s in stream.weights}["stem_0_weight"] == 2


def test_removing_doubled_units_is_zeroing_both_their_columns_in_every_reader():
    x = _x()
    gm = graph_of(GhostNet().eval(), x[:2])
    groups = trace(gm).groups
    reference = copy.deepcopy(gm)
    removed = {g.name: torch.tensor([1, g.size - 2]) for g in groups}
    for g in groups:
        for s in g.consumers:  # what removal means: no layer reads the units
            t = get_tensor(reference, s.param).clone()
            set_tensor(reference, s.param, t.index_fill_(s.axis, s.entries(removed[g.name]), 0))
    expected = reference(x)
    remove_units(gm, removed)
    torch.testing.assert_close(gm(x), expected, rtol=1e-5, atol=1e-5)
    convs = {n.args[1].target: n for n in gm.graph.nodes
             if n.target == torch.ops.aten.conv2d.default}
    assert convs["b1_cheap_0_weight"].args[6] == 22 and convs["dw_weight"].args[6] == 44
    assert gm.get_parameter("stem_0_weight").shape[0] == 12


def test_a_ghost_net_prunes_and_exports_within_parity():
    result = compressor.compress(GhostNet().eval(), 0.5, of="flops", data=_x(64), latency=False)
    assert 0.5 <= result.report.size.flop_reduction <= 0.52
    assert result.report.parity.max_abs_diff <= 1e-4
