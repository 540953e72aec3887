"""Compensate removed units by folding what they would have output into the next layer's bias."""

from __future__ import annotations

import torch
from torch import fx

from .calibrate import ActivationStats
from .config import Compensation
from .groups import PrunableGroup, constant_outputs, fold_into_consumers


def compensate(gm: fx.GraphModule, groups: tuple[PrunableGroup, ...],
               removed: dict[str, torch.Tensor], stats: ActivationStats, *,
               mode: Compensation) -> dict[str, int]:
    """Fold the outputs of units about to be removed into their consumers' biases.

    A unit with no incoming weights outputs a constant (relu(bias)); that constant is always
    folded, so removing it is exact. With `mode=MEAN`, every other removed unit folds its mean
    calibration activation. Call this before the units are removed.

    Returns:
        Per group, how many removed units were exact constants.
    """
    exact = {}
    for g in groups:
        units = removed[g.name]
        constants = constant_outputs(gm, g)[units]
        is_constant = ~torch.isnan(constants)
        values = stats.means[g.name][units] if mode is Compensation.MEAN \
            else torch.zeros(units.numel(), dtype=torch.float64)
        values = torch.where(is_constant, constants, values)
        fold_into_consumers(gm, g, units, values)
        exact[g.name] = int(is_constant.sum())
    return exact
