"""A pre-norm transformer's LayerNorms exported as RMSNorms: onnxruntime's RMSNorm kernel reads
each token once where its LayerNorm reads it twice (mean, then variance), and a small
transformer's norms are a share of its time that does not shrink with its FLOPs."""

from __future__ import annotations

import copy

from torch import fx

from ..graph.trace import trace
from ..prune import rotate


def rms_streams(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of `gm` whose residual streams read through LayerNorms are read through RMSNorms
    instead (`rotate.make_invariant`: each norm's scale and shift folded into the layers that
    read it, every writer's output centred, so that the stream's mean is zero and a LayerNorm
    equals an RMSNorm); `gm` itself where it has no LayerNorm, or no stream can be made so
    (a post-norm block, a layer that reads the stream without a norm: `rotate.why_not`). The
    function is unchanged up to rounding."""
    if not any(n.target is rotate.LAYER_NORM for n in gm.graph.nodes):
        return gm
    copied = copy.deepcopy(gm)
    streams = [g for g in trace(copied, stream=True).groups if g.stream and
               rotate.why_not(copied, g) is None and
               any(n.target is rotate.LAYER_NORM for n in rotate.norms_of(copied, g))]
    if not streams:
        return gm
    for g in streams:
        rotate.make_invariant(copied, g)
    return copied

