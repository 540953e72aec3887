"""A convolution whose output channels are split into pieces that go their own ways, written as
one convolution per piece. MixNet's mixed depthwise convolution splits a pointwise
convolution's output (after its BatchNorm and activation) by size among depthwise
convolutions of different kernels and concatenates what they make: with one convolution per
piece, each piece is a producer of its own, filtered by its depthwise convolution and put
beside the others by the channel cat, as any two layers would be."""

from __future__ import annotations

import operator

import torch
from torch import fx

from .linears import drop_unused, new_parameter, rewrite_all
from .ops import ACTIVATIONS, CONV

aten = torch.ops.aten
SPLITS = (aten.split.Tensor, aten.split_with_sizes.default)


def split_at_pieces(gm: fx.GraphModule) -> list[str]:
    """Rewrite, in place, every ungrouped convolution (its BatchNorm folded) whose output is
    split along its channels, through elementwise activations read by nothing else, and read
    only piece by piece: one convolution per piece, each through its own copy of the
    activations. (A Linear's output split by width is q, k and v, which `graph.heads` reads
    as they are.) Returns the names of the new layers."""
    return rewrite_all(gm, _split_layer, _rewrite)


def _split_layer(split: fx.Node) -> tuple[fx.Node, list[fx.Node]] | None:
    """(the layer, the activations between it and `split`) where `split` cuts the layer's
    output channels into pieces read one by one; None otherwise."""
    if split.target not in SPLITS:
        return None
    chain, node = [], split.args[0]
    while isinstance(node, fx.Node) and node.target in ACTIVATIONS and len(node.users) == 1 \
            and len(node.all_input_nodes) == 1:
        chain.insert(0, node)
        node = node.args[0]
    if not isinstance(node, fx.Node) or node.target not in CONV or \
            len(node.users) != 1 or not _parameter(node.args[1]):
        return None
    if len(node.args) > 6 and node.args[6] != 1:
        return None  # a grouped convolution's groups would have to be cut alike
    bias = node.args[2] if len(node.args) > 2 else None
    if bias is not None and not _parameter(bias):
        return None
    out = node.meta.get("val")
    dim = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
    if out is None or dim % out.ndim != 1 or any(
            u.target is not operator.getitem for u in split.users):
        return None
    return node, chain


def _parameter(node: object) -> bool:
    """Whether `node` is a tensor of the model that nothing else reads."""
    return isinstance(node, fx.Node) and node.op == "get_attr" and len(node.users) == 1


def _rewrite(gm: fx.GraphModule, split: fx.Node, layer: fx.Node,
             chain: list[fx.Node]) -> list[str]:
    names = gm.meta.setdefault("original_names", {})
    weight, bias = layer.args[1], layer.args[2] if len(layer.args) > 2 else None
    w = getattr(gm, weight.target).detach()
    b = getattr(gm, bias.target).detach() if bias is not None else None
    base = names.get(weight.target, weight.target).removesuffix(".weight")
    widths = [int(v.shape[1]) for v in split.meta["val"]]
    made = []
    for piece in list(split.users):
        k = piece.args[1]
        start, end = sum(widths[:k]), sum(widths[:k + 1])
        cut = (slice(None), slice(start, end))
        part = f"{base}[{start}:{end}]"
        with gm.graph.inserting_before(piece):
            args = list(layer.args)
            args[1] = new_parameter(gm, f"{weight.target}_{start}", w[start:end],
                                    f"{part}.weight", names)
            if b is not None:
                args[2] = new_parameter(gm, f"{bias.target}_{start}", b[start:end],
                                        f"{part}.bias", names)
            node = gm.graph.call_function(layer.target, tuple(args), dict(layer.kwargs))
            node.meta = {"val": layer.meta["val"][cut]}
            made.append(node.name)
            for op in chain:  # the activations, on this piece
                node = gm.graph.call_function(op.target, (node, *op.args[1:]), dict(op.kwargs))
                node.meta = {"val": op.meta["val"][cut]}
        piece.replace_all_uses_with(node)
    drop_unused(gm, [*split.users, split, *reversed(chain), layer], (weight, bias))
    return made
