"""A 4-D tensor written as a cat of pieces of its channels, back to the layers that make it:
which ops allow it (`in_pieces`) and the rewrite (`write_in_pieces`). An op of one channel at a
time (an activation, a copy, a pooling, an eval BatchNorm, a depthwise convolution, a number
added or multiplied) becomes one op per piece, its per-channel tensors cut; a sum or product
of two such tensors one per piece; an ungrouped convolution one per piece of its rows; a cat
gives its own pieces (grouped where the pieces asked for are coarser). Every other reader of
a rewritten tensor reads the cat of its pieces."""

from __future__ import annotations

import itertools
import operator

import torch
from torch import fx

from .ops import ACTIVATIONS, BATCH_NORM, CAT, CONV, IDENTITY

aten = torch.ops.aten
SPLITS = (aten.split.Tensor, aten.split_with_sizes.default)
POOLS = (aten.max_pool2d.default, aten.avg_pool2d.default, aten.adaptive_avg_pool2d.default)
PRODUCTS = (aten.mul.Tensor, aten.mul_.Tensor)
BINARY = (aten.add.Tensor, aten.add_.Tensor, aten.sub.Tensor, aten.sub_.Tensor, *PRODUCTS)


def cat_widths(node: object) -> list[int] | None:
    """The channel widths of the pieces of `node`, if it is a cat of 4-D tensors along the
    channels (not GhostNet's cat of a tensor and what it makes, `_doubled`); else None."""
    if not isinstance(node, fx.Node) or node.target not in CAT or _doubled(node):
        return None
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    vals = [p.meta.get("val") if isinstance(p, fx.Node) else None for p in node.args[0]]
    if len(vals) < 2 or any(v is None or v.ndim != 4 for v in vals) or dim % 4 != 1:
        return None
    return [int(v.shape[1]) for v in vals]


def _doubled(cat: fx.Node) -> bool:
    """Whether a piece of `cat` is made from another of its pieces by ops of one input
    (GhostNet's `cat([x, cheap(x)])`, which the tracer reads as each unit held twice)."""
    pieces = [p for p in cat.args[0] if isinstance(p, fx.Node)]
    for piece in pieces:
        node = piece
        for _ in range(8):
            if node.op != "call_function" or not node.args or \
                    not isinstance(node.args[0], fx.Node):
                break
            node = node.args[0]
            if node in pieces:
                return True
    return False


def unary_input(node: fx.Node) -> fx.Node | None:
    """The input of `node` if `node` acts on each channel alone with nothing but numbers and
    its own per-channel tensors (an activation, a copy, a pooling, an eval BatchNorm, a
    depthwise convolution, a product or sum by a number); else None."""
    if node.op != "call_function" or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    x = node.args[0]
    if node.target in ACTIVATIONS or node.target in IDENTITY or node.target in POOLS:
        return x if not any(isinstance(a, fx.Node) for a in node.args[1:]) else None
    if node.target is BATCH_NORM[0]:
        params = node.args[1:5]
        training = len(node.args) > 5 and node.args[5]
        return x if not training and all(p is None or _own(p) for p in params) else None
    if node.target in CONV:
        return x if _depthwise(node) and (len(node.args) < 3 or node.args[2] is None or
                                         _own(node.args[2])) else None
    if node.target in BINARY:
        return x if isinstance(node.args[1], (int, float)) else None
    return None


def _depthwise(conv: fx.Node) -> bool:
    """A convolution of one filter (or several) per channel, each reading its channel alone."""
    weight, val = conv.args[1], conv.meta.get("val")
    w = weight.meta.get("val") if isinstance(weight, fx.Node) else None
    groups = conv.args[6] if len(conv.args) > 6 else 1
    x = conv.args[0].meta.get("val")
    return _own(weight) and w is not None and val is not None and x is not None and \
        groups > 1 and w.shape[1] == 1 and int(x.shape[1]) == groups and \
        int(val.shape[1]) % groups == 0


def _own(node: object) -> bool:
    return isinstance(node, fx.Node) and node.op == "get_attr" and len(node.users) == 1


def coarser(sizes: list[int] | None, widths: list[int]) -> bool:
    """Whether pieces of `sizes` end only where pieces of `widths` meet."""
    return sizes is not None and sum(sizes) == sum(widths) and \
        set(itertools.accumulate(sizes)) <= set(itertools.accumulate(widths))


def split_sizes(split: fx.Node) -> list[int] | None:
    """The channel widths a split of a 4-D tensor along its channels makes, read piece by
    piece; else None."""
    dim = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
    outs = split.meta.get("val")
    if outs is None or any(v.ndim != 4 for v in outs) or dim % 4 != 1 or \
            any(u.target is not operator.getitem for u in split.users):
        return None
    return [int(v.shape[1]) for v in outs]


def in_pieces(node: object, widths: list[int], depth: int = 0) -> bool:
    """Whether `node` (4-D, channels on axis 1) can be written as a cat of pieces of `widths`
    (module docstring)."""
    if not isinstance(node, fx.Node) or node.op != "call_function" or depth > 64:
        return False
    val = node.meta.get("val")
    if val is None or getattr(val, "ndim", 0) != 4 or int(val.shape[1]) != sum(widths):
        return False
    if cat_widths(node) is not None:
        return coarser(widths, cat_widths(node))
    if unary_input(node) is not None:
        return in_pieces(node.args[0], widths, depth + 1)
    if node.target in CONV:
        bias = node.args[2] if len(node.args) > 2 else None
        return (len(node.args) < 7 or node.args[6] == 1) and _own(node.args[1]) and \
            (bias is None or _own(bias))
    if node.target in BINARY and len(node.args) == 2:
        return all(in_pieces(a, widths, depth + 1) for a in node.args)
    return False


def write_in_pieces(gm: fx.GraphModule, node: fx.Node, widths: list[int]) -> list[fx.Node]:
    """`node` written as pieces of `widths` (`in_pieces` holds), every other reader of it
    given their cat (a cat itself stays, its pieces grouped); the pieces."""
    graph = gm.graph
    bounds = list(itertools.accumulate([0, *widths]))
    val = node.meta["val"]
    if cat_widths(node) is not None:
        inner = list(itertools.accumulate([0, *cat_widths(node)]))
        pieces = []
        for start, end in zip(bounds, bounds[1:]):
            within = [p for p, a, b in zip(node.args[0], inner, inner[1:])
                      if start <= a and b <= end]
            if len(within) > 1:
                with graph.inserting_before(node):
                    within = [graph.call_function(aten.cat.default, (within, 1))]
                within[0].meta = {"val": val[:, start:end]}
            pieces += within
        return pieces
    if unary_input(node) is not None:
        inputs = write_in_pieces(gm, node.args[0], widths)
        made = [_op(gm, node, _piece_args(gm, node, piece, start, end), start, end)
                for piece, start, end in zip(inputs, bounds, bounds[1:])]
    elif node.target in CONV:
        made = []
        for start, end in zip(bounds, bounds[1:]):
            args = list(node.args)
            with graph.inserting_before(node):
                args[1] = _cut(gm, node.args[1], start, end)
                if len(args) > 2 and args[2] is not None:
                    args[2] = _cut(gm, node.args[2], start, end)
            made.append(_op(gm, node, tuple(args), start, end))
    else:  # a sum or product of two tensors of these pieces
        a = write_in_pieces(gm, node.args[0], widths)
        b = write_in_pieces(gm, node.args[1], widths)  # re-read: a cat if `a` wrote it
        made = [_op(gm, node, (a[k], b[k]), start, end)
                for k, (start, end) in enumerate(zip(bounds, bounds[1:]))]
    with graph.inserting_before(node):
        joined = graph.call_function(aten.cat.default, (made, 1))
    joined.meta = {"val": val}
    node.replace_all_uses_with(joined)
    graph.erase_node(node)
    for old in node.args[1:]:  # the per-channel tensors cut above
        if isinstance(old, fx.Node) and old.op == "get_attr" and not old.users:
            graph.erase_node(old)
            delattr(gm, old.target)
    return made


def _op(gm: fx.GraphModule, node: fx.Node, args: tuple, start: int, end: int) -> fx.Node:
    """`node`'s op (out of place) on `args`, the piece [start, end) of its output."""
    with gm.graph.inserting_before(node):
        made = gm.graph.call_function(_functional(node.target), args, dict(node.kwargs))
    made.meta = {"val": node.meta["val"][:, start:end]}
    return made


def _piece_args(gm: fx.GraphModule, node: fx.Node, piece: fx.Node, start: int,
                end: int) -> tuple:
    """`node`'s arguments for the channels [start, end) alone: its per-channel tensors cut,
    a depthwise convolution's groups made the piece's width."""
    args = list(node.args)
    args[0] = piece
    with gm.graph.inserting_before(node):
        if node.target is BATCH_NORM[0]:
            for i in range(1, 5):
                if args[i] is not None:
                    args[i] = _cut(gm, args[i], start, end)
        elif node.target in CONV:
            per = int(node.args[1].meta["val"].shape[0]) // int(node.args[6])  # per channel
            args[1] = _cut(gm, args[1], start * per, end * per)
            if len(args) > 2 and args[2] is not None:
                args[2] = _cut(gm, args[2], start * per, end * per)
            args[6] = end - start
    return tuple(args)


def _cut(gm: fx.GraphModule, tensor: fx.Node, start: int, end: int) -> fx.Node:
    """A new tensor of the model: rows [start, end) of `tensor` (a parameter stays one, a
    buffer a buffer), named after the original's rows in the report."""
    names = gm.meta.setdefault("original_names", {})
    value = getattr(gm, tensor.target).detach()[start:end].clone()
    base = f"{tensor.target}_{start}"
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    if tensor.target in dict(gm.named_buffers()):
        gm.register_buffer(name, value)
    else:
        gm.register_parameter(name, torch.nn.Parameter(value))
    layer, _, kind = names.get(tensor.target, tensor.target).rpartition(".")
    names[name] = f"{layer}[{start}:{end}].{kind}" if layer else f"{kind}[{start}:{end}]"
    node = gm.graph.get_attr(name)
    node.meta["val"] = tensor.meta["val"][start:end]
    return node


def _functional(target):
    """The out-of-place form of an in-place op (`relu_` -> `relu`): a piece may be read by
    other ops too."""
    packet = getattr(target, "overloadpacket", None)
    name = getattr(packet, "__name__", "")
    if name.endswith("_") and not name.startswith("_") and hasattr(aten, name[:-1]):
        return getattr(getattr(aten, name[:-1]), target._overloadname)
    return target
