"""Layers that read the units (Linear, convolutions: a depthwise one carries them, a grouped
one reads them per group), and the normalisations between them."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import fx

from ..groups import Slice
from ..ops import BATCH_NORM, CONV, LINEAR, NORMS
from .registry import UNKNOWN, At, ndim, rule, shape_of, sources, through_first, width

BATCH_NORM_OP = BATCH_NORM[0]  # what capture leaves of an unfolded BatchNorm
NORMS_BY_NAME = {name: op for op, name in NORMS.items()}
EMBEDDING = torch.ops.aten.embedding.default


def conv_groups(conv: fx.Node) -> int:
    return int(conv.args[6]) if len(conv.args) > 6 else 1


def depthwise(conv: fx.Node) -> bool:
    """A convolution with one filter per input channel (groups = in = out channels)."""
    weight, val = conv.args[1], conv.meta.get("val")
    if not isinstance(weight, fx.Node) or weight.op != "get_attr" or val is None:
        return False
    w = weight.meta.get("val")
    groups = conv_groups(conv)
    return groups > 1 and w is not None and w.shape[1] == 1 and int(w.shape[0]) == groups and \
        int(val.shape[1]) == groups and len(weight.users) == 1


def _linear_backward(node: fx.Node, axis: int):
    return [node] if axis == ndim(node) - 1 else None


def _conv_backward(node: fx.Node, axis: int):
    if axis != 1:
        return None
    if depthwise(node):  # its channels are its input's
        return sources(node.args[0], axis)
    return [node]


def _embedding_backward(node: fx.Node, axis: int):
    return [node] if axis == ndim(node) - 1 else None


@rule(EMBEDDING, backward=_embedding_backward)
def embedding(walk, at: At, user: fx.Node):
    """A lookup in a table: where the stream is pruned its columns are the stream's units
    (`trace` makes it a producer); the walk never reads through it."""
    return UNKNOWN


def _reads_plainly(user: fx.Node, at: At) -> bool:
    return user.target is LINEAR or (user.target in CONV and conv_groups(user) == 1)


@rule(LINEAR, backward=_linear_backward, behind_cat=_reads_plainly)
def linear(walk, at: At, user: fx.Node):
    if user.args[0] is not at.node:
        return UNKNOWN
    if at.axis != ndim(at.node) - 1:
        walk.fail(f"its output reaches {user.name} with its features on axis {at.axis} of "
                  f"{shape_of(at.node)}, not the last")
        return None
    return walk.consume(at, user)


@rule(*CONV, backward=_conv_backward, behind_cat=_reads_plainly)
def conv(walk, at: At, user: fx.Node):
    if user.args[0] is not at.node:
        return UNKNOWN
    groups = conv_groups(user)
    if depthwise(user) and at.block == 1 and at.axis == 1 and \
            (walk.space.parts == 1 or walk.space.once):
        space = walk.space  # it filters each unit alone: carries them on
        if user.name not in space.depthwise:
            space.depthwise.append(user.name)
        return At(user, 1, (), 1, 1, source=user)
    if at.block != 1 or at.axis != 1:
        walk.fail(f"its output feeds {user.name}, a convolution reading it reshaped")
        return None
    if groups == 1:
        return walk.consume(at, user)
    space = walk.space
    if at.behind or at.offset or space.parts not in (1, groups):
        walk.fail(f"its output feeds {user.name}, a grouped convolution (groups={groups}) "
                  "that reads it beside other channels or grouped otherwise")
        return None
    space.parts = groups  # unit j is channel j of every group: the groups stay equal
    return walk.consume(at, user, parts=1)


def _norm_backward(node: fx.Node, axis: int):
    return through_first(node, axis) if axis == 1 else None


@rule(BATCH_NORM_OP, backward=_norm_backward, behind_cat=True)
def batch_norm(walk, at: At, norm: fx.Node):
    """An eval-mode BatchNorm that could not be folded into a layer (it follows a cat, a
    residual add, or a layer whose output goes elsewhere too): it scales and shifts each
    channel alone, so its entries for the units go with them."""
    if norm.args[0] is not at.node:
        return UNKNOWN
    params = norm.args[1:5]
    if at.axis != 1 or at.block != 1 or (len(norm.args) > 5 and norm.args[5]):
        walk.fail(f"its output feeds {norm.name} (BatchNorm in training mode or off the "
                  "channel axis)")
        return None
    if not all(isinstance(p, fx.Node) and p.op == "get_attr" and len(p.users) == 1
               for p in params if p is not None):
        walk.fail(f"its output feeds {norm.name}, a BatchNorm whose statistics are computed "
                  "or shared")
        return None
    space = walk.space
    for p in params:
        if p is not None:
            space.carried[p.target, at.offset] = Slice(p.target, 0, 1, at.offset)
    return replace(at, node=norm)


def _stream_backward(node: fx.Node, axis: int):
    """A LayerNorm or RMSNorm over the last axis alone carries its input's units there (a
    post-norm block adds its output to the stream); where the stream is not pruned, the
    walk through the norm fails the space anyway."""
    if node.target is NORMS_BY_NAME["GroupNorm"] or len(node.args[1]) != 1 or \
            axis != ndim(node) - 1:
        return None
    return through_first(node, axis)


@rule(*NORMS, backward=_stream_backward)
def norm(walk, at: At, user: fx.Node):
    """LayerNorm, RMSNorm or GroupNorm: over the units' axis they couple every unit (the
    residual stream: followed only where the run prunes it, `Spaces.stream`); over other axes
    (each unit a token) they pass the units on."""
    if user.args[0] is not at.node:
        return UNKNOWN
    group_norm = user.target is NORMS_BY_NAME["GroupNorm"]
    if group_norm and user.args[1] == width(at.node, at.axis) and at.axis == 1:
        return _per_channel(walk, at, user)
    over_units = group_norm or at.axis >= ndim(user) - len(user.args[1])
    if not over_units:
        return replace(at, node=user)
    if walk.spaces.stream and user.target is not NORMS_BY_NAME["GroupNorm"]:
        return _normalized(walk, at, user)
    walk.fail(f"residual stream: {NORMS[user.target]} couples all its features (not "
              "pruned)", final=True)
    return None


def _per_channel(walk, at: At, norm_node: fx.Node) -> At | None:
    """A GroupNorm of one group per channel (Wav2Vec2's and HuBERT's first convolution):
    each channel is normalized alone, so the units pass; its weight and bias entries go with
    them and its group count follows their number."""
    params = [p for p in norm_node.args[2:4] if p is not None]
    if at.block != 1 or at.behind or not all(
            isinstance(p, fx.Node) and p.op == "get_attr" and len(p.users) == 1 for p in params):
        walk.fail(f"its output feeds {norm_node.name}, a GroupNorm of a group per channel "
                  "that reads it flattened, beside other channels or with shared parameters")
        return None
    space = walk.space
    for p in params:
        space.carried[p.target, at.offset] = Slice(p.target, 0, 1, at.offset)
    space.reshapes[norm_node.name, 1] = 1
    return replace(at, node=norm_node, acts=(*at.acts, norm_node))


def _normalized(walk, at: At, norm_node: fx.Node) -> At | None:
    """The stream through a LayerNorm or RMSNorm over its last axis alone: its weight and bias
    entries go with the units and its `normalized_shape` follows their number; what the
    units are normalized by changes with the units removed (the stream's ranking and
    fine-tuning account for it; no compensation is exact through it)."""
    name = NORMS[norm_node.target]
    params = [p for p in norm_node.args[2:4 if name == "LayerNorm" else 3] if p is not None]
    if len(norm_node.args[1]) != 1 or at.axis != ndim(norm_node) - 1 or at.block != 1 or \
            at.behind:
        walk.fail(f"residual stream: {name} over {shape_of(norm_node)} normalizes more than "
                  "the units' axis", final=True)
        return None
    if not all(isinstance(p, fx.Node) and p.op == "get_attr" and len(p.users) == 1
               for p in params):
        walk.fail(f"residual stream: {name} {norm_node.name} has computed or shared "
                  "parameters", final=True)
        return None
    space = walk.space
    for p in params:
        space.carried[p.target, at.offset] = Slice(p.target, 0, 1, at.offset)
    space.reshapes[norm_node.name, 0] = 1
    space.normalized = True
    return replace(at, node=norm_node)
