"""Ops where one space meets another: a residual add, a cat (along the units: each operand keeps
its space at an offset; along another axis: the operands' spaces join), a product (by a number
or a per-unit constant: the units pass on; by another space, as a gate: the spaces join)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import fx

from ..groups import Slice
from ..ops import ACTIVATIONS, ADD, ADDCMUL, BATCH_NORM, CAT, IDENTITY, MUL
from .layers import depthwise
from .registry import At, describe, ndim, rule, sources, width

COPIES_OF_CONSTANTS = ("clone", "alias", "detach", "contiguous", "_to_copy", "to.dtype")
aten = torch.ops.aten
SHAPINGS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default,
            aten.unsqueeze.default)  # a per-channel parameter laid out to broadcast
PASSED = (torch.ops.aten.expand.default, torch.ops.aten.slice.Tensor)


def cat_dim(cat: fx.Node) -> int:
    dim = cat.args[1] if len(cat.args) > 1 else cat.kwargs.get("dim", 0)
    return int(dim) % ndim(cat)


def _joined_backward(operands):
    def backward(node: fx.Node, axis: int):
        tensors = [a for a in operands(node) if isinstance(a, fx.Node)  # numbers shift alike
                   and _parameter(a) is None]  # a parameter's entries are carried (`_carry`)
        found = [sources(a, axis) if ndim(a) == ndim(node) else None for a in tensors]
        return None if not found or any(f is None for f in found) else \
            [s for f in found for s in f]

    return backward


def _join_all(walk, at: At, node: fx.Node, operands, what: str) -> At | None:
    """Join the space of every operand of `node` but the walk's own; an operand that is no
    traced layer's output fails the space, and the walk goes on to find every layer the space
    reaches (and the reason that explains it best)."""
    if at.block != 1:
        walk.fail(f"its flattened output is {what} another tensor")
        return None
    for operand in operands:
        if operand is at.node or _carry(walk, at, node, operand):
            continue
        found = sources(operand, at.axis) if ndim(operand) == ndim(node) else None
        if found is None:
            walk.fail(f"its output is {what} {describe(operand)}, which is not the output of a "
                      "traced layer")
            continue
        for source in found:
            walk.join(source)
    return At(node, 1, (), at.axis, at.axis, source=node)


def _shifted(user: fx.Node, at: At) -> bool:
    """Whether `user` adds to the walk's tensor only numbers or one-value parameters."""
    return all(not isinstance(a, fx.Node) or _one_value(a) for a in user.args[:2]
               if a is not at.node)


@rule(*ADD, backward=_joined_backward(lambda node: node.args[:2]), behind_cat=_shifted)
def add(walk, at: At, user: fx.Node):
    """A residual add: every operand's space joins this one; the add carries it on. A number
    added (or subtracted), or a parameter of one value (StarReLU's learned bias), shifts each
    unit alike: a function of each unit. A parameter of one value per unit (ConvNeXt-V2's
    response-norm bias, `γ · x + β` written out) shifts each unit by its own: its entries go
    with the units (on the residual stream, where a position table also spans the tokens,
    `_carry` takes them)."""
    if _shifted(user, at):
        return replace(at, node=user, acts=(*at.acts, user))
    other = user.args[1] if user.args[0] is at.node else user.args[0]
    constant = _constant(other) if isinstance(other, fx.Node) else None
    if constant is not None and not walk.spaces.stream:
        return _scaled(walk, at, user, other, "added to")
    return _join_all(walk, at, user, user.args[:2], "added to")


def _one_value(node: fx.Node) -> bool:
    parameter = _parameter(node)
    val = parameter.meta.get("val") if parameter is not None else None
    return val is not None and val.numel() == 1


def _carry(walk, at: At, node: fx.Node, operand: object) -> bool:
    """Whether `operand` is a parameter with one entry per unit that goes with them (a
    position table added to the stream, a class token concatenated before its tokens; only
    where the stream is pruned): then its entries are carried."""
    parameter = _parameter(operand) if walk.spaces.stream else None
    if parameter is None:
        return False
    val, size = parameter.meta.get("val"), width(at.node, at.axis)
    own_axis = at.axis - (ndim(node) - val.ndim) if val is not None else -1
    if own_axis < 0 or size is None or int(val.shape[own_axis]) != size or \
            len(parameter.users) != 1:
        walk.fail(f"its output is {'added to' if node.target in ADD else 'concatenated with'} "
                  f"{parameter.name}, a parameter that does not follow its units")
        return True
    walk.space.carried[parameter.target, at.offset] = Slice(parameter.target, own_axis, 1,
                                                            at.offset)
    return True


def _parameter(node: object) -> fx.Node | None:
    """The parameter or buffer `node` is, through copies, a broadcast (`expand`) and slices
    of other axes (a position table cut to the sequence's length), or None."""
    while isinstance(node, fx.Node) and node.op == "call_function" and node.args and (
            node.target in PASSED or any(c in str(node.target) for c in COPIES_OF_CONSTANTS)):
        node = node.args[0]
    return node if isinstance(node, fx.Node) and node.op == "get_attr" else None


def _cat_backward(node: fx.Node, axis: int):
    if cat_dim(node) == axis:
        first = doubled(node)
        return None if first is None else sources(first, axis)
    return _joined_backward(lambda n: n.args[0])(node, axis)


@rule(*CAT, backward=_cat_backward,
      behind_cat=lambda user, at: cat_dim(user) == at.axis)
def cat(walk, at: At, user: fx.Node):
    if cat_dim(user) != at.axis:
        # along another axis (a class token before the patch tokens): unit j of every operand
        # is unit j of the result, so the operands' spaces join as at an add
        return _join_all(walk, at, user, user.args[0], "concatenated with")
    if doubled(user) is not None:
        return _doubled(walk, at, user)
    return _concat(walk, at, user)


def doubled(cat_node: fx.Node) -> fx.Node | None:
    """The first operand of a channel `cat` whose second is made from it channel by channel
    (GhostNet's `cat([x, cheap(x)])`, cheap a depthwise convolution and elementwise
    functions): the cat holds each of x's units twice, once in each half. None for any
    other cat."""
    operands = cat_node.args[0]
    if len(operands) != 2 or ndim(cat_node) != 4 or cat_dim(cat_node) != 1:
        return None
    first, node = operands
    if width(first, 1) is None or width(first, 1) != width(node, 1):
        return None
    while node is not first:
        if not isinstance(node, fx.Node) or node.op != "call_function" or not node.args or \
                len(node.users) != 1 or not (
                    node.target in ACTIVATIONS or node.target in IDENTITY or
                    node.target in BATCH_NORM or depthwise(node)):
            return None
        node = node.args[0]
    return first


def _doubled(walk, at: At, cat_node: fx.Node) -> At | None:
    """A cat that holds the units twice: unit j is channel j of each half, as in a grouped
    convolution of two groups; the layers before it hold the units once. Reached from both
    halves, it carries them on once (the walk passes a node once)."""
    space, once = walk.space, width(cat_node.args[0][0], 1)
    if at.block != 1 or at.offset or at.behind or space.parts not in (1, 2) or \
            space.once not in (0, once):
        walk.fail(f"its channels are doubled by {cat_node.name} beside other channels or "
                  "grouped otherwise")
        return None
    space.parts, space.once = 2, once
    return At(cat_node, 1, (), at.axis, at.axis, source=cat_node)


def _concat(walk, at: At, cat_node: fx.Node) -> At | None:
    """A `cat` along the units' axis (Inception branches, U-Net skips, DenseNet layers): the
    units keep their own space, behind the channels of the operands before them; the
    consumers read them at that offset (which moves when those operands shrink), and they are
    counted at that offset in the activations after it."""
    operands = list(cat_node.args[0])
    widths = [width(o, at.axis) for o in operands[:operands.index(at.node)]]
    if at.block != 1:
        walk.fail("its flattened output is concatenated with other tensors")
    elif walk.space.parts > 1:
        walk.fail(f"its grouped channels are concatenated in {cat_node.name}")
    elif cat_node.name in walk.cats or operands.count(at.node) != 1:
        walk.fail(f"its channels reach {cat_node.name} more than once")
    elif None in widths:
        walk.fail(f"it is concatenated after a tensor of unknown width in {cat_node.name}")
    else:
        walk.cats.add(cat_node.name)
        return replace(at, node=cat_node, offset=at.offset + sum(widths), behind=True)
    return None


def _mul_backward(node: fx.Node, axis: int):
    """A product by a number, a per-unit constant or a per-sample value carries its other
    factor's channels; a gate's product carries both factors' (its rule joins them)."""
    factors = [a for a in node.args[:2]
               if _carries_units(a) and not _per_sample(a, axis, ndim(node))]
    found = [sources(a, axis) for a in factors]
    return None if not found or any(f is None for f in found) else \
        [s for f in found for s in f]


def _carries_units(arg: object) -> bool:
    return isinstance(arg, fx.Node) and _constant(arg) is None


def _per_sample(node: object, axis: int, dims: int) -> bool:
    """Whether `node` (of a product with `dims` axes) holds one value per sample and
    position that the units' axis broadcasts (1 there): a normaliser computed from the
    units (ConvNeXt-V2's g / mean_c(g))."""
    return isinstance(node, fx.Node) and ndim(node) == dims and width(node, axis) == 1 and \
        _constant(node) is None


@rule(*MUL, backward=_mul_backward,
      behind_cat=lambda user, at: all(not isinstance(a, fx.Node) for a in user.args
                                      if a is not at.node))
def mul(walk, at: At, user: fx.Node):
    """A product: by a number it is a function of each unit (passed on, not counted); by a
    per-unit constant (layer scale `gamma * x`) its entries go with the units; by another
    space's output of a shape that broadcasts over the positions (a gate: SwiGLU's
    `silu(W1 x) * (W3 x)`, squeeze-excitation's `x * sigmoid(fc2(...))`) the spaces join,
    unit j of each making unit j of the product, which is where the units are counted."""
    other = user.args[1] if user.args[0] is at.node else user.args[0]
    if not isinstance(other, fx.Node):
        return replace(at, node=user, acts=(*at.acts, user))
    if _constant(other) is not None:
        return _scaled(walk, at, user, other)
    if _per_sample(other, at.axis, ndim(user)) and width(at.node, at.axis) != 1:
        return replace(at, node=user, acts=(*at.acts, user))  # each unit scaled alike
    found = [] if other is at.node else sources(other, at.axis)
    if found is None or at.block != 1 or not _broadcasts(other, at.node, at.axis):
        walk.fail(f"its output is multiplied by {describe(other)}, which is not the output of "
                  "a traced layer of a shape that broadcasts over the positions")
        return None
    for source in found:
        walk.join(source)
    return replace(at, node=user, acts=(*at.acts, user), counted=at.axis,
                   count_offset=at.offset)


def _constant(node: fx.Node) -> fx.Node | None:
    """The parameter or buffer `node` is (through copies and views that lay it out to
    broadcast: timm's `gamma.view(1, -1, 1, 1)`), or None."""
    while node.op == "call_function" and (
            node.target in SHAPINGS or any(c in str(node.target) for c in COPIES_OF_CONSTANTS)):
        if not node.args or not isinstance(node.args[0], fx.Node):
            return None
        node = node.args[0]
    return node if node.op == "get_attr" else None


def _scaled(walk, at: At, user: fx.Node, read: fx.Node,
            what: str = "multiplied by") -> At | None:
    """A product (or sum) with a constant tensor (`read`, a parameter or a copy or view of
    one): one value per unit along the units' axis (the rest broadcast) makes its entries
    go with the units; one value for all is a scale."""
    constant = _constant(read)
    val, own = read.meta.get("val"), constant.meta.get("val")
    if val is None or own is None:
        walk.fail(f"its output is {what} {constant.name}, of unknown shape")
        return None
    shape = [1] * (ndim(user) - val.ndim) + list(val.shape)  # as broadcast against the units
    if all(int(d) == 1 for d in shape):
        return replace(at, node=user, acts=(*at.acts, user))
    axis_size = int(shape[at.axis])
    long_axes = [i for i, d in enumerate(own.shape) if int(d) != 1]  # the parameter's own
    chain = _chain(read, constant)
    if at.block != 1 or any(int(d) != 1 for i, d in enumerate(shape) if i != at.axis) or \
            axis_size != width(at.node, at.axis) or len(long_axes) != 1 or \
            any(len(n.users) != 1 for n in [constant, *chain]):
        walk.fail(f"its output is {what} {constant.name}, a constant that mixes or does "
                  "not follow its units")
        return None
    for view in (n for n in chain if n.target is not aten.unsqueeze.default):
        for position, size in enumerate(_sizes(view)):  # a size written as the number
            if size == axis_size:
                walk.space.reshapes[view.name, position] = 1
    walk.space.carried[constant.target, at.offset] = Slice(constant.target, long_axes[0], 1,
                                                           at.offset)
    return replace(at, node=user)


def _chain(read: fx.Node, constant: fx.Node) -> list[fx.Node]:
    """The copies and views from `constant` to `read`."""
    chain = []
    while read is not constant:
        chain.append(read)
        read = read.args[0]
    return chain


def _sizes(view: fx.Node) -> list:
    sizes = view.args[1] if len(view.args) > 1 else ()
    return list(sizes) if view.target in SHAPINGS and isinstance(sizes, (list, tuple)) else []


def _broadcasts(other: fx.Node, node: fx.Node, axis: int) -> bool:
    """Whether `other` and `node` have the units' axis alike and broadcast elsewhere (each
    axis but the batch equal, or 1 in one of them)."""
    a, b = other.meta.get("val"), node.meta.get("val")
    if a is None or b is None or a.ndim != b.ndim or width(other, axis) != width(node, axis):
        return False
    return all(str(x) == str(y) or str(x) == "1" or str(y) == "1"
               for i, (x, y) in enumerate(zip(a.shape, b.shape)) if i not in (0, axis))


def _addcmul_backward(node: fx.Node, axis: int):
    factors = [a for a in node.args[:3] if _carries_units(a)]
    return sources(factors[0], axis) if len(factors) == 1 else None


@rule(ADDCMUL, backward=_addcmul_backward)
def addcmul(walk, at: At, user: fx.Node):
    """`input + t1 · t2` with the units in one operand and per-unit constants in the others
    (ConvNeXt-V2's response norm, β + γ · x): their entries go with the units."""
    others = [a for a in user.args[:3] if a is not at.node]
    if len(others) != 2 or any(isinstance(a, fx.Node) and _constant(a) is None for a in others):
        walk.fail(f"its output meets {', '.join(describe(a) for a in others)} in addcmul, "
                  "which the tracer follows only with per-unit constants")
        return None
    for other in others:
        if isinstance(other, fx.Node) and _scaled(walk, at, user, other) is None:
            return None
    return replace(at, node=user)
