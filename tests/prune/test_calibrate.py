from __future__ import annotations

import torch
from torch import nn

from compressor.graph.trace import trace
from compressor.prune.calibrate import count_activations
from tests.helpers import graph_of


def hand_net() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        net[0].bias.zero_()
    return net


X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, -1.0]])


def test_counts_match_hand_computation():
    gm = graph_of(hand_net(), X)
    groups = trace(gm).groups
    stats = count_activations(gm, groups, X)
    # unit 0 fires on x0 > 0 (samples 1, 3), unit 1 on x1 > 0 (2, 3), unit 2 on x0 + x1 < 0 (4)
    assert stats.counts["0"].tolist() == [2, 2, 1]
    torch.testing.assert_close(stats.means["0"], torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64))
    assert stats.samples == 4


def test_counts_accumulate_over_batches():
    gm = graph_of(hand_net(), X)
    groups = trace(gm).groups
    whole = count_activations(gm, groups, X, batch_size=4)
    seen = []
    single = count_activations(gm, groups, X, batch_size=1,
                               progress=lambda done, total: seen.append((done, total)))
    assert single.counts["0"].tolist() == whole.counts["0"].tolist()
    torch.testing.assert_close(single.means["0"], whole.means["0"])
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_counts_are_taken_after_the_relu_not_before():
    net = hand_net()
    with torch.no_grad():
        net[0].bias.copy_(torch.tensor([-5.0, 5.0, 0.0]))  # unit 0 never fires, unit 1 always
    gm = graph_of(net, X)
    groups = trace(gm).groups
    stats = count_activations(gm, groups, X)
    assert stats.counts["0"].tolist() == [0, 4, 1]
    assert stats.dead("0") == 1
