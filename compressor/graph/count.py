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
    (1 for a Linear on [N, F], H*W for a convolution), and per multiply-add of the products
    of two activations (attention's q·kᵀ and its probabilities times v, for the heads left):
    the count `compress check` makes on the ONNX file."""
    layers = sum(2 * _entries(get_tensor(gm, layer.weight), nonzero) * layer.positions
                 for layer in found.layers)
    return layers + sum(2 * p.now(gm) * p.per_unit() for p in found.products)


def costs(found: Trace, *, of_flops: bool) -> dict[str, int]:
    """What one entry of each counted tensor costs in the unit `--target` counts: a layer's
    weight entry, and a product's unit (`graph.products`: no weights, its multiply-adds)."""
    return {**{layer.weight: layer.positions if of_flops else 1 for layer in found.layers},
            **{p.name: p.per_unit() if of_flops else 0 for p in found.products}}


def shapes(gm: fx.GraphModule, found: Trace) -> dict[str, tuple[int, ...]]:
    """The shape of every counted tensor now: the layers' weights, and one entry per unit of
    each product."""
    return {**{layer.weight: tuple(get_tensor(gm, layer.weight).shape) for layer in found.layers},
            **{p.name: (p.now(gm),) for p in found.products}}


def _entries(w: torch.Tensor, nonzero: bool) -> int:
    return int(torch.count_nonzero(w)) if nonzero else w.numel()
