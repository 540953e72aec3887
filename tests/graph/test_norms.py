"""RMSNorms written out op by op become one `rms_norm` node in the working graph; forms that
only look alike stay as they are."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.helpers import graph_of

aten = torch.ops.aten


class WrittenOut(nn.Module):
    """Linear -> an RMSNorm as Hugging Face writes it (Llama's, with its casts; Gemma's, with
    a computed weight; T5's, with no casts; or a near miss) -> Linear."""

    def __init__(self, form: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.form = form
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)
        self.weight = nn.Parameter(torch.rand(8) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.form == "llama":
            h = h.to(torch.float32)
            variance = h.pow(2).mean(-1, keepdim=True)
            h = self.weight * (h * torch.rsqrt(variance + 1e-6)).to(torch.float32)
        elif self.form == "gemma":  # its weight computed, its result cast back
            normed = h.float() * torch.rsqrt(h.float().pow(2).mean(-1, keepdim=True) + 1e-6)
            h = (normed * (1.0 + self.weight.float())).type_as(h)
        elif self.form == "t5":
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight
        elif self.form == "over tokens":  # the mean over another axis: not a norm of features
            h = h * torch.rsqrt(h.pow(2).mean(1, keepdim=True) + 1e-6) * self.weight
        else:  # a cube: not an RMSNorm
            h = h * torch.rsqrt(h.pow(3).mean(-1, keepdim=True).abs() + 1e-6) * self.weight
        return self.fc2(h)


@pytest.mark.parametrize(("form", "norms"), [("llama", 1), ("gemma", 1), ("t5", 1),
                                             ("over tokens", 0), ("cube", 0)])
def test_an_rms_norm_written_out_becomes_one_node_with_the_same_outputs(form, norms):
    net, x = WrittenOut(form).eval(), torch.randn(7, 5, 6)
    gm = graph_of(net, x[:2])
    found = [n for n in gm.graph.nodes if n.target is aten.rms_norm.default]
    assert len(found) == norms
    assert any(n.target is aten.rsqrt.default for n in gm.graph.nodes) == (norms == 0)
    if found:
        assert found[0].args[1] == [8] and found[0].args[3] == pytest.approx(1e-6)
        assert found[0].args[2].op == "get_attr"  # the weight, scaled with the features
    torch.testing.assert_close(gm(x), net(x), rtol=1e-5, atol=1e-6)
