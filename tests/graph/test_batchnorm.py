"""BatchNorm in eval mode is folded into the conv or linear layer before it."""

from __future__ import annotations

import torch
from torch import nn

from compressor.graph.ops import BATCH_NORM
from tests.helpers import graph_of
from tests.nets import SmallCNN, small_resnet


def test_folding_removes_every_batchnorm_and_computes_the_same():
    for net in (SmallCNN(), small_resnet()):
        x = torch.randn(8, 1, 12, 12)
        gm = graph_of(net, x[:2])
        assert not any(n.target in BATCH_NORM for n in gm.graph.nodes)
        with torch.no_grad():
            torch.testing.assert_close(gm(x), net.eval()(x), rtol=1e-5, atol=1e-5)


def test_a_folded_conv_without_bias_gets_one_named_after_it():
    gm = graph_of(SmallCNN(), torch.randn(2, 1, 12, 12))
    names = set(gm.meta["original_names"].values())
    assert "features.4.bias" in names  # the second conv had bias=False
    assert not any("running_mean" in n or n.startswith("features.1") for n in names)


def test_linear_batchnorm1d_relu_is_folded_too():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    x = torch.randn(16, 10)
    gm = graph_of(net, x[:2])
    assert not any(n.target in BATCH_NORM for n in gm.graph.nodes)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), net.eval()(x), rtol=1e-5, atol=1e-5)


def test_batchnorm_after_a_join_is_left_in_place():
    class AfterAdd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
            self.bn, self.out = nn.BatchNorm1d(4), nn.Linear(4, 2)

        def forward(self, x):
            return self.out(torch.relu(self.bn(self.a(x) + self.b(x))))

    gm = graph_of(AfterAdd(), torch.randn(2, 4))
    assert sum(n.target in BATCH_NORM for n in gm.graph.nodes) == 1
