"""The working graph keeps conv kernels channels-last (torch's fast CPU layout) through every
replacement, and computes what the model computes."""

from __future__ import annotations

import torch

from compressor.graph.capture import get_tensor, set_tensor
from tests.helpers import graph_of
from tests.nets import SmallCNN, tiny


def _kernels(gm) -> dict[str, torch.Tensor]:
    return {name: p for name, p in gm.named_parameters() if p.ndim == 4}


def test_conv_kernels_are_channels_last_and_stay_so_when_replaced():
    net = SmallCNN().eval()
    x = torch.randn(8, 1, 12, 12)
    gm = graph_of(net, x[:2])
    kernels = _kernels(gm)
    assert kernels and all(k.is_contiguous(memory_format=torch.channels_last)
                           for k in kernels.values())
    name = next(iter(kernels))
    set_tensor(gm, name, get_tensor(gm, name).contiguous() * 1.0)  # handed a plain tensor
    assert get_tensor(gm, name).is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), net(x), rtol=1e-5, atol=1e-5)


def test_linear_weights_stay_plainly_contiguous():
    gm = graph_of(tiny(), torch.randn(2, 20))
    assert all(p.is_contiguous() for p in gm.parameters())
