"""How many samples a pass over a graph may take: the graph's own sizes per sample (read at a
batch of 1), bounded so that what the pass keeps alive fits PROBE_BYTES whatever the data's
size."""

from __future__ import annotations

import math

import torch
from torch import fx

PROBE_BYTES = 1 << 30  # the most activations one pass over calibration data keeps alive


def samples_per_pass(gm: fx.GraphModule, names: list[str], most: int) -> int:
    """How many samples one forward pass of `outputs_of(gm, names)` may take: at most `most`,
    and no more than keep the named outputs (float32) and a float64 copy of the largest of
    them (what a caller sums in) within PROBE_BYTES. A transformer's every feed-forward
    activation over 128 tokens is megabytes per sample: a thousand samples at once would hold
    tens of gigabytes."""
    nodes = {n.name: n for n in gm.graph.nodes}
    entries = [per_sample(nodes[name]) for name in dict.fromkeys(names)]
    bytes_per_sample = 4 * sum(entries) + 8 * max(entries, default=0)
    return max(1, min(most, PROBE_BYTES // max(bytes_per_sample, 1)))


def samples_per_forward(gm: fx.GraphModule, most: int) -> int:
    """How many samples one forward pass of `gm` may take: at most `most`, and no more than
    keep four of its largest activations (a residual block's worth alive at once) within
    PROBE_BYTES."""
    largest = max((per_sample(n) for n in gm.graph.nodes if n.op == "call_function"),
                  default=1)
    return max(1, min(most, PROBE_BYTES // (4 * 4 * largest)))


def per_sample(node: fx.Node) -> int:
    """Entries of `node`'s value per sample, from the graph's own sizes (`meta["val"]`): with
    a dynamic batch, every size at a batch of 1 (a [16 x batch, 256] view of GPT-2's tokens
    holds 16 x 256 per sample); with a fixed one, the sizes after the first axis. A size read
    from the data (an unbacked symbol) counts as 1; a value without sizes as 1."""
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor) or not val.ndim:
        return 1
    sizes = list(val.shape)
    if not any(isinstance(d, torch.SymInt) for d in sizes):
        return math.prod(int(d) for d in sizes[1:])
    entries = 1
    for d in sizes:
        if isinstance(d, torch.SymInt):
            expr = d.node.expr
            try:
                d = int(expr.subs({s: 1 for s in expr.free_symbols}))
            except (TypeError, ValueError):
                d = 1
        entries *= max(int(d), 1)
    return entries
