"""Pack a pruned model densely: physically smaller layers, no masks."""

from __future__ import annotations

import torch
from torch import fx

from .groups import PrunableGroup, take


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
