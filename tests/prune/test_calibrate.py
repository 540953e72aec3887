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


def test_a_pass_takes_no_more_samples_than_its_activations_may_hold(monkeypatch):
    """Feed-forward activations over tokens are large per sample: each pass takes as many
    samples as `samples_per_pass` allows (here one), and the counts are those of one pass,
    as are the refit's covariances."""
    from compressor.graph import sizes
    from compressor.prune.error import consumer_problems

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 8))
    x = torch.randn(6, 16, 8)  # 6 samples of 16 tokens
    gm = graph_of(net, x)
    groups = trace(gm).groups
    act = groups[0].activations[0]
    per_sample = 4 * 16 * 64 + 8 * 16 * 64  # the activation, and a float64 copy of it
    assert sizes.samples_per_pass(gm, [act], 1000) == 1000
    whole = count_activations(gm, groups, x)
    problems = consumer_problems(gm, groups, x)
    monkeypatch.setattr(sizes, "PROBE_BYTES", 2 * per_sample)
    assert sizes.samples_per_pass(gm, [act], 1000) == 2
    monkeypatch.setattr(sizes, "PROBE_BYTES", per_sample - 1)
    assert sizes.samples_per_pass(gm, [act], 1000) == 1
    seen = []
    single = count_activations(gm, groups, x, progress=lambda done, total: seen.append(done))
    assert seen == [1, 2, 3, 4, 5, 6]
    assert single.counts["0"].tolist() == whole.counts["0"].tolist()
    torch.testing.assert_close(single.means["0"], whole.means["0"])
    cov = consumer_problems(gm, groups, x)["0"][0]  # each pass's products in float32
    torch.testing.assert_close(cov, problems["0"][0], rtol=1e-5, atol=1e-7)


class TokensAsRows(nn.Module):
    """GPT-2's Conv1D: tokens folded into the batch axis, [batch x tokens, features]."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 64), nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, 8)
        return self.fc2(torch.relu(self.fc1(rows))).reshape(x.shape).mean(1)


def test_a_sample_of_tokens_folded_into_rows_still_counts_all_its_tokens():
    from compressor.graph.sizes import per_sample

    x = torch.randn(6, 16, 8)
    gm = graph_of(TokensAsRows(), x)
    act = trace(gm).groups[0].activations[0]
    node = next(n for n in gm.graph.nodes if n.name == act)
    assert per_sample(node) == 16 * 64


def test_the_counting_pass_takes_the_error_criterions_covariances_as_its_own_pass_does():
    from compressor.prune.error import ConsumerSums, consumer_problems

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 4))
    x = torch.randn(300, 8)
    gm = graph_of(net, x[:2])
    groups = trace(gm).groups
    alone = consumer_problems(gm, groups, x, batch_size=128)
    consumers = ConsumerSums(gm, groups)
    stats = count_activations(gm, groups, x, batch_size=128, consumers=consumers)
    assert stats.counts["0"].tolist() == count_activations(gm, groups, x).counts["0"].tolist()
    together = consumers.problems(gm)
    for name, (cov, w) in alone.items():
        torch.testing.assert_close(together[name][0], cov)
        torch.testing.assert_close(together[name][1], w)
