"""Choose which units to remove so that the model keeps at most a given number of weights.

Removing a unit also removes its column in the next layer, and shrinks the cost of units in the
neighbouring groups, so the weight count is recomputed after every removal."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import fx

from ..errors import NothingToPruneError
from ..graph.capture import get_tensor
from ..graph.groups import PrunableGroup, unit_rows, weight_count
from .calibrate import ActivationStats
from .config import Criterion, Scope, SelectConfig
from .error import Problems, removal_errors


@dataclass(frozen=True)
class Budget:
    """Keep at most `max_weights` weight entries and, where possible, at least `min_weights`."""

    max_weights: int
    min_weights: int


def unit_scores(gm: fx.GraphModule, groups: tuple[PrunableGroup, ...], config: SelectConfig, *,
                stats: ActivationStats | None = None,
                x: torch.Tensor | None = None,
                problems: Problems | None = None) -> dict[str, torch.Tensor]:
    """Per group, one score per unit (lower is removed first), by `config.criterion`:

    - activation: firing rates (needs `stats`);
    - energy: each unit's root-mean-square output times the norm of its columns in the
      consumers (what it sends on, as Wanda scores inputs), divided by the mean of its group
      (needs `stats`);
    - l1 / l2: the norm of each unit's [weights | bias] row, divided by the mean norm of its
      group (layers with more inputs have larger norms; a global ranking must compare like
      with like);
    - group: the l2 norm of every weight the unit owns, its [weights | bias] row and its
      columns in the consumers (Torch-Pruning's group magnitude), over the mean of its group;
    - error: the output error greedy removal with least-squares refits leaves (needs
      calibration inputs `x`, or the `problems` a counting pass took; see
      `compressor.prune.error.removal_errors`);
    - random: uniform random scores from `config.seed` (the floor every criterion must beat).
    """
    criterion = config.criterion
    if (criterion in (Criterion.ACTIVATION, Criterion.ENERGY) and stats is None) or \
            (criterion is Criterion.ERROR and x is None and problems is None):
        raise ValueError(f"the {criterion.value} criterion needs calibration data")
    if criterion is Criterion.ACTIVATION:  # firing rates: neurons and channels compare
        return {g.name: stats.rate(g.name) for g in groups}
    if criterion is Criterion.ENERGY:
        return {g.name: _relative(_energy(stats, g) * consumer_norms(gm, g)) for g in groups}
    if criterion is Criterion.RANDOM:
        generator = torch.Generator().manual_seed(config.seed)
        return {g.name: torch.rand(g.size, generator=generator, dtype=torch.float64) + 1e-9
                for g in groups}
    if criterion is Criterion.ERROR:
        return removal_errors(gm, groups, x, ridge=config.ridge, batch_size=config.batch_size,
                              device=config.device, problems=problems)
    if criterion is Criterion.GROUP:
        return {g.name: _relative(((unit_rows(gm, g) ** 2).sum(1)
                                   + consumer_norms(gm, g) ** 2).sqrt()) for g in groups}
    order = 1 if criterion is Criterion.L1 else 2
    return {g.name: _relative(torch.linalg.vector_norm(unit_rows(gm, g), ord=order, dim=1))
            for g in groups}


def shares(groups: tuple[PrunableGroup, ...], scores: dict[str, torch.Tensor],
           dead: dict[str, torch.Tensor] | None,
           original_sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    """Per group, each unit's score replaced by the share of the group's original width that
    is gone once it goes (units go dead first, then the lowest scores; dead units score 0, and
    units cut before any ranking, scored -inf, stay so): what a local selection makes equal
    across groups. Widths chosen after it (`align`)
    then trade one group's units for another's by the share each loses, as the selection
    did, not by scores that do not compare across layers (firing rates at different depths)."""
    out = {}
    for g in groups:
        s, gone = scores[g.name], dead[g.name] if dead is not None else scores[g.name] == 0
        order = sorted(range(g.size), key=lambda u: (not bool(gone[u]), float(s[u]), u))
        before = original_sizes.get(g.name, g.size) - g.size  # removed in earlier cycles
        share = torch.empty(g.size, dtype=torch.float64)
        for k, u in enumerate(order):
            share[u] = 0.0 if gone[u] else float(s[u]) if float(s[u]) == -math.inf else \
                (before + k + 1) / (before + g.size)
        out[g.name] = share
    return out


def _relative(scores: torch.Tensor) -> torch.Tensor:
    """Scores divided by their mean, so that groups of different widths and scales rank
    together."""
    mean = float(scores.mean())
    return scores / mean if mean > 0 else scores


def _energy(stats: ActivationStats, g: PrunableGroup) -> torch.Tensor:
    """Per unit, the root mean square of its output (Wanda's ‖X_j‖; over samples and
    positions); chosen over mean |h| and the standard deviation (FLAP's fluctuation) in
    docs/method.md."""
    return stats.squares[g.name].sqrt()


def consumer_norms(gm: fx.GraphModule, group: PrunableGroup) -> torch.Tensor:
    """Per unit, the l2 norm of everything the consumers read it with (its columns of every
    consumer, all kernel taps and Flatten positions)."""
    total = torch.zeros(group.size, dtype=torch.float64)
    for s in group.consumers:
        total += (s.rows(get_tensor(gm, s.param).detach().double(), group.size) ** 2).sum(1)
    return total.sqrt()


def select(groups: tuple[PrunableGroup, ...], scores: dict[str, torch.Tensor],
           shapes: dict[str, tuple[int, ...]], budget: Budget, *, scope: Scope,
           original_sizes: dict[str, int], dead: dict[str, torch.Tensor] | None = None,
           costs: dict[str, int] | None = None,
           fixed: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Pick units to remove: all dead units, then lowest scores first until the weight
    count is within budget; equal scores go in graph order (earlier group, lower index
    first). A unit whose removal would undershoot `min_weights` is skipped for
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
        dead: per group, a mask of units that never fire [default: score 0].
        costs: what one entry of each tensor counts for in the budget (default 1: weights;
            output positions: FLOPs / 2).
        fixed: per group, the units it loses whatever the budget (the residual stream's
            share, `stream.stream_cuts`): removed first, and nothing else of that group is.

    Returns:
        Per group, the sorted indices of the units to remove.
    """
    dead = dead or {g.name: scores[g.name] == 0 for g in groups}
    state = _Selection(groups, scores, shapes, original_sizes, dead, costs)
    for name, units in (fixed or {}).items():
        for u in units.tolist():
            state.remove(name, u)
        state.frozen.add(name)
    state.remove_dead()
    while state.count() > budget.max_weights:
        candidates = state.global_candidates() if scope is Scope.GLOBAL else state.local_candidates()
        first = fit = None
        for name, unit in candidates:
            first = first or (name, unit)
            if state.count(name, -1) >= budget.min_weights:
                fit = (name, unit)
                break
        if first is None:
            raise NothingToPruneError(
                f"cannot remove enough weights: with one unit left per prunable layer the model "
                f"keeps {state.count()} weights, above the {budget.max_weights} the target "
                "allows; choose a smaller --target")
        state.remove(*(fit or first))
    state.fill_back(budget)
    return {name: torch.tensor(sorted(units), dtype=torch.int64)
            for name, units in state.gone.items()}


class _Selection:
    """Units removed so far, group sizes, and the weight count they imply."""

    def __init__(self, groups, scores, shapes, original_sizes, dead, costs) -> None:
        self.groups, self.scores, self.shapes, self.dead = list(groups), scores, shapes, dead
        self.costs = costs
        self.original_sizes = original_sizes
        self.sizes = {g.name: g.size for g in groups}
        self.gone: dict[str, set[int]] = {g.name: set() for g in groups}
        self.order = {g.name: sorted(range(g.size), key=lambda u, g=g: (float(scores[g.name][u]), u))
                      for g in groups}
        self.ranking = sorted((float(scores[g.name][u]), gi, g.name, u)
                              for gi, g in enumerate(groups) for u in range(g.size))
        self.start = 0  # ranking[:start] is never a candidate again
        self.frozen: set[str] = set()  # groups whose units are chosen already (`fixed`)

    def count(self, name: str | None = None, change: int = 0) -> int:
        sizes = dict(self.sizes)
        if name is not None:
            sizes[name] += change
        return weight_count(self.shapes, self.groups, sizes, self.costs)

    def remove(self, name: str, unit: int) -> None:
        self.gone[name].add(unit)
        self.sizes[name] -= 1

    def remove_dead(self) -> None:
        for name, units in self.order.items():
            for u in units if name not in self.frozen else ():
                if self.dead[name][u] and self.sizes[name] > 1:
                    self.remove(name, u)

    def usable(self, name: str, unit: int) -> bool:
        return unit not in self.gone[name] and self.sizes[name] > 1 and \
            name not in self.frozen

    def global_candidates(self):
        """Every removable unit, lowest score first."""
        while self.start < len(self.ranking) and not self.usable(*self.ranking[self.start][2:]):
            self.start += 1
        for *_, name, unit in self.ranking[self.start:]:
            if self.usable(name, unit):
                yield name, unit

    def local_candidates(self):
        """The lowest-scored unit of each group, least-pruned group (by fraction) first."""
        names = sorted(self.sizes, key=lambda n: (1 - self.sizes[n] / self.original_sizes[n],
                                                  list(self.sizes).index(n)))
        for name in names:
            if self.sizes[name] > 1 and name not in self.frozen:
                yield name, next(u for u in self.order[name] if u not in self.gone[name])

    def fill_back(self, budget: Budget) -> None:
        """Restore removed live units, highest score first, while the count stays in budget."""
        restorable = sorted(((float(self.scores[n][u]), n, u) for n in self.gone
                             if n not in self.frozen
                             for u in self.gone[n] if not self.dead[n][u]), reverse=True)
        for _, name, unit in restorable:
            if self.count() >= budget.min_weights:
                return
            if self.count(name, +1) <= budget.max_weights:
                self.gone[name].discard(unit)
                self.sizes[name] += 1

