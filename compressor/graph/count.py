"""The one weight counter of the working graph: what `--target` counts (weights, or FLOPs)."""

from __future__ import annotations

import torch
from torch import fx

from .capture import get_tensor
from .trace import Trace


def weights(gm: fx.GraphModule, found: Trace, *, nonzero: bool = False) -> int:
    """Weight entries of every Linear and Conv layer the tracer saw (each shared tensor once);
    with `nonzero`, only the entries that are not zero (what single-weight pruning counts)."""
    return sum(_entries(get_tensor(gm, layer.weight), nonzero) for layer in found.layers)


def flops(gm: fx.GraphModule, found: Trace, *, nonzero: bool = False) -> int:
    """FLOPs per sample: a multiply and an add per weight per output position it is applied at
    (1 for a Linear on [N, F], H*W for a convolution), the count `compress check` makes on the
    ONNX file."""
    return sum(2 * _entries(get_tensor(gm, layer.weight), nonzero) * layer.positions
               for layer in found.layers)


def costs(found: Trace, *, of_flops: bool) -> dict[str, int]:
    """What one weight entry of each layer costs in the unit `--target` counts."""
    return {layer.weight: layer.positions if of_flops else 1 for layer in found.layers}


def _entries(w: torch.Tensor, nonzero: bool) -> int:
    return int(torch.count_nonzero(w)) if nonzero else w.numel()
