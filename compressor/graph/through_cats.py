"""A channel cat whose pieces go on, through ops of one channel at a time, into a residual add
or a gate with a tensor that can be written in the same pieces, or a split at (or coarser
than) the cat's own boundaries: those ops written piece by piece, the cat moved after them.
MixNet's mixed convolutions are pieces concatenated (pointwise convolutions over split inputs,
depthwise ones of several kernels), then a BatchNorm and an activation over the whole, then
squeeze-excitation's gate, the block's residual add or the next block's split of its input.
Piece by piece, each BatchNorm follows its convolution (and folds into it), each piece is a
producer whose units the tracer follows to its own gate, add and split, and the cat stays
only where one layer reads every piece.

The other way round, a tensor split among layers that is no cat (SKNet's paths each reading
half of the residual stream) is written in the split's pieces back to the layers that make
it (`channel_pieces`): the stream then is pieces too, each a space of its own, read whole
through a cat."""

from __future__ import annotations

import itertools

from torch import fx

from .channel_pieces import (BINARY, PRODUCTS, SPLITS, cat_widths, coarser, in_pieces, split_sizes,
                             unary_input, write_in_pieces)
from .linears import rewrite_all
from .ops import ADD, CONV


def through_cats(gm: fx.GraphModule) -> list[str]:
    """Rewrite, in place, the ops after every channel cat of 4-D pieces that lead to a join
    the tracer can only follow piece by piece, and the tensors split among layers (module
    docstring), until none is left. Returns the names of the new nodes."""
    made = []
    while True:
        found = rewrite_all(gm, _refinable, _refine) + rewrite_all(gm, _pushable, _push) + \
            rewrite_all(gm, _nested, _flatten) + rewrite_all(gm, _split_made, _split_back)
        if not found:
            break
        made += found
        gm.graph.eliminate_dead_code()  # a cat no one reads any more counts as a reader
    gm.recompile()
    kept = {n.name for n in gm.graph.nodes}
    return [name for name in made if name in kept]


def _after(node: fx.Node) -> list[int] | None:
    """The widths `node` keeps piece by piece, where it is a cat or one of its channel-wise
    ops read from one (the tensor a pushed op will make a cat of)."""
    found = cat_widths(node)
    if found is not None:
        return found
    return _after(node.args[0]) if unary_input(node) is not None else None


def _joins(node: fx.Node, widths: list[int]) -> bool:
    """Whether `node` adds or multiplies two tensors of pieces of `widths` (each a cat, or
    read from one through ops of one channel), or multiplies one by a gate over its channels
    ([batch, channels, 1, 1]) that can be written in the same pieces (squeeze-excitation's)."""
    if node.target not in BINARY or len(node.args) != 2 or \
            not all(isinstance(a, fx.Node) for a in node.args):
        return False
    a, b = node.args
    if _after(a) == widths and _after(b) == widths:
        return True
    return node.target in PRODUCTS and any(
        _after(x) == widths and _gate(g) and in_pieces(g, widths) for x, g in ((a, b), (b, a)))


def _gate(node: fx.Node) -> bool:
    val = node.meta.get("val")
    return val is not None and val.ndim == 4 and tuple(val.shape[2:]) == (1, 1)


def _added(node: fx.Node, cat: fx.Node, widths: list[int]) -> bool:
    """Whether `node` adds the cat and a tensor that can be written in its pieces (a residual
    add of a stream of pieces and a layer's output)."""
    if node.target not in ADD or len(node.args) != 2:
        return False
    return in_pieces(node.args[1] if node.args[0] is cat else node.args[0], widths)


def _needs(node: fx.Node, widths: list[int], depth: int = 0) -> bool:
    """Whether `node`, reading a tensor of pieces of `widths`, leads (through ops of one
    channel) to a join that only pieces make followable."""
    if depth > 16 or node.op != "call_function":
        return False
    if node.target in SPLITS:
        return coarser(split_sizes(node), widths)
    if cat_widths(node) is not None:  # a cat of this one's pieces and others
        return any(_needs(u, cat_widths(node), depth + 1) for u in node.users)
    if node.target in CONV and depth == 0 and unary_input(node) is not None:
        return True  # a depthwise convolution over a cat filters each piece's units alone
    if _joins(node, widths):
        return True
    if unary_input(node) is not None:
        return any(_needs(u, widths, depth + 1) for u in node.users)
    return False


def _pushable(node: fx.Node):
    """(the cat, its widths) where `node` is an op the cat's pieces should go through (it
    reads a cat and leads to a join only pieces make followable), else None."""
    if node.op != "call_function" or not node.args or getattr(node, "_erased", False):
        return None
    for arg in node.args[:2]:
        widths = cat_widths(arg)
        if widths is None:
            continue
        if node.target in SPLITS and coarser(split_sizes(node), widths) or \
                _joins(node, widths) or _added(node, arg, widths) or \
                unary_input(node) is arg and _needs(node, widths):
            return arg, widths
    return None


def _push(gm: fx.GraphModule, node: fx.Node, cat: fx.Node, widths: list[int]) -> list[str]:
    if node.target not in SPLITS:
        return [p.name for p in write_in_pieces(gm, node, widths)]
    pieces = write_in_pieces(gm, cat, split_sizes(node))  # the split's, of the cat's pieces
    for user in list(node.users):
        user.replace_all_uses_with(pieces[user.args[1]])
        gm.graph.erase_node(user)
    gm.graph.erase_node(node)
    return [cat.name]


def _nested(cat: fx.Node):
    """(the pieces of `cat` with every piece that is a cat read by it alone put in its own
    pieces' place,) if there is one; else None."""
    if getattr(cat, "_erased", False) or cat_widths(cat) is None:
        return None
    inner = [p for p in cat.args[0] if cat_widths(p) is not None and len(p.users) == 1]
    if not inner:
        return None
    return ([q for p in cat.args[0] for q in (p.args[0] if p in inner else [p])],)


def _flatten(gm: fx.GraphModule, cat: fx.Node, pieces: list[fx.Node]) -> list[str]:
    inner = [p for p in cat.args[0] if p not in pieces]
    cat.args = (pieces, *cat.args[1:])
    for p in inner:
        gm.graph.erase_node(p)
    return [cat.name]


def _refinable(split: fx.Node):
    """(the cat, the pieces of its pieces) where `split` cuts, through ops of one channel, a
    cat at other boundaries than its pieces', and every piece a boundary falls inside can be
    written in pieces there (MixNet-M's two pointwise pieces read by three depthwise
    kernels); else None."""
    if split.op != "call_function" or split.target not in SPLITS or \
            getattr(split, "_erased", False):
        return None
    sizes, node = split_sizes(split), split.args[0]
    while isinstance(node, fx.Node) and cat_widths(node) is None and \
            unary_input(node) is not None:
        node = node.args[0]
    widths = cat_widths(node)
    if sizes is None or widths is None or coarser(sizes, widths) or sum(sizes) != sum(widths):
        return None
    cuts = sorted(set(itertools.accumulate(sizes)) | set(itertools.accumulate(widths)))
    starts = list(itertools.accumulate([0, *widths]))
    finer = []
    for piece, start, end in zip(node.args[0], starts, starts[1:]):
        inner = [start, *(c for c in cuts if start < c < end), end]
        finer.append([b - a for a, b in zip(inner, inner[1:])])
        if len(finer[-1]) > 1 and not in_pieces(piece, finer[-1]):
            return None
    return node, finer


def _refine(gm: fx.GraphModule, split: fx.Node, cat: fx.Node,
            finer: list[list[int]]) -> list[str]:
    """Each piece of the cat a boundary falls inside written in its own pieces (the cat then
    holds their cat, which `_flatten` opens)."""
    for piece, parts in zip(list(cat.args[0]), finer):
        if len(parts) > 1:
            write_in_pieces(gm, piece, parts)
    return [cat.name]


def _split_made(split: fx.Node):
    """(the sizes,) where `split` cuts a tensor that is no cat but can be written in those
    pieces (SKNet's paths reading halves of the residual stream); else None."""
    if split.op != "call_function" or split.target not in SPLITS or \
            getattr(split, "_erased", False):
        return None
    sizes = split_sizes(split)
    if sizes is None or len(sizes) < 2 or cat_widths(split.args[0]) is not None or \
            not in_pieces(split.args[0], sizes):
        return None
    return (sizes,)


def _split_back(gm: fx.GraphModule, split: fx.Node, sizes: list[int]) -> list[str]:
    """The split's tensor written in its pieces: the split then reads a cat of them (which
    `_push` resolves)."""
    return [p.name for p in write_in_pieces(gm, split.args[0], sizes)]
