"""Compensate removed units: the next layer makes up for what they contributed.

Groups are handled in graph order, from the input to the output. After a group is handled its
removed units' consumer columns are zero, so every later group sees the pruned network."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import fx

from ..graph.capture import sharing_tensors
from ..graph.groups import (
    PrunableGroup,
    constant_outputs,
    fold_into_consumers,
    merge_into,
    unit_rows,
    zero_consumers,
)
from .calibrate import ActivationStats
from .config import CompensateConfig, Compensation
from .refit import Refit, refit_in_order


@dataclass(frozen=True)
class Compensated:
    """What happened to one group's removed units."""

    exact: int  # constant outputs, folded exactly into the next layer's bias
    merged: int  # folded into a similar kept unit (merge)
    mean_rule: tuple[str, ...] = ()  # consumers given the mean rule, not lsq (`refit`)


def compensate(gm: fx.GraphModule, groups: tuple[PrunableGroup, ...],
               removed: dict[str, torch.Tensor], config: CompensateConfig, *,
               stats: ActivationStats | None = None, x: torch.Tensor | None = None,
               progress: Callable[[int, int], None] | None = None) -> dict[str, Compensated]:
    """Make the next layers make up for units about to be removed; call before shrinking.

    A unit with no incoming weights outputs a constant (its activation of its bias); that
    constant is always folded into the next layer's bias, so removing it is exact. The other
    removed units are compensated by `config.method`:
    none (dropped), mean (their mean calibration activation folded into the next bias),
    merge (the next layer's column of the most similar kept unit absorbs theirs, when the
    cosine similarity of [w | b] rows is at least `config.merge_threshold`; only in groups
    where that is exact, `PrunableGroup.mergeable`: the others' units are dropped),
    lsq (every layer that reads removed units is refitted by least squares, in one pass in
    graph order, on the pruned network's activations: `compressor.prune.refit`). A residual
    stream's units are dropped: they are read through normalizations over them, which no
    method models.

    Args:
        gm: the working graph, modified in place.
        groups: its groups, in graph order.
        removed: per group, the units that will be removed.
        config: the compensation method and its settings.
        stats: activation statistics of `gm` (needed by mean).
        x: calibration inputs (needed by lsq).
        progress: receives (layers refitted, layers to refit) with lsq.

    Returns:
        Per group, how many removed units were exact constants and how many were merged.
    """
    modes = {g.name: Compensation.NONE if g.stream or (config.method is Compensation.MERGE
                                                       and not g.mergeable)
             else config.method for g in groups}
    if (config.method is Compensation.MEAN and stats is None) or \
            (config.method is Compensation.LSQ and x is None):
        raise ValueError(f"compensation {config.method.value} needs calibration data")
    lsq = Compensation.LSQ in modes.values()
    reference = sharing_tensors(gm) if lsq else None  # every change below replaces tensors
    # merge matches on the rows as they were before any group changed (as Kim et al.'s code)
    rows = {g.name: unit_rows(gm, g) for g in groups if modes[g.name] is Compensation.MERGE}
    done = {}
    for g in groups:
        mode = modes[g.name]
        units = removed[g.name]
        keep = _complement(units, g.size)
        constants = constant_outputs(gm, g)[units]
        is_constant = ~torch.isnan(constants)
        values = stats.means[g.name][units] if mode is Compensation.MEAN \
            else torch.zeros(units.numel(), dtype=torch.float64)
        fold_into_consumers(gm, g, units, torch.where(is_constant, constants, values))
        merged = _merge(gm, g, rows[g.name], units[~is_constant], keep,
                        config.merge_threshold) if mode is Compensation.MERGE else 0
        zero_consumers(gm, g, units)
        done[g.name] = Compensated(int(is_constant.sum()), merged)
    if lsq:
        refits = _refits(groups, removed, modes)
        by_mean = refit_in_order(gm, reference, refits, x, ridge=config.ridge,
                                 device=config.device, progress=progress)
        for g in groups:
            mine = tuple(n for n in g.consumer_nodes if n in by_mean)
            if mine:
                done[g.name] = replace(done[g.name], mean_rule=mine)
    return done


def _refits(groups: tuple[PrunableGroup, ...], removed: dict[str, torch.Tensor],
            modes: dict[str, Compensation]) -> dict[str, Refit]:
    """Every layer an lsq group's units are read by, with the input columns every group that
    it reads drops (a consumer of a channel `cat` reads several)."""
    refits: dict[str, Refit] = {}
    for g in groups:
        for s, bias, name in zip(g.consumers, g.consumer_biases, g.consumer_nodes):
            columns = s.entries(removed[g.name])
            if name in refits:
                columns = torch.cat([refits[name].dropped, columns])
            elif modes[g.name] is not Compensation.LSQ:
                continue
            refits[name] = Refit(refits[name].bias if name in refits else bias, columns)
    return refits


def _merge(gm: fx.GraphModule, group: PrunableGroup, rows: torch.Tensor, units: torch.Tensor,
           keep: torch.Tensor, threshold: float) -> int:
    """Neuron merging (Kim et al. 2020): match each unit to the kept unit with the most similar
    [w | b] row; if similar enough, that unit's consumers absorb its column scaled by the ratio
    of row norms. Returns how many units were merged."""
    if units.numel() == 0 or keep.numel() == 0:
        return 0
    norms = rows.norm(dim=1)
    directions = rows / norms.clamp_min(torch.finfo(rows.dtype).tiny)[:, None]
    similarity = directions[units] @ directions[keep].T
    similarity[:, norms[keep] == 0] = -float("inf")
    best = similarity.argmax(dim=1)  # the first of equals: deterministic
    ok = similarity.gather(1, best[:, None]).squeeze(1) >= threshold
    sources, targets = units[ok], keep[best[ok]]
    merge_into(gm, group, sources, targets, norms[sources] / norms[targets])
    return int(ok.sum())


def _complement(units: torch.Tensor, size: int) -> torch.Tensor:
    mask = torch.ones(size, dtype=torch.bool)
    mask[units] = False
    return mask.nonzero().flatten()
