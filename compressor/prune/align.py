"""Round the widths a selection keeps to the steps the CPU's kernels run in: a width between two
steps costs what the next step costs. Each group moves to a multiple near what it keeps. Where
there are few combinations of those choices all are tried, and among those that land in the
budget's window the one that removes the lowest scores wins; where many (dozens of groups),
the choice is greedy, one group (or one exchange between two) at a time, first to fill the
budget, then to lower the highest score removed, so its time grows with the groups, not with
the combinations of their widths."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..graph.groups import PrunableGroup
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


class Counter:
    """What the target counts (`weight_count`), kept per tensor, so that changing one group's
    width recounts only the tensors it touches."""

    def __init__(self, groups: tuple[PrunableGroup, ...], shapes: dict[str, tuple[int, ...]],
                 costs: dict[str, int] | None) -> None:
        self.shapes, self.costs = shapes, costs or {}
        self.owners: dict[str, list[tuple[int, str, int]]] = {}  # tensor: (axis, group, per)
        self.touch: dict[str, list[str]] = {g.name: [] for g in groups}
        self.sizes0 = {g.name: g.size for g in groups}
        for g in groups:
            for s in g.weights + g.consumers + g.counted:
                self.owners.setdefault(s.param, []).append((s.axis, g.name, s.block * s.parts))
                if s.param not in self.touch[g.name]:
                    self.touch[g.name].append(s.param)

    def tensor(self, param: str, sizes: dict[str, int], costs: dict[str, int] | None = None) -> int:
        dims = list(self.shapes[param])
        for axis, name, per in self.owners.get(param, ()):
            dims[axis] -= (self.sizes0[name] - sizes[name]) * per
        return math.prod(dims) * (costs if costs is not None else self.costs).get(param, 1)

    def count(self, sizes: dict[str, int], costs: dict[str, int] | None = None) -> int:
        return sum(self.tensor(p, sizes, costs) for p in self.shapes)

    def change(self, sizes: dict[str, int], name: str, width: int) -> int:
        """How the count moves when group `name` takes `width`."""
        after = {**sizes, name: width}
        return sum(self.tensor(p, after) - self.tensor(p, sizes) for p in self.touch[name])


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

    def worst(self, sizes: dict[str, int]) -> float:
        """The highest score any group loses at `sizes` (dead units count as nothing)."""
        return max((most[len(most) - 1 - sizes[name]] for name, most in self.most.items()),
                   default=-math.inf)


def _aligned(groups, kept: dict[str, int], multiples: dict[str, int],
             original: dict[str, int], counter: Counter, budget: Budget,
             cut: _Cut) -> dict[str, int]:
    """The widths: multiples near what each group keeps; among those in the budget's window,
    the ones that remove the lowest scores, else as many weights as fit."""
    least = (budget.min_weights, cut.worst)
    while True:
        options = {g.name: _options(g, kept[g.name], multiples.get(g.name, 1),
                                    original.get(g.name) == g.size) for g in groups}
        sizes = _choose(options, kept, counter, budget.max_weights, window=least)
        if sizes is not None:
            break
        multiples = {name: m // 2 for name, m in multiples.items()}  # too coarse: halve
    if counter.count(sizes) < budget.min_weights:  # any aligned group may keep what it has
        options = {g.name: tuple(sorted({*options[g.name], g.size}))
                   if 1 < (m := multiples.get(g.name, 1)) <= g.size and g.size % m
                   else options[g.name] for g in groups}
        sizes = _choose(options, kept, counter, budget.max_weights, window=least) or sizes
    return sizes


EXHAUSTIVE = 3 ** 8  # at most this many combinations of widths are all tried


def _choose(options: dict[str, tuple[int, ...]], kept: dict[str, int], counter: Counter,
            most: int, keep: Callable[[dict[str, int]], bool] = lambda sizes: True,
            start: dict[str, int] | None = None,
            window: tuple[int, Callable[[dict[str, int]], float]] | None = None,
            tie: Callable[[dict[str, int]], float] = lambda sizes: 0.0,
            ) -> dict[str, int] | None:
    """The widths (one option per group) that keep the most within `most` among those `keep`
    accepts: every combination where there are at most EXHAUSTIVE (the first best in order),
    else greedily from `start` (default: the largest option within what each keeps); None if
    nothing fits. With `window` (the least count, and the score a combination removes at
    most), combinations that keep at least that count are preferred, and among them the
    one whose highest removed score is lowest: counting alone is blind to the ranking, and
    would as soon round the best units of one group down to round another's worst up.
    Between combinations equal in that, the higher `tie` wins, then the larger count (where
    all are tried)."""
    if math.prod(len(o) for o in options.values()) <= EXHAUSTIVE:
        best = None
        names = list(options)
        least, worst = window or (math.inf, None)
        for combo in itertools.product(*options.values()):
            sizes = dict(zip(names, combo))
            count = counter.count(sizes)
            if count > most or not keep(sizes):
                continue
            key = (True, -worst(sizes), tie(sizes), count) if count >= least else \
                (False, 0.0, 0.0, count)
            if best is None or key > best[0]:
                best = (key, sizes)
        return None if best is None else best[1]
    sizes = start or _start(options, kept, counter, most)
    if sizes is None or counter.count(sizes) > most or not keep(sizes):
        return None
    sizes = _raise(options, sizes, counter, most, keep)
    if window is None or counter.count(sizes) < window[0]:
        return sizes
    return _lowered(options, sizes, counter, most, keep, window)


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


def _start(options: dict[str, tuple[int, ...]], kept: dict[str, int], counter: Counter,
           most: int) -> dict[str, int] | None:
    """Every group at its largest option within what it keeps (else its smallest); lowered
    one option at a time, the largest saving first, while over the budget; None if even the
    smallest options are over it."""
    sizes = {name: max((o for o in opts if o <= kept[name]), default=opts[0])
             for name, opts in options.items()}
    count = counter.count(sizes)
    while count > most:
        moves = [(counter.change(sizes, name, lower), name, lower)
                 for name, opts in options.items()
                 for lower in [max((o for o in opts if o < sizes[name]), default=None)]
                 if lower is not None]
        if not moves:
            return None
        saving, name, lower = min(moves)
        sizes[name] = lower
        count += saving
    return sizes


def _raise(options: dict[str, tuple[int, ...]], sizes: dict[str, int], counter: Counter,
           most: int, keep: Callable[[dict[str, int]], bool] = lambda sizes: True,
           ) -> dict[str, int]:
    """Move groups up to a larger option, the move that adds the most while the count stays
    within `most` (and `keep` accepts the widths) first, until no move fits."""
    sizes, count = dict(sizes), counter.count(sizes)
    while True:
        best = None
        for name, opts in options.items():
            for higher in (o for o in opts if o > sizes[name]):
                gain = counter.change(sizes, name, higher)
                if count + gain <= most and (best is None or gain > best[0]) and \
                        keep({**sizes, name: higher}):
                    best = (gain, name, higher)
        if best is None:
            return _exchanged(options, sizes, counter, most, keep)
        sizes[best[1]] = best[2]
        count += best[0]


def _exchanged(options: dict[str, tuple[int, ...]], sizes: dict[str, int], counter: Counter,
               most: int, keep: Callable[[dict[str, int]], bool]) -> dict[str, int]:
    """`sizes` improved by moving one group down and another up where that keeps more within
    `most`, the best exchange first, until none does (what the greedy moves up alone miss)."""
    count = counter.count(sizes)
    while True:
        best = None
        for down, opts in options.items():
            for lower in (o for o in opts if o < sizes[down]):
                lowered = {**sizes, down: lower}
                loss = counter.change(sizes, down, lower)
                for up, others in options.items():
                    if up == down:
                        continue
                    for higher in (o for o in others if o > sizes[up]):
                        gain = loss + counter.change(lowered, up, higher)
                        if 0 < gain and count + gain <= most and \
                                (best is None or gain > best[0]) and \
                                keep({**lowered, up: higher}):
                            best = (gain, down, lower, up, higher)
        if best is None:
            return sizes
        gain, down, lower, up, higher = best
        sizes = {**sizes, down: lower, up: higher}
        count += gain


def _lowered(options: dict[str, tuple[int, ...]], sizes: dict[str, int], counter: Counter,
             most: int, keep: Callable[[dict[str, int]], bool],
             window: tuple[int, Callable[[dict[str, int]], float]]) -> dict[str, int]:
    """`sizes` (in the window) changed so that the highest score removed falls while the count
    stays in the window: the group that removes it moves up an option and another one down,
    the exchange that leaves the lowest highest removed score first (then the larger count),
    until none lowers it. The greedy path's counterpart of the exhaustive choice's key: the
    moves that fill the budget best are blind to which units they cost."""
    least, worst = window
    count, now = counter.count(sizes), worst(sizes)
    for _ in range(len(options) * max(len(o) for o in options.values())):  # each lowers `now`
        best = None
        for up in [name for name in options if worst({**sizes, name: options[name][-1]}) < now]:
            for higher in (o for o in options[up] if o > sizes[up]):
                raised = {**sizes, up: higher}
                gain = counter.change(sizes, up, higher)
                for down, others in options.items():
                    for lower in (o for o in others if o < raised[down] and down != up):
                        widths = {**raised, down: lower}
                        n = count + gain + counter.change(raised, down, lower)
                        if least <= n <= most and keep(widths):
                            key = (worst(widths), -n)
                            if key[0] < now and (best is None or key < best[0]):
                                best = (key, widths, n)
        if best is None:
            return sizes
        (now, _), sizes, count = best
    return sizes


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
    fast = _choose(options, start, counter, budget.max_weights,
                   keep=lambda widths: step_time.waste(counter, widths) <= limit, start=start,
                   window=(budget.min_weights, cut.worst),
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
