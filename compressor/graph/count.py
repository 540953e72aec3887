"""The one weight counter of the working graph: what `--target` counts."""

from __future__ import annotations

import torch
from torch import fx

from .capture import get_tensor
from .trace import Trace


def weights(gm: fx.GraphModule, found: Trace, *, nonzero: bool = False) -> int:
    """Weight entries of every Linear layer the tracer saw (each shared tensor once); with
    `nonzero`, only the entries that are not zero (what single-weight pruning counts)."""
    tensors = (get_tensor(gm, layer.weight) for layer in found.layers)
    if nonzero:
        return sum(int(torch.count_nonzero(w)) for w in tensors)
    return sum(w.numel() for w in tensors)


def flops(weight_count: int) -> int:
    """FLOPs per sample of Linear layers with `weight_count` weights: a multiply and an add per
    weight (the paper's count)."""
    return 2 * weight_count
