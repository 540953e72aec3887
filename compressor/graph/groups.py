"""The prunable group: coupled units (neurons, channels, attention heads) that are removed together.

A group says, per tensor, which entries belong to its units: producer rows (weights and
per-unit constants), the node where firing is counted, and consumer columns. Everything that
selects, compensates or shrinks speaks only in groups and kept indices, never in layer types.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, replace

import torch
from torch import fx

from .capture import get_tensor, set_tensor
from .ops import HOMOGENEOUS, MEAN, SUM


@dataclass(frozen=True)
class Slice:
    """Entries of tensor `param` along `axis` owned by the units: unit j owns entries
    [offset + j*block, offset + (j+1)*block) (block > 1 after a Flatten, where a channel owns
    H*W columns; offset > 0 where a channel `cat` puts other layers' channels before them).
    With `parts` > 1 the axis holds the units once per part, `period` entries a part (a
    grouped convolution's channels: unit j is channel j of every group)."""

    param: str
    axis: int
    block: int = 1
    offset: int = 0
    parts: int = 1
    period: int = 0

    def entries(self, units: torch.Tensor) -> torch.Tensor:
        """Indices along `axis` of the entries units `units` own (part by part)."""
        one = self.offset + (units.to(torch.int64)[:, None] * self.block +
                             torch.arange(self.block)).reshape(-1)
        if self.parts == 1:
            return one
        return (torch.arange(self.parts)[:, None] * self.period + one).reshape(-1)

    def rows(self, tensor: torch.Tensor, size: int) -> torch.Tensor:
        """The entries of `tensor` the `size` units own, one row per unit: [size, -1]."""
        t = tensor.movedim(self.axis, 0).narrow(0, self.offset, self.parts * size * self.block)
        t = t.reshape(self.parts, size, -1).movedim(0, 1)
        return t.reshape(size, -1)

    def per_entry(self, values: torch.Tensor) -> torch.Tensor:
        """Per-unit `values` spread over the entries `entries` lists for those units."""
        return values.repeat_interleave(self.block).repeat(self.parts)

    def resized(self, size: int) -> Slice:
        """This slice for a group of `size` units (a part's length follows it)."""
        return replace(self, period=size * self.block) if self.parts > 1 else self


@dataclass(frozen=True)
class PrunableGroup:
    """A set of units removed together.

    Attributes:
        name: display name (the producing layer).
        size: current number of units.
        weights: producer entries that multiply the group's input (Linear rows).
        biases: producer per-unit constants (Linear bias; later BatchNorm entries).
        activations: fx nodes whose outputs are counted: the activation each consumer reads
            the units through (one for a chain; one per block for a residual stream).
        consumers: columns (or input channels) of the layers that read the units.
        consumer_biases: biases of those layers, where constant outputs are folded.
        consumer_nodes: the fx nodes of those layers (their inputs are what they read).
        exact_constants: whether a unit's constant output folds exactly into the consumers'
            biases (one producer, and no consumer is a zero-padded convolution, whose borders
            see the padding instead of the constant).
        grouped_nodes: depthwise convolutions that filter each unit alone (their weights are
            in `weights`); their `groups` argument follows the group's size.
        functions: the activation nodes a unit's output passes through, in order, on its way
            to every consumer (what turns a constant unit's bias into what the consumers see).
        kinds: the activation of each node in `activations`, by name (`ops.ACTIVATIONS`, or
            "gated" for the product of two producers' outputs).
        axes: the axis of the units in each node of `activations` ([B, C, H, W] and [B, F]: 1;
            tokens [B, T, F]: 2); every other axis is samples and positions.
        offsets: where the units start on that axis in each node of `activations` (behind a
            channel `cat`, other layers' channels come first).
        carried: per-unit entries of the ops on the way that scale and shift each channel
            (a BatchNorm that could not be folded: after a `cat` or a residual add; a layer
            scale); they are removed with the units, and merging is not exact through them.
        parts: the number of groups of grouped convolutions the units are read by: unit j is
            channel j of every group, so the groups stay equal; or 2 behind a cat that holds
            each unit twice (`rules.joins.doubled`: channel j of each half).
        once: behind such a cat, the depthwise convolutions and counted activations before
            it, which hold each unit once.
    """

    name: str
    size: int
    weights: tuple[Slice, ...]
    biases: tuple[Slice, ...]
    activations: tuple[str, ...]
    consumers: tuple[Slice, ...]
    consumer_biases: tuple[str, ...]
    consumer_nodes: tuple[str, ...] = ()
    exact_constants: bool = True
    grouped_nodes: tuple[str, ...] = ()  # depthwise convs whose `groups` is the group's size
    functions: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ("relu",)
    axes: tuple[int, ...] = ()
    offsets: tuple[int, ...] = ()
    carried: tuple[Slice, ...] = ()
    parts: int = 1  # grouped convolutions: each unit is one channel of each of `parts` groups
    once: tuple[str, ...] = ()  # nodes holding each unit once in a group of 2 parts
    reshapes: tuple[tuple[str, int, int], ...] = ()  # (node, axis, entries per unit) of the
    #     reshapes that write the units' axis as a number
    blocks: tuple[int, ...] = ()  # entries each unit has in each node of `activations` (heads)
    counted: tuple[Slice, ...] = ()  # counted tensors with no entries in the graph, one entry
    #     per unit: the products of activations (`graph.products`) of a heads group
    stream: bool = False  # the residual stream: read through normalizations over its units,
    #     so removing one changes what the others are read as (no compensation is exact)

    @property
    def relu(self) -> bool:
        """Whether every consumer reads the units through a ReLU (a unit that never fires
        then outputs exactly zero)."""
        return set(self.kinds) == {"relu"}

    @property
    def tokens(self) -> bool:
        """Whether the units are features of tokens (on an axis past the first after the
        batch: a transformer's feed-forward units and heads)."""
        return any(axis >= 2 for axis in self.axes)

    @property
    def mergeable(self) -> bool:
        """Whether neuron merging is exact for the units: every activation on the way is
        positively homogeneous (f(s*z) = s*f(z) for s > 0) and no BatchNorm shifts them."""
        return set(self.kinds) <= set(HOMOGENEOUS) and not self.carried

    @property
    def slices(self) -> tuple[Slice, ...]:
        return self.weights + self.biases + self.consumers + self.carried

    def units_of(self, k: int, output: torch.Tensor) -> torch.Tensor:
        """The units in `output`, the output of `activations[k]`: [B', units, positions],
        B' its first axis (the batch, unless tokens come first)."""
        axis = self.axes[k] if self.axes else 1
        offset = self.offsets[k] if self.offsets else 0
        block = self.blocks[k] if self.blocks else 1
        parts = 1 if self.activations[k] in self.once else self.parts
        units = output.movedim(axis, 1).narrow(1, offset, parts * self.size * block)
        units = units.reshape(output.shape[0], parts, self.size, -1).movedim(1, 2)
        return units.reshape(output.shape[0], self.size, -1)


def take(gm: fx.GraphModule, groups: tuple[PrunableGroup, ...],
         keep: dict[str, torch.Tensor]) -> tuple[PrunableGroup, ...]:
    """Physically keep only units `keep[g]` (sorted indices) of each group named in `keep`;
    return every group of `groups` resized, with its offsets moved where a tensor it shares
    with other groups (a consumer of a channel `cat`) lost entries before its own."""
    kept: dict[tuple[str, int], torch.Tensor] = {}  # per tensor and axis: entries that stay
    for g in groups:
        if g.name not in keep:
            continue
        gone = torch.ones(g.size, dtype=torch.bool)
        gone[keep[g.name].to(torch.int64)] = False
        for s in g.slices:
            if (s.param, s.axis) not in kept:
                length = get_tensor(gm, s.param).shape[s.axis]
                kept[s.param, s.axis] = torch.ones(length, dtype=torch.bool)
            kept[s.param, s.axis][s.entries(gone.nonzero().flatten())] = False
    for (param, axis), mask in kept.items():
        set_tensor(gm, param, get_tensor(gm, param).index_select(axis, mask.nonzero().flatten()))
    sizes = {g.name: int(keep[g.name].numel()) if g.name in keep else g.size for g in groups}
    for g in groups:
        resize_reshapes(gm, g, sizes[g.name] - g.size)
    for node in gm.graph.nodes:
        for g in groups:
            if node.name in g.grouped_nodes:  # one group per channel left
                args = list(node.args) + [1] * max(0, 7 - len(node.args))
                args[6] = int(get_tensor(gm, node.args[1].target).shape[0])
                node.args = tuple(args)

    def moved(s: Slice, size: int) -> Slice:
        mask = kept.get((s.param, s.axis))
        s = s.resized(size)
        return s if mask is None or s.offset == 0 else \
            replace(s, offset=int(mask[:s.offset].sum()))

    def counted(g: PrunableGroup) -> tuple[int, ...]:  # units of groups before g's go
        return tuple(offset - sum(h.size - sizes[h.name] for h in groups for node, o in
                                  zip(h.activations, h.offsets) if node == name and o < offset)
                     for name, offset in zip(g.activations, g.offsets))

    def all_moved(slices: tuple[Slice, ...], size: int) -> tuple[Slice, ...]:
        return tuple(moved(s, size) for s in slices)

    return tuple(replace(g, size=(n := sizes[g.name]), weights=all_moved(g.weights, n),
                         biases=all_moved(g.biases, n), consumers=all_moved(g.consumers, n),
                         carried=all_moved(g.carried, n), offsets=counted(g))
                 for g in groups)


def resize_reshapes(gm: fx.GraphModule, group: PrunableGroup, change: int) -> None:
    """Move the sizes reshapes write for the group's axis by `change` units: the entry at
    `position` of a view's or unflatten's size list, a normalization's `normalized_shape` or
    a split's sizes, or of the arguments of a product that computes a size
    (`batch * heads`), of a slice (its start or end) or of a GroupNorm (its group count). An
    RMSNorm averages its squares over its features: its weight is scaled by
    sqrt(old / new features), so that a stream whose removed features held little
    of its energy (its least principal directions, `compressor.prune.rotate`) is normalized
    as by the full width. A mean over the units becomes their sum divided by their number
    now, before any goes: what is left of the same mean (`rules.shapes._over_units`)."""
    if not change or not group.reshapes:
        return
    nodes = {n.name: n for n in gm.graph.nodes}
    for name, position, per_unit in group.reshapes:
        node = nodes[name]
        if node.target in (MEAN, SUM):
            if node.target is MEAN:
                _as_sum(gm, node, group.size * per_unit)
            continue
        if node.target is torch.ops.aten.rms_norm.default and len(node.args) > 2 and \
                isinstance(node.args[2], fx.Node):
            old = int(node.args[1][position])
            weight = get_tensor(gm, node.args[2].target)
            set_tensor(gm, node.args[2].target,
                       weight * math.sqrt(old / (old + change * per_unit)))
        if node.target in (operator.mul, torch.ops.aten.slice.Tensor,
                           torch.ops.aten.group_norm.default):
            args = list(node.args)  # a product's number, a slice's start or end, or the
            # group count of a GroupNorm of a group per channel
            args[position] += change * per_unit
            node.args = tuple(args)
            continue
        if node.target is torch.ops.aten.split.Tensor and isinstance(node.args[1], int):
            node.args = (node.args[0], node.args[1] + change * per_unit, *node.args[2:])
            continue
        at = 2 if node.target is torch.ops.aten.unflatten.int else 1
        shape = list(node.args[at])
        shape[position] += change * per_unit
        node.args = (*node.args[:at], shape, *node.args[at + 1:])


def _as_sum(gm: fx.GraphModule, mean: fx.Node, units: int) -> None:
    """`mean` over `units` entries made `sum(...) / units` (the same value, a fixed divisor)."""
    mean.target = SUM  # the same arguments: (x, dims, keepdim)
    with gm.graph.inserting_after(mean):
        divided = gm.graph.call_function(torch.ops.aten.div.Tensor, (mean, float(units)))
    mean.replace_all_uses_with(divided, delete_user_cb=lambda user: user is not divided)
    if "val" in mean.meta:
        divided.meta["val"] = mean.meta["val"]


def constant_outputs(gm: fx.GraphModule, group: PrunableGroup) -> torch.Tensor:
    """Per unit: what the consumers read from it if that is the same for every input (no
    incoming weights: its activation of its bias) and folds exactly into the consumers
    (`group.exact_constants`), else NaN."""
    if not group.exact_constants:
        return torch.full((group.size,), float("nan"), dtype=torch.float64)
    connected = torch.zeros(group.size, dtype=torch.bool)
    for s in group.weights:
        connected |= (s.rows(get_tensor(gm, s.param).detach(), group.size) != 0).any(dim=1)
    value = torch.zeros(group.size, dtype=torch.float64)
    for s in group.biases:
        value += get_tensor(gm, s.param).detach().double()
    nodes = {n.name: n for n in gm.graph.nodes}
    for name in group.functions:  # relu(bias), gelu(bias), ...: the op itself, with its args
        node = nodes[name]
        value = node.target(value.clone(), *node.args[1:], **node.kwargs)
    value[connected] = float("nan")
    return value


def unit_rows(gm: fx.GraphModule, group: PrunableGroup) -> torch.Tensor:
    """Per unit, everything that produces it, as one float64 row: [weights | biases]."""
    parts = [s.rows(get_tensor(gm, s.param).detach().double(), group.size)
             for s in group.weights + group.biases]
    return torch.cat(parts, dim=1)


def merge_into(gm: fx.GraphModule, group: PrunableGroup, sources: torch.Tensor,
               targets: torch.Tensor, scales: torch.Tensor) -> None:
    """Make each consumer read unit `targets[i]` for what it read from `sources[i]` too:
    column target += scales[i] * column source (exact when source = scales[i] * target)."""
    if sources.numel() == 0:
        return
    for s in group.consumers:
        w = get_tensor(gm, s.param).detach()
        moved = w.double().movedim(s.axis, -1).clone()
        added = moved.index_select(-1, s.entries(sources)) * s.per_entry(scales.double())
        moved.index_add_(-1, s.entries(targets), added)
        set_tensor(gm, s.param, moved.movedim(-1, s.axis).to(w.dtype).contiguous())


def fold_into_consumers(gm: fx.GraphModule, group: PrunableGroup, units: torch.Tensor,
                        values: torch.Tensor) -> None:
    """Add what units `units` contribute when they output `values` to the consumers' biases."""
    if units.numel() == 0:
        return
    for s, bias_name in zip(group.consumers, group.consumer_biases):
        w = get_tensor(gm, s.param).detach().movedim(s.axis, -1)
        columns = s.entries(units)  # selected before the float64 copy: only those columns
        contribution = w.index_select(-1, columns).double() @ s.per_entry(values.double())
        contribution = contribution.reshape(w.shape[0], -1).sum(1)  # conv: every kernel tap
        bias = get_tensor(gm, bias_name).detach()
        set_tensor(gm, bias_name, (bias.double() + contribution).to(bias.dtype))


def zero_consumers(gm: fx.GraphModule, group: PrunableGroup, units: torch.Tensor) -> None:
    """Zero the consumer columns of `units`: the network computes as if they were removed."""
    for s in group.consumers:
        w = get_tensor(gm, s.param).detach().clone()
        columns = s.entries(units)
        w.index_fill_(s.axis, columns, 0)
        set_tensor(gm, s.param, w)


def weight_count(shapes: dict[str, tuple[int, ...]], groups: list[PrunableGroup],
                 sizes: dict[str, int], costs: dict[str, int] | None = None) -> int:
    """Number of weight entries of tensors `shapes` (the groups' current shapes) when each
    group has `sizes[group]` units, each entry of tensor p counted `costs[p]` times (default
    once; its output positions to count FLOPs / 2). An axis several groups share (a consumer
    of a channel `cat`) loses what each of them loses."""
    lost: dict[str, dict[int, int]] = {}
    for g in groups:
        for s in g.weights + g.consumers + g.counted:
            axis = lost.setdefault(s.param, {})
            axis[s.axis] = axis.get(s.axis, 0) + (g.size - sizes[g.name]) * s.block * s.parts
    total = 0
    for param, shape in shapes.items():
        dims = [n - lost.get(param, {}).get(i, 0) for i, n in enumerate(shape)]
        total += math.prod(dims) * (costs.get(param, 1) if costs else 1)
    return total
