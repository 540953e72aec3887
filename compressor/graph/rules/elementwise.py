"""Ops that act on each unit alone: activations, copies, Dropout in eval mode, pooling over
positions and resizing them."""

from __future__ import annotations

from dataclasses import replace

from torch import fx

from ..ops import ACTIVATIONS, IDENTITY, POOL, RESIZE
from .registry import UNKNOWN, rule, through_first


@rule(*ACTIVATIONS, backward=through_first, behind_cat=True)
def activation(walk, at, user: fx.Node):
    """An elementwise activation: the units pass on, and are counted here."""
    return replace(at, node=user, acts=(*at.acts, user), counted=at.axis,
                   count_offset=at.offset)


@rule(*IDENTITY, backward=through_first, behind_cat=True)
def identity(walk, at, user: fx.Node):
    """A copy, or Dropout (in eval mode: a copy; in training mode it is refused)."""
    if "dropout" in str(user.target) and len(user.args) > 2 and user.args[2]:
        walk.fail("dropout in training mode")
        return None
    return replace(at, node=user)


def _pool_backward(node: fx.Node, axis: int):
    return through_first(node, axis) if axis == 1 else None


@rule(*POOL, *RESIZE, backward=_pool_backward, behind_cat=True)
def pool(walk, at, user: fx.Node):
    """Pooling over the positions of each channel, or resizing them (the channels are on
    axis 1)."""
    return replace(at, node=user) if at.axis == 1 else UNKNOWN
