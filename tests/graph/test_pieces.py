"""A gate over a cat of pieces of one Linear (MambaOut's gated CNN block): written as one gate
per piece, each a group the tracer follows, with the same outputs."""

from __future__ import annotations

import copy

import torch
from torch import nn

import compressor
from compressor.graph.trace import trace
from tests.helpers import graph_of, remove_units


class GatedCNN(nn.Module):
    """x + fc2(gelu(g) * cat(i, conv(c))), g, i, c = fc1(norm(x)) split 16 / 10 / 6, conv a
    depthwise 3x3 over c's channels (channels last around it), as timm's MambaOut."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.fc1, self.fc2 = nn.Linear(8, 32), nn.Linear(16, 8)
        self.conv = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x).permute(0, 2, 3, 1)
        g, i, c = torch.split(self.fc1(self.norm(x)), [16, 10, 6], dim=-1)
        c = self.conv(c.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.fc2(nn.functional.gelu(g) * torch.cat((i, c), dim=-1))
        return self.head(x.mean((1, 2)))


def test_a_gate_over_a_cat_of_pieces_is_one_gate_per_piece_with_the_same_outputs():
    net, x = GatedCNN().eval(), torch.rand(4, 3, 8, 8)
    gm = graph_of(net, x[:2])
    assert not any(n.target == torch.ops.aten.split_with_sizes.default for n in gm.graph.nodes)
    torch.testing.assert_close(gm(x), net(x))
    groups = {g.name: g for g in trace(gm).groups}
    # i (fc1's rows 16:26) gated by g's rows 0:10; c (rows 26:32) by g's rows 10:16
    first, second = groups["fc1[16:26]"], groups["fc1[26:32]"]
    assert first.size == 10 and second.size == 6 and second.grouped_nodes  # the conv's filters
    assert {s.param for s in first.weights} == {"fc1_weight_0", "fc1_weight_16"}
    assert {s.param for s in second.weights} == {"fc1_weight_10", "fc1_weight_26", "conv_weight"}
    reference = copy.deepcopy(net)  # fc2 alone reads the units: removing is zeroing its columns
    reference.fc2.weight.data[:, [2, 10]] = 0
    remove_units(gm, {"fc1[16:26]": torch.tensor([2]), "fc1[26:32]": torch.tensor([0])})
    assert gm.get_parameter("fc2_weight").shape == (8, 14)
    assert gm.get_parameter("conv_weight").shape[0] == 5
    torch.testing.assert_close(gm(x), reference(x))


def test_a_gated_cnn_prunes_and_exports_within_parity():
    result = compressor.compress(GatedCNN().eval(), 0.3, data=torch.rand(64, 3, 8, 8),
                                 latency=False)
    assert result.report.size.reduction >= 0.3
    assert result.report.parity.max_abs_diff <= 1e-4
