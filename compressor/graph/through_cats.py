"""A channel cat whose pieces go on, through ops of one channel at a time, into a residual add
with a cat of the same pieces, a gate, or a split at the cat's own boundaries: those ops
written piece by piece, the cat moved after them. MixNet's mixed convolutions are pieces
concatenated (pointwise convolutions over split inputs, depthwise ones of several kernels),
then a BatchNorm and an activation over the whole, then squeeze-excitation's gate, the block's
residual add or the next block's split of its input. Piece by piece, each BatchNorm follows
its convolution (and folds into it), each piece is a producer whose units the tracer follows
to its own gate, add and split, and the cat stays only where one layer reads every piece.

The other way round, a tensor split among layers that is no cat (SKNet's paths each reading
half of the residual stream) is written in the split's pieces back to the layers that make
it, through ops of one channel and residual adds, each convolution cut by its rows: the
stream then is pieces too, each a space of its own, read whole through a cat."""

from __future__ import annotations

import itertools
import operator

import torch
from torch import fx

from .linears import rewrite_all
from .ops import ACTIVATIONS, ADD, BATCH_NORM, CAT, CONV, IDENTITY

aten = torch.ops.aten
SPLITS = (aten.split.Tensor, aten.split_with_sizes.default)
PRODUCTS = (aten.mul.Tensor, aten.mul_.Tensor)
POOLS = (aten.max_pool2d.default, aten.avg_pool2d.default, aten.adaptive_avg_pool2d.default)
BINARY = (aten.add.Tensor, aten.add_.Tensor, aten.sub.Tensor, aten.sub_.Tensor, *PRODUCTS)


def through_cats(gm: fx.GraphModule) -> list[str]:
    """Rewrite, in place, the ops after every channel cat of 4-D pieces that lead to a join
    the tracer can only follow piece by piece (module docstring), until none is left. Returns
    the names of the new cats."""
    made = []
    while True:
        found = rewrite_all(gm, _refinable, _refine) + rewrite_all(gm, _pushable, _push) + \
            rewrite_all(gm, _nested, _flatten) + rewrite_all(gm, _split_made, _split_back) + \
            rewrite_all(gm, _added_to_cat, _cut_operand)
        if not found:
            break
        made += found
        gm.graph.eliminate_dead_code()  # a cat no one reads any more counts as a reader
    gm.graph.eliminate_dead_code()
    gm.recompile()
    kept = {n.name for n in gm.graph.nodes}
    return [name for name in made if name in kept]


def _widths(node: object) -> list[int] | None:
    """The channel widths of the pieces of `node`, if it is a cat of 4-D tensors along the
    channels; else None."""
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


def _after(node: fx.Node) -> list[int] | None:
    """The widths `node` keeps piece by piece, where it is a cat or one of its channel-wise
    ops read from one (the tensor a pushed op will make a cat of)."""
    found = _widths(node)
    if found is not None:
        return found
    if _unary(node) is not None:
        return _after(node.args[0])
    return None


def _unary(node: fx.Node) -> fx.Node | None:
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
        other = node.args[1]
        return x if isinstance(other, (int, float)) else None
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


def _needs(node: fx.Node, widths: list[int], depth: int = 0) -> bool:
    """Whether `node`, reading a tensor of pieces of `widths`, leads (through ops of one
    channel) to a join that only pieces make followable."""
    if depth > 16 or node.op != "call_function":
        return False
    if node.target in SPLITS:
        return _coarser(_split_sizes(node), widths)
    if _widths(node) is not None:  # a cat of this one's pieces and others
        return any(_needs(u, _widths(node), depth + 1) for u in node.users)
    if node.target in CONV and depth == 0 and _unary(node) is not None:
        return True  # a depthwise convolution over a cat filters each piece's units alone
    if node.target in BINARY and _binary(node, widths) is not None:
        return True
    if _unary(node) is not None:
        return any(_needs(u, widths, depth + 1) for u in node.users)
    return False


def _binary(node: fx.Node, widths: list[int]) -> str | None:
    """"cat" where `node` (an add or product) joins two tensors of the same pieces, "gate"
    where it multiplies one by a per-channel gate a layer makes; else None."""
    a, b = node.args[:2] if len(node.args) >= 2 else (None, None)
    if not isinstance(a, fx.Node) or not isinstance(b, fx.Node):
        return None
    if _after(a) == widths and _after(b) == widths:
        return "cat"
    if node.target in PRODUCTS:
        for x, g in ((a, b), (b, a)):
            val, gval = x.meta.get("val"), g.meta.get("val")
            if _after(x) == widths and gval is not None and val is not None and \
                    gval.ndim == 4 and tuple(gval.shape[1:]) == (val.shape[1], 1, 1) and \
                    _layer_behind(g):
                return "gate"
    return None


def _layer_behind(node: fx.Node) -> bool:
    """Whether `node` is an ungrouped convolution's output, through activations that alone
    read it (what `split_layers` cuts into pieces), or a piece of one."""
    if node.target is operator.getitem and node.args[0].target in SPLITS:
        node = node.args[0].args[0]
    while node.target in ACTIVATIONS and len(node.users) == 1:
        node = node.args[0]
    return node.target in CONV and len(node.users) == 1 and \
        (len(node.args) < 7 or node.args[6] == 1)


def _coarser(sizes: list[int] | None, widths: list[int]) -> bool:
    """Whether a split into `sizes` cuts only where the pieces of `widths` meet."""
    return sizes is not None and sum(sizes) == sum(widths) and \
        set(itertools.accumulate(sizes)) <= set(itertools.accumulate(widths))


def _split_sizes(split: fx.Node) -> list[int] | None:
    dim = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
    outs = split.meta.get("val")
    if outs is None or any(v.ndim != 4 for v in outs) or dim % 4 != 1 or \
            any(u.target is not operator.getitem for u in split.users):
        return None
    return [int(v.shape[1]) for v in outs]


def _pushable(node: fx.Node):
    """(the cat, its widths) where `node` is an op the cat's pieces should go through (it
    reads a cat and leads to a join only pieces make followable), else None."""
    if node.op != "call_function" or not node.args or getattr(node, "_erased", False):
        return None
    for arg in node.args[:2]:
        widths = _widths(arg)
        if widths is None:
            continue
        if node.target in SPLITS and _coarser(_split_sizes(node), widths):
            return arg, widths
        if node.target in BINARY and _binary(node, widths) == "gate" or \
                node.target in BINARY and all(_widths(a) == widths for a in node.args[:2]):
            return arg, widths
        if _unary(node) is arg and _needs(node, widths):
            return arg, widths
    return None


def _nested(cat: fx.Node):
    """(the pieces of `cat` with every piece that is a cat read by it alone put in its own
    pieces' place,) if there is one; else None."""
    if getattr(cat, "_erased", False) or _widths(cat) is None:
        return None
    inner = [p for p in cat.args[0] if _widths(p) is not None and len(p.users) == 1]
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
    written in pieces there (`_in_pieces`: MixNet-M's two pointwise pieces read by three
    depthwise kernels); else None."""
    if split.op != "call_function" or split.target not in SPLITS or \
            getattr(split, "_erased", False):
        return None
    sizes, node = _split_sizes(split), split.args[0]
    while isinstance(node, fx.Node) and _widths(node) is None and _unary(node) is not None:
        node = node.args[0]
    widths = _widths(node)
    if sizes is None or widths is None or _coarser(sizes, widths) or sum(sizes) != sum(widths):
        return None
    cuts = sorted(set(itertools.accumulate(sizes)) | set(itertools.accumulate(widths)))
    starts = list(itertools.accumulate([0, *widths]))
    finer = []
    for piece, start, end in zip(node.args[0], starts, starts[1:]):
        inner = [start, *(c for c in cuts if start < c < end), end]
        finer.append([b - a for a, b in zip(inner, inner[1:])])
        if len(finer[-1]) > 1 and not _in_pieces(piece, finer[-1]):
            return None
    return node, finer


def _refine(gm: fx.GraphModule, split: fx.Node, cat: fx.Node,
            finer: list[list[int]]) -> list[str]:
    """Each piece of the cat a boundary falls inside written in its own pieces (the cat then
    holds their cat, which `_flatten` opens)."""
    for piece, parts in zip(list(cat.args[0]), finer):
        if len(parts) > 1:
            _write_in_pieces(gm, piece, parts)
    return [cat.name]


def _push(gm: fx.GraphModule, node: fx.Node, cat: fx.Node, widths: list[int]) -> list[str]:
    graph = gm.graph
    pieces = list(cat.args[0])
    bounds = list(itertools.accumulate([0, *widths]))
    if node.target in SPLITS:  # at the cat's boundaries: its pieces, or cats of them
        cuts = list(itertools.accumulate([0, *_split_sizes(node)]))
        for user in list(node.users):
            start, end = cuts[user.args[1]], cuts[user.args[1] + 1]
            within = [p for p, a, b in zip(pieces, bounds, bounds[1:]) if start <= a and b <= end]
            if len(within) > 1:
                with graph.inserting_before(user):
                    joined = graph.call_function(aten.cat.default, (within, 1))
                joined.meta = dict(user.meta)
                within = [joined]
            user.replace_all_uses_with(within[0])
            graph.erase_node(user)
        graph.erase_node(node)
        return [cat.name]
    val = node.meta["val"]
    with graph.inserting_before(node):
        if node.target in BINARY and _binary(node, widths) == "gate":
            x, g = (node.args[0], node.args[1]) if node.args[0] is cat else \
                (node.args[1], node.args[0])
            split = graph.call_function(aten.split_with_sizes.default, (g, widths, 1))
            split.meta = {"val": list(g.meta["val"].split(widths, 1))}
            gates = []
            for k in range(len(widths)):
                gates.append(graph.call_function(operator.getitem, (split, k)))
                gates[-1].meta = {"val": split.meta["val"][k]}
            others = gates
        elif node.target in BINARY:
            other = node.args[1] if node.args[0] is cat else node.args[0]
            others = list(other.args[0])
        new = []
        for k, (piece, start, end) in enumerate(zip(pieces, bounds, bounds[1:])):
            if node.target in BINARY and not isinstance(node.args[1], (int, float)):
                args = (piece, others[k]) if node.args[0] is cat else (others[k], piece)
                new.append(graph.call_function(_functional(node.target), args))
            else:
                new.append(graph.call_function(_functional(node.target),
                                               _piece_args(gm, node, piece, start, end),
                                               dict(node.kwargs)))
            new[-1].meta = {"val": val[:, start:end]}
        joined = graph.call_function(aten.cat.default, (new, 1))
        joined.meta = {"val": val}
    node.replace_all_uses_with(joined)
    graph.erase_node(node)
    for old in node.args[1:]:  # the per-channel tensors cut above
        if isinstance(old, fx.Node) and old.op == "get_attr" and not old.users:
            graph.erase_node(old)
            delattr(gm, old.target)
    return [joined.name]


def _piece_args(gm: fx.GraphModule, node: fx.Node, piece: fx.Node, start: int,
                end: int) -> tuple:
    """`node`'s arguments for the channels [start, end) alone: its per-channel tensors cut,
    a depthwise convolution's groups made the piece's width."""
    args = list(node.args)
    args[0] = piece
    if node.target is BATCH_NORM[0]:
        for i in range(1, 5):
            if args[i] is not None:
                args[i] = _cut(gm, args[i], start, end)
    elif node.target in CONV:
        per = int(node.args[1].meta["val"].shape[0]) // int(node.args[6])  # filters per channel
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



def _in_pieces(node: object, widths: list[int], depth: int = 0) -> bool:
    """Whether `node` (4-D, channels on axis 1) can be written as a cat of pieces of `widths`
    back to the layers that make it: through ops of one channel and residual adds, to
    ungrouped convolutions (cut by their rows) or cats of such pieces."""
    if not isinstance(node, fx.Node) or node.op != "call_function" or depth > 64:
        return False
    val = node.meta.get("val")
    if val is None or getattr(val, "ndim", 0) != 4 or int(val.shape[1]) != sum(widths):
        return False
    if _widths(node) is not None:
        return _coarser(widths, _widths(node))
    if node.target in CONV:
        bias = node.args[2] if len(node.args) > 2 else None
        return (len(node.args) < 7 or node.args[6] == 1) and _own(node.args[1]) and \
            (bias is None or _own(bias))
    if _unary(node) is not None:
        return _in_pieces(node.args[0], widths, depth + 1)
    if node.target in ADD and len(node.args) == 2:
        return all(_in_pieces(a, widths, depth + 1) for a in node.args)
    return False


def _write_in_pieces(gm: fx.GraphModule, node: fx.Node, widths: list[int]) -> list[fx.Node]:
    """`node` written as pieces of `widths` (`_in_pieces` holds), every other reader of it
    given their cat; the pieces."""
    graph = gm.graph
    bounds = list(itertools.accumulate([0, *widths]))
    val = node.meta["val"]
    if _widths(node) is not None:
        inner = list(itertools.accumulate([0, *_widths(node)]))
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
    if node.target in CONV:
        made = []
        for start, end in zip(bounds, bounds[1:]):
            args = list(node.args)
            with graph.inserting_before(node):
                args[1] = _cut(gm, node.args[1], start, end)
                if len(args) > 2 and args[2] is not None:
                    args[2] = _cut(gm, node.args[2], start, end)
                made.append(graph.call_function(node.target, tuple(args), dict(node.kwargs)))
            made[-1].meta = {"val": val[:, start:end]}
    elif node.target in ADD:
        a = _write_in_pieces(gm, node.args[0], widths)
        b = _write_in_pieces(gm, node.args[1], widths)  # re-read: a cat if `a` wrote it
        made = []
        for k, (start, end) in enumerate(zip(bounds, bounds[1:])):
            with graph.inserting_before(node):
                made.append(graph.call_function(_functional(node.target), (a[k], b[k])))
            made[-1].meta = {"val": val[:, start:end]}
    else:
        inputs = _write_in_pieces(gm, node.args[0], widths)
        made = []
        for piece, start, end in zip(inputs, bounds, bounds[1:]):
            with graph.inserting_before(node):
                made.append(graph.call_function(_functional(node.target),
                                                _piece_args(gm, node, piece, start, end),
                                                dict(node.kwargs)))
            made[-1].meta = {"val": val[:, start:end]}
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


def _split_made(split: fx.Node):
    """(the sizes,) where `split` cuts a tensor that is not a cat but can be written in those
    pieces (`_in_pieces`: SKNet's paths reading halves of the residual stream); else None."""
    if split.op != "call_function" or split.target not in SPLITS or \
            getattr(split, "_erased", False):
        return None
    sizes = _split_sizes(split)
    if sizes is None or len(sizes) < 2 or _widths(split.args[0]) is not None or \
            not _in_pieces(split.args[0], sizes):
        return None
    return (sizes,)


def _split_back(gm: fx.GraphModule, split: fx.Node, sizes: list[int]) -> list[str]:
    """The split's tensor written in its pieces: the split then reads a cat of them (which
    `_push` resolves)."""
    pieces = _write_in_pieces(gm, split.args[0], sizes)
    return [p.name for p in pieces]


def _added_to_cat(node: fx.Node):
    """(the operand to cut, the widths) where `node` adds a cat of pieces and a tensor that
    is no cat but can be written in the same pieces; else None."""
    if node.op != "call_function" or node.target not in ADD or len(node.args) != 2 or \
            getattr(node, "_erased", False):
        return None
    a, b = node.args
    for cat, other in ((a, b), (b, a)):
        widths = _widths(cat)
        if widths is not None and _widths(other) is None and _in_pieces(other, widths):
            return other, widths
    return None


def _cut_operand(gm: fx.GraphModule, node: fx.Node, other: fx.Node,
                 widths: list[int]) -> list[str]:
    return [p.name for p in _write_in_pieces(gm, other, widths)]
