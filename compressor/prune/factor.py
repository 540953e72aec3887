"""Factor: a pruned layer whose inputs cannot be pruned (the first layer of an MLP, 784 pixels
in) replaced by two thinner ones before pruning, `in -> r` (linear) then `r -> out` (the
units), so that each unit it keeps costs r weights instead of `in`.

At high targets such a layer holds most of what is left, and neuron pruning leaves it few
units; factored, it keeps more units, and so does every later layer. The factors are the
data-aware truncated SVD (the error on the layer's calibration inputs is least, not the
weights' distance), and the factored model is fine-tuned before pruning starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn

from ..graph.capture import get_tensor, outputs_of, set_tensor
from ..graph.ops import LINEAR
from ..graph.trace import Trace
from ..io.cores import batch_starts
from .lsq import Moments


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
        gm.meta.setdefault("kept_widths", set()).add(first.name)  # the rank is not pruned
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
        for start in batch_starts(x.shape[0], batch_size):
            moments.add(probe(x[start:start + batch_size])[0].reshape(-1, width))
    return moments.mean_cov()


def _new_name(gm: fx.GraphModule, base: str) -> str:
    name, n = base, 1
    while hasattr(gm, name):
        name, n = f"{base}_{n}", n + 1
    return name
