"""What the tracer knows about each op: one rule per op kind, registered by the aten ops it
covers. A rule says how the units of a channel space pass through the op (on, moved, joined,
consumed, or not followed, with the reason), which producers' channels the op's output
carries (for joins, followed backwards), and whether the walk may go on through the op behind
a channel `cat`. Supporting an op is one rule and its test."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import fx

from ..ops import ACTIVATIONS, ADD, MUL

UNKNOWN = object()  # a rule's answer for a use it does not cover: the walk's generic reasons


@dataclass(frozen=True)
class At:
    """Where a walk is: a node carrying the space's units, `block` columns each, on `axis` of
    its output from `offset` on; the activations passed since the last join, and the axis of
    the units on the last of them, and their offset there (where they are counted)."""

    node: fx.Node
    block: int
    acts: tuple[fx.Node, ...]
    axis: int
    counted: int
    offset: int = 0  # where the units' entries start on `axis` (behind a channel cat)
    count_offset: int = 0  # where they start in the output of the last activation
    behind: bool = False  # behind a channel cat: other layers' channels beside them
    source: fx.Node | None = None  # where the units were made or last joined (counted there
    #                                when no activation comes before a layer reads them)


Forward = Callable[[object, At, fx.Node], "At | None"]  # (the Walk, where it is, the user)
Backward = Callable[[fx.Node, int], "list[fx.Node] | None"]


@dataclass(frozen=True)
class Rule:
    """How units pass through an op.

    Attributes:
        forward: from the walk at `at` (a node carrying the units) to `user`, an op reading
            it: where the units are in `user`'s output, or None where the walk stops there
            (having recorded a consumer, a join or a reason the space is not pruned).
        backward: the producers whose channels `node`'s output carries on `axis`, or None if
            it carries anything else.
        behind_cat: whether the walk may go on through the op behind a channel cat, where
            other layers' channels sit beside the units.
    """

    forward: Forward
    backward: Backward | None = None
    behind_cat: Callable[[fx.Node, At], bool] = field(default=lambda user, at: False)


RULES: dict[object, Rule] = {}


def rule(*ops: object, backward: Backward | None = None,
         behind_cat: Callable[[fx.Node, At], bool] | bool = False) -> Callable[[Forward],
                                                                                Forward]:
    """Register the decorated forward function as the rule of `ops`."""
    after = behind_cat if callable(behind_cat) else (lambda user, at, value=behind_cat: value)

    def register(forward: Forward) -> Forward:
        for op in ops:
            RULES[op] = Rule(forward, backward, after)
        return forward

    return register


def rule_for(node: fx.Node) -> Rule | None:
    return RULES.get(node.target) if node.op == "call_function" else None


_answered: dict[tuple[fx.Node, int], tuple[fx.Node, ...] | None] | None = None


def sources(node: object, axis: int) -> list[fx.Node] | None:
    """The producers whose channels `node` carries on `axis` of its output (each once), or
    None if it carries anything else. Within one question each node is answered once: a
    branch that rejoins its own input (the identity beside the convolutions of a RepVGG or
    MobileOne block) would otherwise be asked again at every join behind it."""
    global _answered
    if not isinstance(node, fx.Node):
        return None
    outermost = _answered is None
    if outermost:
        _answered = {}
    try:
        if (node, axis) not in _answered:
            found = rule_for(node)
            answer = None if found is None or found.backward is None else \
                found.backward(node, axis)
            _answered[node, axis] = None if answer is None else tuple(dict.fromkeys(answer))
        answer = _answered[node, axis]
        return None if answer is None else list(answer)
    finally:
        if outermost:
            _answered = None


def through_first(node: fx.Node, axis: int) -> list[fx.Node] | None:
    """`backward` of an op that carries its first argument's channels unchanged."""
    if not node.args or not isinstance(node.args[0], fx.Node):
        return None
    return sources(node.args[0], axis)


def scaling(node: fx.Node) -> bool:
    """A product with a number, or a number added: applied to each unit alike, but no
    activation to count at."""
    return node.target in (*MUL, *ADD) and sum(isinstance(a, fx.Node) for a in node.args) == 1


def kind(node: fx.Node) -> str:
    """The activation a unit passes through at `node`: an elementwise function, the gate of a
    product with another space, or none (the units are read as they are)."""
    if node.target in MUL:
        return "gated"
    return ACTIVATIONS.get(node.target, "identity")


# Facts of a node's output, from the meta torch.export records.

def ndim(node: object) -> int:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return 2 if val is None else val.ndim


def shape_of(node: fx.Node) -> str:
    val = node.meta.get("val")
    return "?" if val is None else "[" + ", ".join(str(d) for d in val.shape) + "]"


def dims(node: fx.Node) -> list[str] | None:
    val = node.meta.get("val")
    return None if val is None else [str(d) for d in val.shape]


def width(node: object, axis: int) -> int | None:
    """The size of `axis` of a node's output, if known and not symbolic."""
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    try:
        return None if val is None else int(val.shape[axis])
    except (TypeError, ValueError):
        return None


def op_name(node: fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target)).split(".")[0]


def describe(node: object) -> str:
    """What a tensor is, for messages: the op that made it (copies skipped), or the input."""
    if isinstance(node, fx.Node):
        origin = node
        while origin.target in COPIES or str(origin.target).startswith("aten.to."):
            origin = origin.args[0]  # a copy or a dtype conversion says nothing
        return "the model's input" if origin.op == "placeholder" else \
            f"{op_name(origin)} ({origin.name})"
    return repr(node)


aten = torch.ops.aten
COPIES = (aten.clone.default, aten.alias.default, aten.detach.default, aten.contiguous.default,
          aten.dropout.default, aten.dropout_.default)
