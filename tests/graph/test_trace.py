from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compressor.graph.capture import get_tensor
from compressor.graph.trace import trace
from tests.helpers import graph_of
from tests.nets import ImageNet, NoReLU, Tied, tiny


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
    found = trace(graph_of(NoReLU(), torch.randn(2, 20)))
    assert found.groups == ()
    assert found.dense == (("a", "not followed by a ReLU (found sigmoid)"),
                           ("b", "output layer (never pruned)"))


class Branching(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 6), nn.Linear(6, 4), nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.a(x))
        return self.b(h) + self.c(h)


def test_a_relu_read_by_two_layers_is_not_pruned():
    found = trace(graph_of(Branching(), torch.randn(2, 8)))
    assert found.groups == ()
    assert found.dense[0] == ("a", "its ReLU output is read by 2 nodes, not by one Linear")


def test_layers_with_shared_weights_are_not_pruned_and_count_once():
    found = trace(graph_of(Tied(), torch.randn(2, 20)))
    assert found.groups == ()
    assert ("a", "its weights are shared with another layer") in found.dense
    assert [layer.name for layer in found.layers] == ["a", "b"]
