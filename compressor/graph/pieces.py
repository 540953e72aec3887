"""A gate over a cat of pieces of one Linear, written as one gate per piece. MambaOut's gated CNN
block computes `g, i, c = fc1(x).split(...)` and `act(g) * cat(i, conv(c))`: unit j of the gate
multiplies unit j of the cat, whose first units are i's and the rest the convolution's. Written
as `cat(act(g_i) * i, act(g_c) * conv(c))` with one Linear per piece of fc1's rows (g cut at the
cat's boundary), each product is a gate the tracer follows (its units those of its two
Linears) and the cat puts them side by side before fc2, as it would any two layers."""

from __future__ import annotations

import operator

import torch
from torch import fx

from .linears import CHUNKS, drop_unused, is_constant, new_parameter, rewrite_all
from .ops import ACTIVATIONS, CAT, LINEAR

aten = torch.ops.aten


def split_gate_over_cat(gm: fx.GraphModule) -> list[str]:
    """Rewrite, in place, every product of a piece of a Linear's output (through elementwise
    functions) and a channel cat of its other pieces (each through ops of one input that keep
    its width, as a depthwise convolution between permutes does): one Linear per piece, the
    gate cut at the cat's boundaries. Returns the names of the new Linears."""
    return rewrite_all(gm, _gate_over_cat, _rewrite)


def _gate_over_cat(mul: fx.Node):
    """(the gate's chain from its piece, the cat, the pieces in the cat's order, the split,
    the Linear) if `mul` is such a product, else None."""
    if mul.op != "call_function" or mul.target is not aten.mul.Tensor or len(mul.args) != 2 or \
            not all(isinstance(a, fx.Node) for a in mul.args):
        return None
    cats = [a for a in mul.args if a.target in CAT and len(a.users) == 1]
    if len(cats) != 1:
        return None
    cat = cats[0]
    gate = mul.args[1] if mul.args[0] is cat else mul.args[0]
    val = mul.meta.get("val")
    dim = cat.args[1] if len(cat.args) > 1 else 0
    if val is None or dim % val.ndim != val.ndim - 1:
        return None
    chain = _back(gate, elementwise=True)
    if chain is None:
        return None
    split = chain[0].args[0]
    pieces = [_back(o, elementwise=False) for o in cat.args[0]]
    if any(p is None or p[0].args[0] is not split for p in pieces):
        return None
    linear = split.args[0]
    if not _splits_a_linear(split) or {chain[0], *(p[0] for p in pieces)} != set(split.users) \
            or len(pieces) + 1 != len(split.users):
        return None
    widths = [_width(o) for o in cat.args[0]]
    if None in widths or sum(widths) != _width(gate) or \
            any(w != _width(p[0]) for w, p in zip(widths, pieces)):
        return None
    return chain, cat, [p[0] for p in pieces], split, linear


def _back(node: fx.Node, *, elementwise: bool) -> list[fx.Node] | None:
    """The nodes from a piece of a split (its `getitem`) to `node`, each of one tensor input
    and read by the next alone (elementwise functions only, with `elementwise`), or None."""
    chain = [node]
    while not (node.target is operator.getitem and node.args[0].target in CHUNKS):
        inputs = [a for a in node.args if isinstance(a, fx.Node) and a.op != "get_attr"]
        if len(inputs) != 1 or len(node.users) != 1 or node.op != "call_function" or \
                (elementwise and node.target not in ACTIVATIONS):
            return None
        node = inputs[0]
        chain.insert(0, node)
    return chain if len(chain[0].users) == 1 else None


def _splits_a_linear(split: fx.Node) -> bool:
    """Whether `split` cuts a Linear's output along its features, all of it read by it."""
    linear = split.args[0]
    if not isinstance(linear, fx.Node) or linear.target is not LINEAR or \
            len(linear.users) != 1 or not is_constant(linear.args[1], ndim=2) or \
            len(linear.args[1].users) != 1:
        return False
    bias = linear.args[2] if len(linear.args) > 2 else None
    if bias is not None and not (is_constant(bias, ndim=1) and len(bias.users) == 1):
        return False
    val = split.meta.get("val")
    dim = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
    return val is not None and dim % val[0].ndim == val[0].ndim - 1


def _width(node: fx.Node) -> int | None:
    val = node.meta.get("val")
    val = val[0] if isinstance(val, (list, tuple)) else val
    return int(val.shape[-1]) if isinstance(val, torch.Tensor) else None


def _rows(split: fx.Node, piece: fx.Node) -> tuple[int, int]:
    """The rows of the Linear that `piece` (a getitem of `split`) holds."""
    widths = [int(v.shape[-1]) for v in split.meta["val"]]
    k = piece.args[1]
    return sum(widths[:k]), sum(widths[:k + 1])


def _rewrite(gm: fx.GraphModule, mul: fx.Node, chain: list[fx.Node], cat: fx.Node,
             pieces: list[fx.Node], split: fx.Node, linear: fx.Node) -> list[str]:
    names = gm.meta.setdefault("original_names", {})
    x, weight = linear.args[:2]
    bias = linear.args[2] if len(linear.args) > 2 else None
    w = getattr(gm, weight.target).detach()
    b = getattr(gm, bias.target).detach() if bias is not None else None
    base = names.get(weight.target, weight.target).removesuffix(".weight")
    made = []

    def piece_linear(start: int, end: int, before: fx.Node, like: fx.Node) -> fx.Node:
        part = f"{base}[{start}:{end}]"
        with gm.graph.inserting_before(before):
            args = [x, new_parameter(gm, f"{weight.target}_{start}", w[start:end],
                                  f"{part}.weight", names)]
            if b is not None:
                args.append(new_parameter(gm, f"{bias.target}_{start}", b[start:end],
                                       f"{part}.bias", names))
            node = gm.graph.call_function(LINEAR, tuple(args))
        node.meta = {"val": like.meta["val"][..., :end - start]}
        made.append(node.name)
        return node

    start = _rows(split, chain[0])[0]
    products = []
    for piece, operand in zip(pieces, list(cat.args[0])):
        made_piece = piece_linear(*_rows(split, piece), piece, piece)
        piece.replace_all_uses_with(made_piece)
        operand = made_piece if operand is piece else operand
        width = _width(operand)
        with gm.graph.inserting_before(mul):
            gate = piece_linear(start, start + width, mul, chain[0])
            for node in chain[1:]:  # the gate's functions, on its cut
                args = tuple(gate if a is node.args[0] else a for a in node.args)
                gate = gm.graph.call_function(node.target, args, dict(node.kwargs))
                gate.meta = {"val": node.meta["val"][..., :width]}
            factors = (gate, operand) if mul.args[0] is not cat else (operand, gate)
            product = gm.graph.call_function(aten.mul.Tensor, factors)
            product.meta = {"val": mul.meta["val"][..., :width]}
        products.append(product)
        start += width
    with gm.graph.inserting_before(mul):
        joined = gm.graph.call_function(aten.cat.default, (products, -1))
    joined.meta = dict(mul.meta)
    mul.replace_all_uses_with(joined)
    drop_unused(gm, [mul, cat, *reversed(chain), *pieces, split, linear], (weight, bias))
    return made
