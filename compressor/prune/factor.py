"""Factor: a pruned layer whose inputs cannot be pruned (the first layer of an MLP, 784 pixels
in) replaced by two thinner ones before pruning, `in -> r` (linear) then `r -> out` (the
units), so that each unit it keeps costs r weights instead of `in`.

At 95% fewer weights the paper MLP's first layer holds 80% of them and neuron pruning leaves
it 16 of 300 units; factored at rank 12 it keeps 40, and every later layer keeps more too.
The factors are the data-aware truncated SVD (the error on the layer's calibration inputs is
least, not the weights' distance), and the factored model is fine-tuned before pruning starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn

from ..graph.capture import get_tensor, outputs_of, set_tensor
from ..graph.ops import LINEAR
from ..graph.trace import Trace
from .cycles import STEPS_WIDE
from .pca import Moments

FACTOR_SHARE = 0.8  # auto rank: this share of the units the target leaves a layer on average
MIN_RANK = 4
WIDE = 4  # auto factors a layer only where its inputs are at least this many times the rank


@dataclass(frozen=True)
class Factored:
    """One layer factored: `name` now reads `rank` features that `inner` computes from its
    `in_features` inputs."""

    name: str
    inner: str  # the new layer's display name
    in_features: int
    rank: int
    kept_energy: float  # share of the layer's output variance on the calibration inputs kept


def candidates(gm: fx.GraphModule, found: Trace) -> list[str]:
    """Pruned Linear layers whose input columns no group owns (they read the model's input, or
    a layer that is not pruned): the layers factoring can make cheaper."""
    owned = {s.param for g in found.groups for s in g.consumers}
    pruned = {g.name for g in found.groups}
    nodes = {n.name: n for n in gm.graph.nodes}
    return [layer.name for layer in found.layers
            if layer.kind == "linear" and layer.name in pruned and layer.weight not in owned
            and nodes[layer.node].target is LINEAR and len(nodes[layer.node].args) >= 2]


def auto_rank(out_features: int, in_features: int, target: float, step: int = 1,
              budget: int | None = None) -> int | None:
    """The rank auto factoring gives a layer at `target`, or None where it does not pay: a
    share of the units an even cut would leave, only where the inputs are many times wider.

    Where the layer is at least STEPS_WIDE Gemm steps wide the rank is rounded down to a
    multiple of `step`: a 784 -> 36 factor ran as slowly as a 784 -> 48 one (the paper MLP at
    0.85: 5.3x faster at batch 256 for 6.8x fewer FLOPs with rank 36, 6.2x for 6.7x with 32).
    Never up past a step: the factor is most of what the target leaves (LeNet-300-100 at 0.90:
    rank 24 is 71% of the weights; rounded up to 32 its 300 units fell to 16 and accuracy from
    88.9 to 86.7%). A rank below one step becomes one step where that costs at most
    FACTOR_SHARE of `budget` (the weights the target leaves the model): the paper MLP at 0.95
    with rank 16 ran 13.5x faster at batch 256, with 12 10.9x, at the same accuracy (87.62 and
    87.66% over seeds 0-2); otherwise it stays exact."""
    rank = round(FACTOR_SHARE * (1 - target) * out_features)
    if step > 1 and out_features >= STEPS_WIDE * step:
        if rank >= step:
            rank = step * (rank // step)
        elif budget is not None and step * in_features <= FACTOR_SHARE * budget:
            rank = step
    if rank < MIN_RANK or in_features < WIDE * rank or rank >= out_features:
        return None
    return rank


def factor(gm: fx.GraphModule, found: Trace, ranks: dict[str, int],
           x: torch.Tensor | None, *, batch_size: int = 1000) -> list[Factored]:
    """Replace each layer in `ranks` by two in place: `linear(x, B)` (no bias, `rank` outputs)
    then the layer with weight A, where A B = P W is W followed by the projection P onto the
    `rank` directions of most output variance on `x` (the error on those inputs is least; the
    plain truncated SVD without data), and the bias takes up the mean P drops. A has orthonormal
    columns and B's rows are combinations of W's, so neither is larger than W. Returns what was
    factored, in graph order."""
    nodes = {n.name: n for n in gm.graph.nodes}
    by_name = {layer.name: layer for layer in found.layers}
    names = gm.meta.setdefault("original_names", {})
    done = []
    for name, rank in ranks.items():
        layer = by_name[name]
        node = nodes[layer.node]
        w = get_tensor(gm, layer.weight).detach().double()
        mean, cov = _input_moments(gm, node, x, w.shape[1], batch_size)
        variance, directions = torch.linalg.eigh(w @ cov @ w.T)  # the outputs' covariance
        a = directions[:, -rank:].flip(1)
        b = a.T @ w
        kept = float(variance[-rank:].sum() / variance.clamp_min(0).sum().clamp_min(1e-30))
        bias = node.args[2] if len(node.args) > 2 else None
        if bias is not None:
            shift = (w - a @ b) @ mean
            set_tensor(gm, bias.target, get_tensor(gm, bias.target) + shift.float())
        set_tensor(gm, layer.weight, a.float())
        inner = _new_name(gm, f"{layer.weight}_in")
        gm.register_parameter(inner, nn.Parameter(b.float().contiguous()))
        display = f"{name}_in"
        names[inner] = f"{display}.weight"
        with gm.graph.inserting_before(node):
            getter = gm.graph.get_attr(inner)
            getter.meta["val"] = node.args[1].meta["val"].new_empty((rank, w.shape[1]))
            first = gm.graph.call_function(LINEAR, (node.args[0], getter))
            val = node.meta["val"]
            first.meta["val"] = val.new_empty((*val.shape[:-1], rank))
        node.args = (first, *node.args[1:])
        done.append(Factored(name, display, int(w.shape[1]), rank, kept))
    gm.recompile()
    return done


def _input_moments(gm: fx.GraphModule, node: fx.Node, x: torch.Tensor | None, width: int,
                   batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and covariance of `node`'s input on `x`; zero and I without data."""
    if x is None:
        return torch.zeros(width, dtype=torch.float64), torch.eye(width, dtype=torch.float64)
    probe = outputs_of(gm, [node.args[0].name])
    moments = Moments(width)
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            moments.add(probe(x[start:start + batch_size])[0].reshape(-1, width))
    return moments.mean_cov()


def _new_name(gm: fx.GraphModule, base: str) -> str:
    name, n = base, 1
    while hasattr(gm, name):
        name, n = f"{base}_{n}", n + 1
    return name
