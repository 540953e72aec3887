"""The PCA rank-reduction baseline (the activation-based pruning paper, §3.4): every hidden
layer's output replaced by its projection onto the top-k principal components of its
calibration activations, folded into the next layer's weights, so that it is one more model
to compare with a pruned one at equal ranks."""

from __future__ import annotations

import copy

import torch
from torch import fx

from ..graph.capture import get_tensor, outputs_of, set_tensor
from ..graph.groups import PrunableGroup
from ..io.cores import batch_starts
from .error import ranks_by_error
from .lsq import Moments


def pca_projected(gm: fx.GraphModule, groups: tuple[PrunableGroup, ...], x: torch.Tensor,
                  ranks: dict[str, int], *, batch_size: int = 1000) -> fx.GraphModule:
    """A copy of `gm` where the units of every group in `ranks` reach their consumer as
    mean + U Uᵀ (h - mean), U the top `ranks[g]` principal directions of h on `x` (measured
    on the model projected so far, in graph order): the consumer's weights become W U Uᵀ and
    its bias b + W (I - U Uᵀ) mean. Each group must be read by one Linear alone."""
    if not ranks_by_error(gm, groups):
        raise ValueError("the PCA baseline needs every layer read by one Linear alone")
    out = copy.deepcopy(gm)
    nodes = {n.name: n for n in out.graph.nodes}
    for g in groups:
        if g.name not in ranks:
            continue
        s, bias_name = g.consumers[0], g.consumer_biases[0]
        probe = outputs_of(out, [nodes[g.consumer_nodes[0]].args[0].name])
        moments = Moments(g.size)
        with torch.no_grad():
            for start in batch_starts(x.shape[0], batch_size):
                a = probe(x[start:start + batch_size])[0]
                moments.add(a.reshape(-1, g.size))
        mean, cov = moments.mean_cov()
        k = max(0, min(ranks[g.name], g.size))
        u = torch.linalg.eigh(cov).eigenvectors[:, g.size - k:]  # eigh: ascending
        projection = u @ u.T
        w = get_tensor(out, s.param).detach()
        w64 = w.double().movedim(s.axis, -1)  # [outputs, units]
        set_tensor(out, s.param, (w64 @ projection).movedim(-1, s.axis).to(w.dtype))
        if bias_name:
            b = get_tensor(out, bias_name).detach()
            shift = w64 @ (mean - projection @ mean)
            set_tensor(out, bias_name, (b.double() + shift).to(b.dtype))
    return out
