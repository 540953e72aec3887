"""Round the widths a selection keeps to the steps the CPU's kernels run in: a width between two
steps costs what the next step costs. Each group moves to a multiple near what it keeps, and
among those combinations (`choose`) the ones in the budget's window that remove the lowest
scores win; where widths still waste time, they move onto the kernels' steps."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from ..graph.groups import PrunableGroup
from .choose import Counter, choose
from .select import Budget

MIN_EFFICIENCY = 0.9  # least share of the FLOPs removed that widths must save in time


@dataclass(frozen=True)
class StepTime:
    """What widths cost in time where kernels run in steps: FLOPs with each group's width
    rounded up to its kernel's step (a width between two steps takes as long as the step
    above).

    Attributes:
        steps: per group, the step its kernel runs in (groups not listed: exact).
        flops: per weight tensor, the FLOPs of one entry (output positions).
        original: the groups' widths before pruning.
    """

    steps: dict[str, int]
    flops: dict[str, int]
    original: dict[str, int]

    def waste(self, counter: Counter, sizes: dict[str, int]) -> float:
        """Time over FLOPs at `sizes`: 1.0 when every width is on a step."""
        padded = {name: math.ceil(n / self.steps.get(name, 1)) * self.steps.get(name, 1)
                  for name, n in sizes.items()}
        return counter.count(padded, self.flops) / max(counter.count(sizes, self.flops), 1)

    def limit(self, counter: Counter) -> float:
        """The most `waste` widths may have: 1 / MIN_EFFICIENCY times what the original widths
        waste (so that the time saved is at least MIN_EFFICIENCY of the FLOPs removed)."""
        return self.waste(counter, self.original) / MIN_EFFICIENCY


def align_widths(groups: tuple[PrunableGroup, ...], removed: dict[str, torch.Tensor],
                 scores: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]],
                 budget: Budget, multiple: int | dict[str, int],
                 dead: dict[str, torch.Tensor] | None = None,
                 costs: dict[str, int] | None = None,
                 original_sizes: dict[str, int] | None = None,
                 step_time: StepTime | None = None) -> dict[str, torch.Tensor]:
    """Change `removed` so that every group keeps a multiple of its `multiple` (groups with
    fewer units than that, or exact widths, keep what they have). Each group may keep the
    multiples next to what it keeps, and, while it is still at its `original_sizes` width,
    that width. Where the combinations are few, all are tried: among those within the
    budget's window, the one whose highest removed score is lowest, else the one that keeps
    the most weights. Where many, starting from the largest option at or below what each
    keeps, groups move one option up at a time, the move that keeps the most weights within
    `budget.max_weights` first, until none fits, then, within the window, one group up and
    another down while that lowers the highest removed score; where that keeps fewer than `budget.min_weights`, every group may also keep the width it
    has (in the last of several cycles a group that shrank below a multiple cannot grow back
    to the next one). Where even the smallest options exceed the budget, the multiples are
    halved until they fit (or reach 1: exact widths). With `step_time`, widths that waste
    time (beyond `StepTime.limit`) move to steps: each width to the step below or above it,
    or one step either way if it is on one, the widths within the budget's window that
    remove the lowest scores. Rounding down removes the lowest-scored kept units;
    rounding up restores the best-scored removed live units."""
    multiples = multiple if isinstance(multiple, dict) else {g.name: multiple for g in groups}
    if all(multiples.get(g.name, 1) <= 1 for g in groups):
        return removed
    dead = dead or {g.name: scores[g.name] == 0 for g in groups}
    counter = Counter(groups, shapes, costs)
    kept = {g.name: g.size - int(removed[g.name].numel()) for g in groups}
    cut = _Cut(groups, scores, dead)
    sizes = _aligned(groups, kept, multiples, original_sizes or {}, counter, budget, cut)
    if step_time is not None and step_time.waste(counter, sizes) > step_time.limit(counter):
        fast = _on_steps(groups, sizes, step_time, counter, budget, cut)
        sizes = fast or sizes
    return _applied(groups, removed, scores, dead, sizes)


class _Cut:
    """The highest score a width removes, per group: the ranking's threshold that widths
    imply (units go in `_applied`'s order: dead first, then the lowest scores)."""

    def __init__(self, groups, scores: dict[str, torch.Tensor],
                 dead: dict[str, torch.Tensor]) -> None:
        self.most = {g.name: [-math.inf, *itertools.accumulate(  # highest of the first k
            (float(scores[g.name][u]) for u in sorted(
                range(g.size), key=lambda u, g=g: (not bool(dead[g.name][u]),
                                                   float(scores[g.name][u]), u))), max)]
            for g in groups}

    def level(self, name: str, width: int) -> float:
        """The highest score group `name` loses at `width`."""
        most = self.most[name]
        return most[len(most) - 1 - width]

    def worst(self, sizes: dict[str, int]) -> float:
        """The highest score any group loses at `sizes` (dead units count as nothing)."""
        return max((self.level(name, sizes[name]) for name in self.most), default=-math.inf)


def _aligned(groups, kept: dict[str, int], multiples: dict[str, int],
             original: dict[str, int], counter: Counter, budget: Budget,
             cut: _Cut) -> dict[str, int]:
    """The widths: multiples near what each group keeps; among those in the budget's window,
    the ones that remove the lowest scores, else as many weights as fit. Multiples too coarse
    for any combination to fit, or to come within a window's width below the window (two
    groups of 128 in steps of 16 where a step is several windows wide), are halved until one
    does or they reach 1."""
    least = (budget.min_weights, cut.worst)
    floor = 2 * budget.min_weights - budget.max_weights  # a window's width below the window
    while True:
        options = {g.name: _options(g, kept[g.name], multiples.get(g.name, 1),
                                    original.get(g.name) == g.size) for g in groups}
        sizes = choose(options, kept, counter, budget.max_weights, window=least,
                       level=cut.level)
        if sizes is not None and counter.count(sizes) < budget.min_weights:
            options = {g.name: tuple(sorted({*options[g.name], g.size}))  # may keep its width
                       if 1 < (m := multiples.get(g.name, 1)) <= g.size and g.size % m
                       else options[g.name] for g in groups}
            sizes = choose(options, kept, counter, budget.max_weights, window=least,
                           level=cut.level) or sizes
        if sizes is not None and (counter.count(sizes) >= floor or
                                  all(m <= 1 for m in multiples.values())):
            return sizes
        multiples = {name: m // 2 for name, m in multiples.items()}  # too coarse: halve


def _options(group: PrunableGroup, kept: int, multiple: int, whole: bool) -> tuple[int, ...]:
    """Widths a group may keep: the multiples next to `kept` (within its width), and its whole
    width while it is unpruned and no multiple. A group of exact widths keeps what the
    selection chose: the choice among options counts weights, not scores, and one unit may
    hold a large share of the count (an attention head), so moving it would trade the
    ranking for a closer fit."""
    multiple = max(1, multiple)
    if group.size < multiple or multiple == 1:
        return (kept,)
    down = max(multiple, kept // multiple * multiple)
    near = {n for n in (down - multiple, down, down + multiple) if multiple <= n <= group.size}
    if whole and group.size % multiple:
        near.add(group.size)
    return tuple(sorted(near))


def _on_steps(groups, sizes: dict[str, int], step_time: StepTime, counter: Counter,
              budget: Budget, cut: _Cut) -> dict[str, int] | None:
    """Widths on the kernels' steps near `sizes` that waste no more time than the limit and
    land within the budget's window: a width between two steps may take either, one on a
    step the steps either side of it (so that another can round down or up and the count
    stay in the window); among them the one whose highest removed score is lowest, as
    `_aligned` chooses, then the one that wastes the least time. None if none do."""
    limit = step_time.limit(counter)
    options = {}
    for g in groups:
        n, step = sizes[g.name], step_time.steps.get(g.name, 1)
        near = (n - step, n, n + step) if step > 1 and n % step == 0 else \
            (n // step * step, -(-n // step) * step)
        options[g.name] = tuple(sorted({n, *(m for m in near if 0 < m <= g.size)}))
    start = {name: opts[0] for name, opts in options.items()}
    fast = choose(options, start, counter, budget.max_weights,
                   keep=lambda widths: step_time.waste(counter, widths) <= limit, start=start,
                   window=(budget.min_weights, cut.worst), level=cut.level,
                   tie=lambda widths: -step_time.waste(counter, widths))
    return fast if fast is not None and counter.count(fast) >= budget.min_weights else None


def _applied(groups, removed: dict[str, torch.Tensor], scores: dict[str, torch.Tensor],
             dead: dict[str, torch.Tensor], sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    """`removed` changed so that each group keeps `sizes[group]` units: the lowest-scored
    kept units go, or the best-scored removed live units come back."""
    out = {}
    for g in groups:
        want = sizes[g.name]
        gone = set(removed[g.name].tolist())
        kept = [u for u in range(g.size) if u not in gone]
        if want < len(kept):
            kept.sort(key=lambda u: (float(scores[g.name][u]), u))
            gone |= set(kept[:len(kept) - want])
        elif want > len(kept):
            back = sorted(gone, key=lambda u: (bool(dead[g.name][u]), -float(scores[g.name][u]),
                                               u))
            gone -= set(back[:want - len(kept)])
        out[g.name] = torch.tensor(sorted(gone), dtype=torch.int64)
    return out
