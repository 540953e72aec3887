"""Activation counters (paper Algorithm 2): per unit, on how many samples it fires."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import fx

from ..graph.capture import outputs_of
from ..graph.groups import PrunableGroup

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ActivationStats:
    """Per group: `counts` (samples on which each unit's output is non-zero) and `means` (mean
    output of each unit), over `samples` calibration samples."""

    counts: dict[str, torch.Tensor]
    means: dict[str, torch.Tensor]
    samples: int

    def dead(self, group: str) -> int:
        return int((self.counts[group] == 0).sum())


def count_activations(gm: fx.GraphModule, groups: tuple[PrunableGroup, ...], x: torch.Tensor, *,
                      batch_size: int = 1000, progress: Progress | None = None) -> ActivationStats:
    """Count, for every unit of every group, the samples of `x` on which it fires.

    Args:
        gm: the working graph.
        groups: the groups whose activation nodes are counted.
        x: calibration inputs.
        batch_size: samples per forward pass.
        progress: called with (samples done, total) after each batch.

    Returns:
        Counts and mean activations accumulated over all batches.
    """
    probe = outputs_of(gm, [g.activation for g in groups])
    counts = {g.name: torch.zeros(g.size, dtype=torch.int64) for g in groups}
    sums = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    n = int(x.shape[0])
    with torch.no_grad():
        for start in range(0, n, batch_size):
            acts = probe(x[start:start + batch_size])
            for g, a in zip(groups, acts):
                per_unit = a.reshape(a.shape[0], a.shape[1], -1)  # conv-ready: [B, units, positions]
                counts[g.name] += (per_unit != 0).any(dim=2).sum(dim=0)
                sums[g.name] += per_unit.double().mean(dim=2).sum(dim=0)
            if progress is not None:
                progress(min(start + batch_size, n), n)
    return ActivationStats(counts, {k: v / max(n, 1) for k, v in sums.items()}, n)
