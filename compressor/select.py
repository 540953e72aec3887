"""Choose which units to remove so that the model keeps at most a given number of weights.

Removing a unit also removes its column in the next layer, and shrinks the cost of units in the
neighbouring groups, so the weight count is recomputed after every removal."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import Scope
from .errors import NothingToPruneError
from .groups import PrunableGroup, weight_count


@dataclass(frozen=True)
class Budget:
    """Keep at most `max_weights` weight entries and, where possible, at least `min_weights`."""

    max_weights: int
    min_weights: int


def select(groups: tuple[PrunableGroup, ...], scores: dict[str, torch.Tensor],
           shapes: dict[str, tuple[int, ...]], budget: Budget, *, scope: Scope,
           original_sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    """Pick units to remove: all dead units (score 0), then lowest scores first until the weight
    count is within budget. A unit whose removal would undershoot `min_weights` is skipped for
    the next one that does not, when there is one; if the count still lands below
    `min_weights`, removed live units are restored (best first) while the budget holds.
    Every group keeps at least one unit.

    Args:
        groups: current groups.
        scores: per group, one score per current unit (lower is removed first).
        shapes: current shapes of all counted weight tensors.
        budget: weight counts to land between.
        scope: GLOBAL ranks all units together; LOCAL removes the same fraction of each group
            (fractions of `original_sizes`, so earlier removals count).
        original_sizes: group sizes before any pruning.

    Returns:
        Per group, the sorted indices of the units to remove.
    """
    sizes = {g.name: g.size for g in groups}
    gone: dict[str, set[int]] = {g.name: set() for g in groups}
    order = {g.name: sorted(range(g.size), key=lambda u, g=g: (float(scores[g.name][u]), u))
             for g in groups}
    ranking = sorted((float(scores[g.name][u]), gi, u) for gi, g in enumerate(groups)
                     for u in range(g.size))
    names = [g.name for g in groups]
    start = 0  # ranking[:start] is removed or in a group at its minimum: never a candidate again

    def count(name: str | None = None, change: int = -1) -> int:
        trial = dict(sizes)
        if name is not None:
            trial[name] += change
        return weight_count(shapes, list(groups), trial)

    def remove(name: str, unit: int) -> None:
        gone[name].add(unit)
        sizes[name] -= 1

    def usable(item: tuple[float, int, int]) -> bool:
        return item[2] not in gone[names[item[1]]] and sizes[names[item[1]]] > 1

    def candidates():
        nonlocal start
        if scope is Scope.GLOBAL:
            while start < len(ranking) and not usable(ranking[start]):
                start += 1
            for item in ranking[start:]:
                if usable(item):
                    yield names[item[1]], item[2]
            return
        by_fraction = sorted(range(len(groups)),
                             key=lambda gi: (1 - sizes[names[gi]] / original_sizes[names[gi]], gi))
        for gi in by_fraction:
            name = names[gi]
            if sizes[name] > 1:
                yield name, next(u for u in order[name] if u not in gone[name])

    for g in groups:
        for u in order[g.name]:
            if scores[g.name][u] == 0 and sizes[g.name] > 1:
                remove(g.name, u)
    current = count()
    while current > budget.max_weights:
        first = fit = None
        for name, unit in candidates():
            first = first or (name, unit)
            if count(name) >= budget.min_weights:
                fit = (name, unit)
                break
        if first is None:
            raise NothingToPruneError(
                f"cannot remove enough weights: with one unit left per prunable layer the model "
                f"keeps {current} weights, above the {budget.max_weights} the target allows; "
                "choose a smaller --target")
        remove(*(fit or first))
        current = count()
    _fill_back(gone, sizes, scores, count, budget, names)
    return {name: torch.tensor(sorted(units), dtype=torch.int64) for name, units in gone.items()}


def _fill_back(gone, sizes, scores, count, budget: Budget, names: list[str]) -> None:
    """Restore removed live units, highest score first, while the count stays in budget."""
    restorable = sorted(((float(scores[name][u]), name, u) for name in names for u in gone[name]
                         if scores[name][u] != 0), reverse=True)
    for _, name, unit in restorable:
        if count() >= budget.min_weights:
            return
        if count(name, +1) <= budget.max_weights:
            gone[name].discard(unit)
            sizes[name] += 1
