"""Following entries through ops that only move them: run the ops on the entries' own indices
(as float64 tensors) to read where each entry lands, which units a reshape's sizes count, and
which consecutive block of a tensor each unit owns. Attention heads (`graph.heads`) and the
per-head tables their scores read (`graph.head_tables`) are found this way."""

from __future__ import annotations

import operator

import torch
from torch import fx

from .groups import Slice
from .ops import ACTIVATIONS, RESIZE

aten = torch.ops.aten
MOVES = {aten.view.default, aten.reshape.default, aten._unsafe_view.default,
         aten.permute.default, aten.transpose.int, aten.t.default, aten.unbind.int,
         aten.select.int, aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default,
         aten.slice.Tensor, aten.contiguous.default, aten.clone.default, aten.alias.default,
         aten.unsqueeze.default, aten.squeeze.dim, aten.expand.default,
         aten.unflatten.int, aten.flatten.using_ints, aten.detach.default}
SCALES = {aten.mul.Tensor, aten.div.Tensor}  # by a number: the entries stay where they are
SHIFTS = {aten.add.Tensor, aten.sub.Tensor,  # a bias or mask on the scores: likewise
          aten.add_.Tensor, aten.sub_.Tensor, aten.masked_fill.Scalar}
GATHERS = {aten.index.Tensor,  # a relative position bias read from its table
           aten.embedding.default}
RESAMPLES = set(RESIZE)  # a table resized over its positions (BEiT's)
MASKED = aten.where.ScalarOther  # where(mask, x, number): x's entries where they were (T5's
#     position bias masked by padding)
SPLITS = {aten.split.Tensor, aten.split_with_sizes.default}  # sizes, then the axis
RESHAPES = {aten.view.default, aten.reshape.default, aten._unsafe_view.default,
            aten.expand.default}  # a size list second, as unflatten's is third


def values_on(gm: fx.GraphModule, x: torch.Tensor) -> dict[str, object]:
    """Every node's value on `x`."""
    values: dict[str, object] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            values[n.name] = out
            return out

    with torch.no_grad():
        Recorder(gm).run(x)
    return values


def replayed(chain: list[fx.Node], start: fx.Node, value: torch.Tensor,
             values: dict[str, object]) -> torch.Tensor:
    """`chain` run with `start`'s value replaced by `value` (the other arguments as they were
    on the sample); scales, biases and masks leave the entries as they are (broadcast to the
    shape they give). The value of the chain's last node."""
    return replayed_all(chain, start, value, values)[chain[-1].name if chain else start.name]


def replayed_all(chain: list[fx.Node], start: fx.Node, value: torch.Tensor,
                 values: dict[str, object]) -> dict[str, torch.Tensor]:
    """`replayed` for every node of `chain` (any nodes in graph order that read `start` or
    each other: a table read twice and joined by a `cat`), and `start`, by name."""
    current = {start.name: value}

    def arg(a):
        if isinstance(a, fx.Node):
            return current.get(a.name, values.get(a.name))
        if isinstance(a, (list, tuple)):
            return type(a)(arg(b) for b in a)
        return a

    for node in chain:
        if node.target in ACTIVATIONS and node.args[0].name in current:  # entry by entry
            current[node.name] = current[node.args[0].name]
            continue
        if node.target in SCALES | SHIFTS or node.target is MASKED:
            source = next(a for a in node.args if isinstance(a, fx.Node) and a.name in current)
            current[node.name] = torch.broadcast_to(current[source.name],
                                                    values[node.name].shape)
            continue
        current[node.name] = node.target(*[arg(a) for a in node.args],
                                         **{k: arg(v) for k, v in node.kwargs.items()})
    return current


def written_sizes(chain: list[fx.Node], start: fx.Node, index: torch.Tensor, values: dict,
                  unit_of: torch.Tensor, units: int) -> set[tuple[str, int, int]]:
    """(node, position, entries per unit) for every size on `chain` that writes an axis the
    units lie along as a number (the head count, or heads x head dim): a view's or
    unflatten's size list at `position`, or, where the count is multiplied into the batch size
    (`batch * heads`), the number at `position` in that product's arguments."""
    found = set()
    every = replayed_all(chain, start, index, values)
    for i, node in enumerate(chain):
        first = node.args[0]  # its input: its first argument if replayed, else the one before
        before = first.name if isinstance(first, fx.Node) and first.name in every else \
            chain[i - 1].name if i else start.name
        if node.target is aten.slice.Tensor:
            found |= _slice_bounds(node, every[before], unit_of, units)
            continue
        sizes = _sizes(node)
        if sizes is None:
            continue
        split = node.target in SPLITS  # sizes along one axis of its input, not a shape
        laid = every[before if split else node.name]
        owner = unit_of[laid.long().clamp_min(0)]
        first = 0
        if node.target is aten.unflatten.int:  # its dim counts the axes before it
            first = node.args[1] % (laid.ndim - len(sizes) + 1)
        for position, size in enumerate(sizes):
            written = (node.name, position, size)
            if isinstance(size, fx.Node):
                written = size_product(size)
            if written is None or written[2] <= 1:
                continue
            axis = node.args[2] % laid.ndim if split else first + position
            moved = owner.movedim(axis, 0)
            if not bool((moved != moved[:1]).any()):
                continue  # the units do not change along this axis
            per_unit = _beside_others(moved, written[2], units) if not split else None
            if per_unit is None and written[2] % units == 0:
                per_unit = written[2] // units
            if per_unit is not None:
                found.add((written[0], written[1], per_unit))
    return found


def _beside_others(moved: torch.Tensor, size: int, units: int) -> int | None:
    """Entries per unit along an axis (first in `moved`, each entry's unit or -1) of `size`
    that holds every unit's entries alike beside entries of no unit (Falcon-7B's q heads
    beside its one k and one v head, viewed [batch, tokens, heads + 2, d]); None
    otherwise."""
    line = moved.reshape(moved.shape[0], -1)[:, 0]
    if line.numel() != size or not bool((line < 0).any()):
        return None
    counts = torch.bincount(line[line >= 0], minlength=units)
    if counts.numel() != units or int(counts.min()) != int(counts.max()) or \
            int(counts[0]) == 0:
        return None
    return int(counts[0])


def _slice_bounds(node: fx.Node, laid: torch.Tensor, unit_of: torch.Tensor,
                  units: int) -> set[tuple[str, int, int]]:
    """(node, argument, entries per unit) for a slice's start and end along the axis the units
    lie along, where the entries before the bound are the same number of every unit's (Phi-3
    cuts q, k and v out of its fused qkv at heads x head dim and after)."""
    axis = (node.args[1] if len(node.args) > 1 else 0) % laid.ndim
    line = unit_of[laid.long().clamp_min(0)].movedim(axis, -1).reshape(-1, laid.shape[axis])[0]
    if bool((line < 0).any()) or int(line.min()) == int(line.max()):
        return set()  # entries of no unit, or of one alone along this axis
    found = set()
    for position in (2, 3):
        bound = node.args[position] if len(node.args) > position else None
        if not isinstance(bound, int) or not 0 < bound < line.numel() or bound % units:
            continue
        if torch.equal(torch.bincount(line[:bound], minlength=units),
                       torch.full((units,), bound // units)):
            found.add((node.name, position, bound // units))
    return found


def _sizes(node: fx.Node) -> list | None:
    """The size list a reshape, expand or unflatten writes, or the sizes a split cuts (GPT-2
    splits its fused qkv by width), else None."""
    if node.target is aten.split.Tensor and isinstance(node.args[1], int):
        return [node.args[1]]
    at = 2 if node.target is aten.unflatten.int else \
        1 if node.target in RESHAPES or node.target in SPLITS else None
    if at is None or not isinstance(node.args[at], (list, tuple)):
        return None
    return list(node.args[at])


def size_product(node: fx.Node) -> tuple[str, int, int] | None:
    """(node, position, number) for a size computed as `batch * number`; None otherwise."""
    if node.target is not operator.mul:
        return None
    numbers = [(i, a) for i, a in enumerate(node.args) if isinstance(a, int)]
    if len(numbers) != 1 or len(node.args) != 2:
        return None
    return (node.name, *numbers[0])


def slice_of(param: str, rows: torch.Tensor, axis: int = 0) -> Slice | None:
    """The Slice whose unit u owns `rows[u]`, if they are consecutive blocks, or one entry in
    each of `rows.shape[1]` parts of a unit per entry (NesT's output projection reads its
    heads' features laid out [features, heads])."""
    (units, block), offset = rows.shape, int(rows[0, 0])
    expected = offset + torch.arange(rows.numel()).reshape(rows.shape)
    if torch.equal(rows, expected):
        return Slice(param, axis, block, offset)
    parts = offset + torch.arange(units)[:, None] + units * torch.arange(block)
    return Slice(param, axis, 1, offset, block, units) if torch.equal(rows, parts) else None
