"""Attention inputs besides q, k and v that follow the heads: q's or k's Linear run again on
a table (DeBERTa-v3's relative position embeddings: content-to-position and
position-to-content scores) and the integer indices those scores are gathered at, whose
sizes write the head count. `graph.heads` accepts an attention's heads with them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from .ops import LINEAR, MATMUL
from .replay import MOVES, RESHAPES, replayed, size_product

aten = torch.ops.aten


@dataclass(frozen=True)
class Reuse:
    """q's or k's Linear run again, on a tensor computed from parameters alone (DeBERTa's
    relative position embeddings), its output laid out by the same heads and multiplied with
    this attention's k or q (content-to-position and position-to-content scores)."""

    owner: fx.Node  # the Linear whose weight it runs
    linear: fx.Node
    chain: list[fx.Node]  # the ops that lay its output out by head, transposed last
    end: fx.Node
    product: fx.Node


def reuses_of(linear: fx.Node, rows: torch.Tensor, values: dict) -> list[Reuse | None]:
    """Every other Linear node that runs `linear`'s weight and bias: a `Reuse` where it reads
    parameters alone and its output reaches a product through moves with the rows of each
    head that `linear`'s own output has (`rows`, [H, d]); None for any other."""
    found = []
    for other in linear.args[1].users:
        if other is linear:
            continue
        found.append(_reuse(linear, other, rows, values))
    return found


def _reuse(linear: fx.Node, other: fx.Node, rows: torch.Tensor, values: dict) -> Reuse | None:
    bias = linear.args[2] if len(linear.args) > 2 else None
    if other.target is not LINEAR or other.args[1] is not linear.args[1] or \
            (other.args[2] if len(other.args) > 2 else None) is not bias or \
            _reads_input(other.args[0]):
        return None
    chain, node = [], other
    while len(node.users) == 1 and next(iter(node.users)).target in MOVES | {aten.repeat.default}:
        node = next(iter(node.users))
        chain.append(node)
    users = list(node.users)
    if len(users) != 1 or users[0].target not in MATMUL[:2] or users[0].args[1] is not node or \
            not chain or chain[-1].target is not aten.transpose.int:
        return None
    out_size = values[other.name].shape
    index = torch.arange(out_size[-1], dtype=torch.float64).expand(out_size).contiguous()
    laid = replayed(chain[:-1], other, index, values)  # [H, positions, d] for one input
    if laid.ndim == 4 and laid.shape[0] == 1:
        laid = laid[0]
    if laid.ndim != 3 or laid.shape[0] != rows.shape[0]:
        return None
    heads = laid.permute(0, 2, 1)  # [H, d, positions]
    if not bool((heads == heads[..., :1]).all()) or not torch.equal(heads[..., 0].long(), rows):
        return None
    return Reuse(linear, other, chain, node, users[0])


def same_for_every_head(extra: fx.Node, h: int, values: dict) -> bool:
    """Whether `extra`, read by the attention with heads in the batch axis of the one input
    ([heads, ...]), is an index the same for every head, computed without the input's values
    (the relative positions DeBERTa gathers its position scores at). A table of values (a
    bias) is one per head even where its values are equal (zeros at initialisation)."""
    value = values.get(extra.name)
    return isinstance(value, torch.Tensor) and not value.is_floating_point() and \
        value.ndim == 3 and value.shape[0] == h > 1 and bool((value == value[:1]).all()) and \
        not _reads_input(extra)


def _reads_input(node: fx.Node) -> bool:
    """Whether `node`'s value is computed from the input's values (its sizes aside: the
    relative positions of DeBERTa's tokens follow their number)."""
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n in seen or isinstance(n.meta.get("val"), (int, torch.SymInt)):
            continue  # a size: read from a shape, not from values
        seen.add(n)
        if n.op == "placeholder":
            return True
        todo += n.all_input_nodes
    return False


def head_count_size(extra: fx.Node, h: int, units: int) -> tuple[str, int, int] | None:
    """(node, position, per unit) of the size that writes `extra`'s first axis, [batch x
    heads]: an expand's or view's size computed as batch x heads; None if none does."""
    sizes = list(extra.args[1]) if extra.target in RESHAPES and \
        isinstance(extra.args[1], (list, tuple)) else []
    first = sizes[0] if sizes else None
    written = size_product(first) if isinstance(first, fx.Node) else None
    if written is None or written[2] != h or written[2] % units:
        return None
    return written[0], written[1], written[2] // units
