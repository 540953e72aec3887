"""Ops that move the units' axis or reshape around it: transpose and permute, a mean over other
axes, a select or slice of other axes (a class token), a roll of other axes (Swin's shifted
windows), padding of other axes, reshapes that keep the units' axis whole, and a Flatten that
gives each channel its H*W columns."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import fx

from ..ops import FLATTEN, MEAN, SUM, TRANSPOSE, VECTOR_NORM
from .registry import UNKNOWN, At, dims, ndim, op_name, rule, shape_of, sources

SELECT, SLICE = torch.ops.aten.select.int, torch.ops.aten.slice.Tensor
ROLL = torch.ops.aten.roll.default
PAD = (torch.ops.aten.constant_pad_nd.default,  # any mode pads each channel alone
       torch.ops.aten.pad.default)


def moved_axis(node: fx.Node, user: fx.Node, axis: int) -> int | None:
    """Where the channels on `axis` of `node` are in `user`'s output, if `user` moves axes
    without mixing channels: a transpose or permute, a mean over axes other than the batch and
    the channels, or a reshape that keeps every axis up to the channels (regrouping those
    after) or every axis from the channels on (regrouping those before), or a select or
    slice of an axis other than the batch and the channels, or a roll of other axes."""
    if not user.args or user.args[0] is not node:
        return None
    n = ndim(node)
    if user.target is torch.ops.aten.t.default:
        return 1 - axis if n == 2 else None
    if user.target is torch.ops.aten.transpose.int:
        a, b = (int(d) % n for d in user.args[1:3])
        return b if axis == a else a if axis == b else axis
    if user.target is torch.ops.aten.permute.default:
        return [int(d) % n for d in user.args[1]].index(axis)
    if user.target in (MEAN, SUM, VECTOR_NORM):  # a reduction over positions
        reduced, keep = _reduced(user)
        if not reduced or 0 in reduced or axis in reduced:
            return None
        return axis if keep else axis - sum(d < axis for d in reduced)
    if user.target is ROLL:  # positions shifted cyclically; no dims: the tensor flattened
        rolled = {int(d) % n for d in user.args[2]} if len(user.args) > 2 else set()
        return axis if rolled and axis not in rolled else None
    if user.target in PAD:  # positions padded (a strided convolution's "same" padding
        padded = len(user.args[1]) // 2  # written out): the last axes
        return axis if axis < n - padded or not any(
            user.args[1][2 * (n - 1 - axis):2 * (n - axis)]) else None
    if user.target in (SELECT, SLICE):  # one token (a class token) or a range of them
        dim = int(user.args[1]) % n if len(user.args) > 1 else 0
        if dim == axis or (dim == 0 and not _whole(user)):
            return None
        return axis - 1 if user.target is SELECT and dim < axis else axis
    if user.target in FLATTEN:
        before, after = dims(node), dims(user)
        if before is None or after is None:
            return None
        if after[:axis + 1] == before[:axis + 1]:
            return axis
        tail = before[axis:]
        if len(after) >= len(tail) and after[len(after) - len(tail):] == tail:
            return len(after) - len(tail)
    return None


def _reduced(node: fx.Node) -> tuple[set[int], bool]:
    """The axes a mean, sum or vector norm reduces (every axis where none are given), and
    whether it keeps them."""
    at = 2 if node.target is VECTOR_NORM else 1  # linalg_vector_norm(x, ord, dim, keepdim)
    dims = node.args[at] if len(node.args) > at else None
    n = ndim(node.args[0])
    reduced = set(range(n)) if dims is None else \
        {int(d) % n for d in ([dims] if isinstance(dims, int) else dims)}
    return reduced, bool(node.args[at + 1]) if len(node.args) > at + 1 else False


def _whole(node: fx.Node) -> bool:
    """Whether a slice keeps its whole axis (`x[:, 0]` slices the batch axis whole first)."""
    if node.target is not SLICE:
        return False
    start, end, step = (list(node.args[2:5]) + [None, None, None])[:3]
    return start in (None, 0) and step in (None, 1) and \
        (end is None or (isinstance(end, int) and end >= 2 ** 62))


def flattened_block(node: fx.Node, flatten: fx.Node) -> int | None:
    """Columns per channel when `flatten` turns [N, C, *spatial] into [N, C * prod(spatial)],
    or None for any other reshape."""
    before, after = node.meta.get("val"), flatten.meta.get("val")
    if before is None or after is None or after.ndim != 2 or before.ndim < 2:
        return None
    try:
        spatial = math.prod(int(d) for d in before.shape[2:])
        if int(after.shape[1]) != int(before.shape[1]) * spatial:
            return None
    except (TypeError, ValueError):  # symbolic sizes
        return None
    return spatial


def _moved_backward(node: fx.Node, axis: int):
    if not node.args or not isinstance(node.args[0], fx.Node):
        return None
    source = node.args[0]
    for before in range(ndim(source)):
        if moved_axis(source, node, before) == axis:
            return sources(source, before)
    return None


@rule(*TRANSPOSE, *FLATTEN, MEAN, VECTOR_NORM, SUM, SELECT, SLICE, ROLL, *PAD,
      backward=_moved_backward, behind_cat=True)
def reshape(walk, at: At, user: fx.Node):
    if not user.args or user.args[0] is not at.node:
        return UNKNOWN
    if user.target in (MEAN, SUM) and _reduced(user)[0] == {at.axis}:
        return _over_units(walk, at, user)
    moved = moved_axis(at.node, user, at.axis) if at.block == 1 else None
    if moved is not None:
        _written(walk, user, moved, at.block)
        return replace(at, node=user, axis=moved)
    if user.target in FLATTEN and at.axis == 1:
        flat = flattened_block(at.node, user)
        if flat is not None:
            _written(walk, user, 1, at.block * flat)
            return replace(at, node=user, block=at.block * flat, offset=at.offset * flat)
    if user.target in (MEAN, SUM, VECTOR_NORM) or user.name in walk.attention:
        return UNKNOWN
    walk.fail(f"its output is reshaped by {op_name(user)} to {shape_of(user)}, which the "
              "tracer does not follow")
    return None


def _over_units(walk, at: At, user: fx.Node) -> None:
    """A mean or sum over the units themselves (the normaliser of ConvNeXt-V2's global
    response norm, x · g / mean_c(g)): each unit's share of it is a fixed weight, as a
    consumer's column is, so a removed unit's share is dropped and the rest kept. A mean is
    made a sum over the units left divided by their original number when they are first
    removed (`groups.resize_reshapes`); the walk ends here (one value per sample, no units)."""
    if at.block != 1 or at.behind:
        walk.fail(f"its output is reduced over its channels by {op_name(user)} beside other "
                  "channels")
    else:
        walk.space.reshapes[user.name, at.axis] = 1


def _written(walk, node: fx.Node, axis: int, per_unit: int) -> None:
    """Remember a reshape whose target shape writes the units' axis as a number: it changes
    with the units (a view after GPT-2's Conv1D writes its width)."""
    if node.target in FLATTEN and len(node.args) > 1 and isinstance(node.args[1], (list, tuple)):
        size = node.args[1][axis] if axis < len(node.args[1]) else None
        if isinstance(size, int) and size > 0:
            walk.space.reshapes[node.name, axis] = per_unit
