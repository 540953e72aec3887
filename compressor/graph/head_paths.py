"""How an attention's q, k or v is made from a Linear's output: ops that only move entries,
and head-local regions between them (a rotary position embedding) that keep every entry in its
head; each head's rows of the Linear read through such a path (`head_rows`), and its columns of
the output projection read forward from the attention's output (`head_columns`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from .ops import LINEAR
from .replay import MOVES, SCALES, replayed, written_sizes

aten = torch.ops.aten


@dataclass(frozen=True)
class Path:
    """How a Linear's output becomes an attention's q, k or v: runs of ops that only move
    entries, joined by head-local regions (a rotary position embedding) whose output keeps
    each entry in its input's place as far as heads go."""

    linear: fx.Node
    runs: tuple[tuple[fx.Node, tuple[fx.Node, ...]], ...]  # (what a run reads, its ops)
    nodes: tuple[fx.Node, ...]  # every op on the way, the regions' own included

    def replayed(self, index: torch.Tensor, values: dict) -> torch.Tensor:
        for start, ops in self.runs:  # a region passes its input's layout on
            index = replayed(list(ops), start, index, values)
        return index

    def region_inputs(self, index: torch.Tensor, values: dict) -> list[torch.Tensor]:
        """The layout each head-local region reads, in order."""
        found = []
        for start, ops in self.runs[:-1]:
            index = replayed(list(ops), start, index, values)
            found.append(index)
        return found

    def written_sizes(self, index: torch.Tensor, values: dict, unit_of: torch.Tensor,
                      units: int) -> set[tuple[str, int, int]]:
        found = set()
        for start, ops in self.runs:
            found |= written_sizes(list(ops), start, index, values, unit_of, units)
            index = replayed(list(ops), start, index, values)
        moved = {n for _, ops in self.runs for n in ops}
        for node in self.nodes:  # a region's views write the head count second, if at all
            size = node.args[1][1] if node not in moved and node.target in REGION_VIEWS \
                else None
            if isinstance(size, int) and size > 0:
                found.add((node.name, 1, size // units))
        return found


def path_to_linear(node: fx.Node, values: dict) -> Path | None:
    """The Linear `node` is made from through ops that only move entries and head-local
    regions (`_head_local`); None if anything else is on the way."""
    runs, ops, nodes = [], [], []
    while node.op == "call_function" and node.target is not LINEAR:
        moves = node.target in MOVES or getattr(node.target, "__name__", "") == "getitem"
        scales = node.target in SCALES and sum(isinstance(a, fx.Node) for a in node.args) == 1
        if moves or scales:
            ops.append(node)
            nodes.append(node)
            node = node.args[0]
        else:
            region = _head_local(node, values)
            if region is None:
                return None
            runs.append((node, tuple(ops[::-1])))
            nodes += region[1]
            node, ops = region[0], []
        if not isinstance(node, fx.Node):
            return None
    if node.target is not LINEAR or not ops:
        return None
    runs.append((node, tuple(ops[::-1])))
    return Path(node, tuple(runs[::-1]), tuple(nodes))


ELEMENTWISE = {aten.mul.Tensor, aten.add.Tensor, aten.sub.Tensor, aten.neg.default,
               aten.alias.default, aten.clone.default, aten.contiguous.default,
               aten.detach.default, aten.to.dtype, aten._to_copy.default}
ALONG = {aten.slice.Tensor, aten.cat.default, aten.stack.default}  # an axis second
NORMS = {aten.rms_norm.default, aten.layer_norm.default}  # over the sizes second
REGION_VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}


def head_rows(node: fx.Node, values: dict) -> tuple[Path, torch.Tensor] | None:
    """(how the Linear's output reaches `node`, per head the Linear's output features it owns
    [H, d])."""
    path = path_to_linear(node, values)
    if path is None:
        return None
    out = values[path.linear.name]
    index = torch.arange(out.shape[-1], dtype=torch.float64).expand(out.shape).contiguous()
    laid = path.replayed(index, values)
    if laid.ndim == 3 and laid.shape[0] > 1:  # heads in the batch axis: [batch x H, T, d]
        laid = laid[None]  # (the sample is one input)
    if laid.ndim == 5:  # over windows before the heads (Twins): [batch, windows, H, T, d],
        # or after them (NesT): [batch, H, windows, T, d]; each window's tokens alike
        if bool((laid == laid[:, :1]).all()):
            laid = laid.movedim(1, 2)
        elif not bool((laid == laid[:, :, :1]).all()):
            return None
        laid = laid.flatten(2, 3)  # the windows' tokens as tokens
    if laid.ndim != 4:
        return None
    heads = laid[0].permute(0, 2, 1)  # [H, d, tokens]
    if not bool((heads == heads[..., :1]).all()):  # every token: the same features
        return None
    heads = heads[..., 0].long()
    owner = torch.full((out.shape[-1],), -1)
    owner[heads.flatten()] = torch.arange(heads.shape[0]).repeat_interleave(heads.shape[1])
    for read in path.region_inputs(index, values):  # a region acts along its last axis:
        lines = owner[read.long()]  # normalizes or rotates features of one head there
        if not bool((lines == lines[..., :1]).all()):
            return None
    return path, heads


def head_columns(out: fx.Node, chain: list, h: int, d: int,
             values: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per input column of the output projection, the entry h*d + e of the attention's output
    it reads (head h, feature e), and those entries laid out as the output, or None. The
    output is [batch, H, T, d] ([batch x H, T, d] for one input), or over windows:
    [batch, windows, H, T, d] or [batch, H, windows, T, d]."""
    y = values[out.name]
    for axis in dict.fromkeys((y.ndim - 3, 1)):  # the heads' axis
        if axis < 0 or y.shape[axis] != h or (axis != y.ndim - 3 and y.ndim != 5):
            continue
        shape = [1] * y.ndim
        shape[axis], shape[-1] = h, d
        ids = torch.arange(h * d, dtype=torch.float64).reshape(shape).expand(y.shape)
        ids = ids.contiguous()
        columns = replayed(chain, out, ids, values)
        flat = columns.reshape(-1, columns.shape[-1]) if columns.ndim >= 2 else None
        if flat is not None and bool((flat == flat[:1]).all()):
            return flat[0].long(), ids
    return None


def _head_local(end: fx.Node, values: dict) -> tuple[fx.Node, list[fx.Node]] | None:
    """(the one input, the ops) of a region that computes `end` [batch, heads, tokens, d] (or
    [batch, tokens, heads, d], as GPT-J rotates q and k before moving the heads forward)
    from one tensor of its shape and tables the same for every head (an axis of 1 or none
    where the heads lie), through products, sums, negations and copies, and slices, stacks,
    concatenations and views within each head (along the axes other than the batch and the
    heads), read by nothing outside it: a rotary position embedding, x · cos +
    rotate_half(x) · sin, rotates pairs of features within a head (Phi-3's of a part of
    them, the rest concatenated back; EVA-02's interleaved pairs, of the tokens after the
    class token). None if `end` is not so."""
    shape = getattr(values.get(end.name), "shape", ())
    if len(shape) != 4:
        return None
    for axis in (1, 2):  # where the heads are
        found = _region(end, values, shape, axis)
        if found is not None:
            return found
    return None


def _region(end: fx.Node, values: dict, shape: torch.Size, axis: int
            ) -> tuple[fx.Node, list[fx.Node]] | None:
    """`_head_local` with the heads on `axis` of `end`."""
    region, sources, tables, sizes, todo = [], set(), set(), set(), [end]
    while todo:
        node = todo.pop()
        if node in region or node in sources:
            continue
        value = values.get(node.name)
        if node in sizes:
            continue  # a view's batch size, read from the model's input
        if not isinstance(value, torch.Tensor):
            return None
        if value.ndim < 3 or value.ndim <= 4 and value.shape[axis - 4] == 1 and not (
                shape[axis] == 1 and any(a.target is LINEAR for a in _ancestors(node))):
            tables.add(node)  # (with one head, what a Linear makes is the region's own)
        elif value.ndim < 4 or value.shape[0] != shape[0] or value.shape[axis] != shape[axis]:
            return None
        elif _within_heads(node, value, values, shape[axis], axis):
            region.append(node)
            todo += node.all_input_nodes
            if node.target in REGION_VIEWS:
                sizes |= {a for a in node.args[1] if isinstance(a, fx.Node)}
        else:
            sources.add(node)
    if len(sources) != 1 or not region:
        return None
    (source,) = sources
    if values[source.name].shape != shape or \
            any(not set(n.users) <= set(region) for n in [source, *region] if n is not end):
        return None
    if any(source in _ancestors(t) for t in tables):
        return None  # a "table" computed from the input itself
    return source, region


def _within_heads(node: fx.Node, value: torch.Tensor, values: dict, heads: int,
                  axis: int) -> bool:
    """Whether `node` (its value [batch, heads, ...], or with the heads on `axis`) keeps each
    head's entries in that head: an elementwise op; a slice, stack or concatenation along
    an axis other than the batch and the heads (a slice of the whole batch too); a flatten
    of axes after the heads; with the heads second, a view that keeps [batch, heads] in
    front and writes the head count, if at all, as the number `heads`; a norm over the last
    axis (Qwen3's q and k norms, over each head's features: `head_rows` checks that the
    last axis is one head's)."""
    if node.target in ELEMENTWISE:
        return True
    first = node.args[0] if node.args else None
    read = getattr(values.get(getattr(first, "name", "")), "shape", ())
    if node.target in ALONG:
        along = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if along % value.ndim not in (0, axis):
            return True
        return node.target is aten.slice.Tensor and read == value.shape
    if node.target is aten.flatten.using_ints:  # GPT-J's interleaved pairs, flattened back
        return len(read) > axis + 1 and node.args[1] % len(read) > axis
    if node.target in REGION_VIEWS and axis == 1:  # of a tensor of the region's (EVA-02's
        size = node.args[1][1] if len(node.args[1]) > 1 else None  # stacked pairs)
        return len(read) >= 4 and read[:2] == value.shape[:2] and (
            isinstance(size, fx.Node) or size in (heads, -1))
    return node.target in NORMS and len(node.args[1]) == 1  # over the last axis


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo += n.all_input_nodes
    return seen
