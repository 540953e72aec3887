"""Shrink: physically remove units from every tensor of their groups; and its unpack, `expand`."""

from __future__ import annotations

import copy

import torch
from torch import fx

from ..graph.capture import set_tensor
from ..graph.groups import PrunableGroup, take


def shrink(gm: fx.GraphModule, groups: tuple[PrunableGroup, ...],
           removed: dict[str, torch.Tensor]) -> tuple[PrunableGroup, ...]:
    """Remove units `removed[group]` from every tensor of each group; return the resized groups."""
    resized = []
    for g in groups:
        keep = torch.ones(g.size, dtype=torch.bool)
        keep[removed[g.name]] = False
        resized.append(take(gm, g, keep.nonzero().flatten()))
    gm.recompile()
    return tuple(resized)


def expand(groups: tuple[PrunableGroup, ...], pruned: fx.GraphModule,
           kept: dict[str, torch.Tensor]) -> fx.GraphModule:
    """The unpack of `shrink`: a copy of `pruned` at the original sizes of `groups` (the groups
    before any unit was removed), with `kept[group]` the original indices of the units
    `pruned` has and the removed units' entries zero. Computes what `pruned` computes: a
    removed unit has no weights and a zero bias, so it outputs 0, and whatever constant it
    had was folded into the next bias before it was removed."""
    out = copy.deepcopy(pruned)
    index: dict[str, dict[int, tuple[torch.Tensor, int]]] = {}
    for g in groups:
        units = kept[g.name].to(torch.int64)
        for sl in g.slices:
            index.setdefault(sl.param, {})[sl.axis] = (sl.entries(units), g.size * sl.block)
    for name, small in pruned.named_parameters():
        axes = index.get(name, {})
        shape = [axes[a][1] if a in axes else n for a, n in enumerate(small.shape)]
        full = torch.zeros(shape, dtype=small.dtype)
        ix = tuple(axes[a][0] if a in axes else torch.arange(n) for a, n in enumerate(shape))
        full[torch.meshgrid(*ix, indexing="ij")] = small.detach()
        set_tensor(out, name, full)
    out.recompile()
    return out
