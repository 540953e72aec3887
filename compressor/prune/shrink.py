"""Shrink: physically remove units from every tensor of their groups; and its unpack, `expand`."""

from __future__ import annotations

import copy

import torch
from torch import fx

from ..graph.capture import get_tensor, set_tensor
from ..graph.groups import PrunableGroup, Slice, resize_reshapes, take


def shrink(gm: fx.GraphModule, groups: tuple[PrunableGroup, ...],
           removed: dict[str, torch.Tensor]) -> tuple[PrunableGroup, ...]:
    """Remove units `removed[group]` from every tensor of each group; return the resized groups."""
    keep = {}
    for g in groups:
        mask = torch.ones(g.size, dtype=torch.bool)
        mask[removed[g.name]] = False
        keep[g.name] = mask.nonzero().flatten()
    resized = take(gm, groups, keep)
    gm.recompile()
    return resized


def expand(groups: tuple[PrunableGroup, ...], pruned: fx.GraphModule,
           kept: dict[str, torch.Tensor]) -> fx.GraphModule:
    """The unpack of `shrink`: a copy of `pruned` at the original sizes of `groups` (the groups
    before any unit was removed), with `kept[group]` the original indices of the units
    `pruned` has and the removed units' entries zero. Computes what `pruned` computes: a
    removed unit has no weights and a zero bias, so it outputs 0, and whatever constant it
    had was folded into the next bias before it was removed."""
    out = copy.deepcopy(pruned)
    owners: dict[tuple[str, int], list[tuple[Slice, PrunableGroup]]] = {}
    for g in groups:
        for sl in g.slices:
            owners.setdefault((sl.param, sl.axis), []).append((sl, g))
    for name, small in pruned.named_parameters():
        index, shape = {}, list(small.shape)
        for axis in range(small.ndim):
            slices = owners.get((name, axis), [])
            if not slices:
                continue
            shape[axis] += sum((g.size - kept[g.name].numel()) * sl.block * sl.parts
                               for sl, g in slices)
            stays = torch.ones(shape[axis], dtype=torch.bool)  # entries no group owns stay
            for sl, g in slices:
                gone = torch.ones(g.size, dtype=torch.bool)
                gone[kept[g.name].to(torch.int64)] = False
                stays[sl.entries(gone.nonzero().flatten())] = False
            index[axis] = stays.nonzero().flatten()
        full = torch.zeros(shape, dtype=small.dtype)
        ix = tuple(index.get(a, torch.arange(n)) for a, n in enumerate(shape))
        full[torch.meshgrid(*ix, indexing="ij")] = small.detach()
        set_tensor(out, name, full)
    for g in groups:
        resize_reshapes(out, g, g.size - int(kept[g.name].numel()))
    for node in out.graph.nodes:  # depthwise convolutions: a group per channel again
        for g in groups:
            if node.name in g.grouped_nodes:
                channels = int(get_tensor(out, node.args[1].target).shape[0])
                node.args = (*node.args[:6], channels, *node.args[7:])
    out.recompile()
    return out
