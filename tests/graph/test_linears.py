"""Layers written as products by a weight in the graph become `linear` at capture, so that the
tracer prunes them like any other."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.graph.ops import LINEAR
from compressor.graph.trace import trace
from compressor.prune.shrink import shrink
from tests.helpers import graph_of

FLIPS = {".T": lambda w: w.T, ".t()": lambda w: w.t(), "transpose": lambda w: w.transpose(0, 1),
         "permute": lambda w: w.permute(1, 0)}


class Flipped(nn.Module):
    """Falcon's `FalconLinear`: x @ W.T with W stored [out, in], ReLU between two of them."""

    def __init__(self, flip: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.flip = FLIPS[flip]
        self.w1, self.w2 = nn.Parameter(torch.randn(12, 6)), nn.Parameter(torch.randn(3, 12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.flip(self.w1)) @ self.flip(self.w2)


@pytest.mark.parametrize("flip", FLIPS)
def test_a_product_by_a_transposed_weight_is_a_layer_whose_units_prune(flip):
    net = Flipped(flip).eval()
    x = torch.randn(8, 5, 6)
    gm = graph_of(net, x[:2])
    assert sum(n.target is LINEAR for n in gm.graph.nodes) == 2
    assert not [n for n in gm.graph.nodes if n.op == "call_function" and n.target is not LINEAR
                and n.target is not torch.ops.aten.relu.default]
    torch.testing.assert_close(gm(x), net(x))
    [group] = trace(gm).groups
    assert group.size == 12
    shrink(gm, (group,), {group.name: torch.arange(0, 12, 2)})
    with torch.no_grad():
        net.w2[:, 0::2] = 0  # the removed units, read by nothing
    torch.testing.assert_close(gm(x), net(x), rtol=1e-5, atol=1e-5)
