"""Choose which units to remove so that the model keeps at most a given number of weights.

Removing a unit also removes its column in the next layer, and shrinks the cost of units in the
neighbouring groups, so the weight count is recomputed after every removal."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import fx

from ..errors import NothingToPruneError
from ..graph.capture import get_tensor
from ..graph.groups import PrunableGroup, unit_rows, weight_count
from .calibrate import ActivationStats
from .config import Criterion, Scope, SelectConfig
from .lsq import removal_errors


@dataclass(frozen=True)
class Budget:
    """Keep at most `max_weights` weight entries and, where possible, at least `min_weights`."""

    max_weights: int
    min_weights: int


def unit_scores(gm: fx.GraphModule, groups: tuple[PrunableGroup, ...], config: SelectConfig, *,
                stats: ActivationStats | None = None,
                x: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per group, one score per unit (lower is removed first), by `config.criterion`:

    - activation: firing rates (needs `stats`);
    - energy: each unit's root-mean-square output times the norm of its columns in the
      consumers (what it sends on, as Wanda scores inputs), divided by the mean of its group
      (needs `stats`);
    - l1 / l2: the norm of each unit's [weights | bias] row, divided by the mean norm of its
      group (layers with more inputs have larger norms; a global ranking must compare like
      with like);
    - error: the output error greedy removal with least-squares refits leaves (needs
      calibration inputs `x`; see `compressor.prune.lsq.removal_errors`);
    - random: uniform random scores from `config.seed` (the floor every criterion must beat).
    """
    criterion = config.criterion
    if (criterion in (Criterion.ACTIVATION, Criterion.ENERGY) and stats is None) or \
            (criterion is Criterion.ERROR and x is None):
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
                              device=config.device)
    order = 1 if criterion is Criterion.L1 else 2
    return {g.name: _relative(torch.linalg.vector_norm(unit_rows(gm, g), ord=order, dim=1))
            for g in groups}


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
           costs: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
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

    Returns:
        Per group, the sorted indices of the units to remove.
    """
    dead = dead or {g.name: scores[g.name] == 0 for g in groups}
    state = _Selection(groups, scores, shapes, original_sizes, dead, costs)
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
            for u in units:
                if self.dead[name][u] and self.sizes[name] > 1:
                    self.remove(name, u)

    def usable(self, name: str, unit: int) -> bool:
        return unit not in self.gone[name] and self.sizes[name] > 1

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
            if self.sizes[name] > 1:
                yield name, next(u for u in self.order[name] if u not in self.gone[name])

    def fill_back(self, budget: Budget) -> None:
        """Restore removed live units, highest score first, while the count stays in budget."""
        restorable = sorted(((float(self.scores[n][u]), n, u) for n in self.gone
                             for u in self.gone[n] if not self.dead[n][u]), reverse=True)
        for _, name, unit in restorable:
            if self.count() >= budget.min_weights:
                return
            if self.count(name, +1) <= budget.max_weights:
                self.gone[name].discard(unit)
                self.sizes[name] += 1


MIN_EFFICIENCY = 0.9  # least share of the FLOPs removed that widths must save in time


@dataclass(frozen=True)
class StepTime:
    """What widths cost in time where kernels run in steps: FLOPs with each group's width
    rounded up to its kernel's step (on a machine whose convolutions run in steps of 16
    channels, a 24-channel layer takes as long as a 32-channel one).

    Attributes:
        steps: per group, the step its kernel runs in (groups not listed: exact).
        flops: per weight tensor, the FLOPs of one entry (output positions).
        original: the groups' widths before pruning.
    """

    steps: dict[str, int]
    flops: dict[str, int]
    original: dict[str, int]

    def waste(self, shapes: dict[str, tuple[int, ...]], groups: tuple[PrunableGroup, ...],
              sizes: dict[str, int]) -> float:
        """Time over FLOPs at `sizes`: 1.0 when every width is on a step."""
        padded = {name: math.ceil(n / self.steps.get(name, 1)) * self.steps.get(name, 1)
                  for name, n in sizes.items()}
        flops = weight_count(shapes, list(groups), sizes, self.flops)
        return weight_count(shapes, list(groups), padded, self.flops) / max(flops, 1)

    def limit(self, shapes: dict[str, tuple[int, ...]],
              groups: tuple[PrunableGroup, ...]) -> float:
        """The most `waste` widths may have: 1 / MIN_EFFICIENCY times what the original widths
        waste (so that the time saved is at least MIN_EFFICIENCY of the FLOPs removed)."""
        return self.waste(shapes, groups, self.original) / MIN_EFFICIENCY


def align_widths(groups: tuple[PrunableGroup, ...], removed: dict[str, torch.Tensor],
                 scores: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]],
                 budget: Budget, multiple: int | dict[str, int],
                 dead: dict[str, torch.Tensor] | None = None,
                 costs: dict[str, int] | None = None,
                 original_sizes: dict[str, int] | None = None,
                 keep_width: bool = False,
                 step_time: StepTime | None = None) -> dict[str, torch.Tensor]:
    """Change `removed` so that every group keeps a multiple of `multiple` units (groups
    with fewer units than that keep what they have): CPU matrix kernels work in blocks of
    columns, so a width between two multiples costs what the next multiple costs. Each group
    is rounded down or up to a multiple, whichever combination keeps the most weights within
    `budget.max_weights` (each group tries the multiples next to what it keeps, and, while
    it is still at its `original_sizes` width, that width when it is no multiple). Where the
    best combination keeps fewer than `budget.min_weights`, every group may also keep the
    width it has (`keep_width`): in the last of several cycles a group that shrank below a
    multiple cannot grow back to the next one. Where no combination fits, the multiples are
    halved until one does (or they reach 1: exact widths). With `step_time`, widths that
    waste time (beyond `StepTime.limit`: a width between two of its kernel's steps runs as
    long as the step above) may each move to the step below or above them: the combination
    within the limit that keeps the most weights within the budget's window, if one does.
    Rounding down removes the lowest-scored kept units; rounding up restores the
    best-scored removed live units."""
    multiples = multiple if isinstance(multiple, dict) else {g.name: multiple for g in groups}
    if all(multiples.get(g.name, 1) <= 1 for g in groups):
        return removed
    dead = dead or {g.name: scores[g.name] == 0 for g in groups}
    options = []
    for g in groups:
        kept = g.size - int(removed[g.name].numel())
        multiple = max(1, multiples.get(g.name, 1))
        if g.size < multiple:
            options.append((kept,))
            continue
        down = max(multiple, kept // multiple * multiple)
        near = (down - multiple, down, down + multiple) if math.prod(
            len(o) for o in options) * 3 <= 3 ** 8 else (down,)
        near = tuple(n for n in near if multiple <= n <= g.size)
        # an unpruned layer may also keep its whole width, a multiple or not (as the model had)
        whole = (keep_width or (original_sizes or {}).get(g.name) == g.size) and \
            g.size % multiple != 0
        options.append(near + (g.size,) * whole)
    best = _most_weights(groups, options, shapes, budget, costs)
    if best is None:  # nothing fits (a step is too coarse for this budget): halve the steps
        halved = {name: m // 2 for name, m in multiples.items()}
        return align_widths(groups, removed, scores, shapes, budget, halved, dead, costs,
                            original_sizes, keep_width, step_time)
    if best[0] < budget.min_weights and not keep_width:
        return align_widths(groups, removed, scores, shapes, budget, multiples, dead, costs,
                            original_sizes, keep_width=True, step_time=step_time)
    sizes = best[1]
    if step_time is not None:  # each group may move to its kernel's steps either side
        limit = step_time.limit(shapes, groups)
        if step_time.waste(shapes, groups, sizes) > limit:
            options = [tuple(sorted({n, *(m for m in (n // step * step, -(-n // step) * step)
                                          if 0 < m <= g.size)}))
                       for g in groups
                       for n, step in [(sizes[g.name], step_time.steps.get(g.name, 1))]]
            fast = _most_weights(groups, options, shapes, budget, costs,
                                 keep=lambda widths: step_time.waste(shapes, groups,
                                                                     widths) <= limit)
            if fast is not None and fast[0] >= budget.min_weights:
                sizes = fast[1]
    out = {}
    for g in groups:
        want = sizes[g.name]
        gone = set(removed[g.name].tolist())
        kept = [u for u in range(g.size) if u not in gone]
        if want < len(kept):  # remove the lowest-scored kept units
            kept.sort(key=lambda u: (float(scores[g.name][u]), u))
            gone |= set(kept[:len(kept) - want])
        elif want > len(kept):  # restore live units first, best score first
            back = sorted(gone, key=lambda u: (bool(dead[g.name][u]), -float(scores[g.name][u]), u))
            gone -= set(back[:want - len(kept)])
        out[g.name] = torch.tensor(sorted(gone), dtype=torch.int64)
    return out


def _most_weights(groups: tuple[PrunableGroup, ...], options: list[tuple[int, ...]],
                  shapes: dict[str, tuple[int, ...]], budget: Budget,
                  costs: dict[str, int] | None,
                  keep: Callable[[dict[str, int]], bool] = lambda sizes: True,
                  ) -> tuple[int, dict[str, int]] | None:
    """The combination of widths (one option per group) that keeps the most weights within
    `budget.max_weights` among those `keep` accepts, with its weight count; None if none."""
    best = None
    for combo in itertools.product(*options):
        sizes = {g.name: n for g, n in zip(groups, combo)}
        count = weight_count(shapes, list(groups), sizes, costs)
        if count <= budget.max_weights and (best is None or count > best[0]) and keep(sizes):
            best = (count, sizes)
    return best
