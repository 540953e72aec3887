"""Choose one width per group among a few options each: as many of what the target counts
(weights or FLOPs) as fit within a budget, and, given a window under the budget, the
combination in it that removes the lowest scores. Every combination is tried where there are
few; where many (dozens of groups), the choice is greedy, one group (or one exchange between
two) at a time, so its time grows with the groups, not with the combinations."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

from ..graph.groups import PrunableGroup


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


EXHAUSTIVE = 3 ** 8  # at most this many combinations of widths are all tried


def choose(options: dict[str, tuple[int, ...]], kept: dict[str, int], counter: Counter,
            most: int, keep: Callable[[dict[str, int]], bool] = lambda sizes: True,
            start: dict[str, int] | None = None,
            window: tuple[int, Callable[[dict[str, int]], float]] | None = None,
            tie: Callable[[dict[str, int]], float] = lambda sizes: 0.0,
            level: Callable[[str, int], float] | None = None) -> dict[str, int] | None:
    """The widths (one option per group) that keep the most within `most` among those `keep`
    accepts: every combination where there are at most EXHAUSTIVE (the first best in order),
    else greedily from `start` (default: the largest option within what each keeps); None if
    nothing fits. With `window` (the least count, and the score a combination removes at
    most), combinations that keep at least that count are preferred, and among them the
    one whose highest removed score is lowest: counting alone is blind to the ranking, and
    would as soon round the best units of one group down to round another's worst up.
    Between combinations equal in that, the higher `tie` wins, then the larger count (where
    all are tried). The greedy path raises the groups in two orders, the move that adds the
    most first, and, with `level` (a group's highest removed score at a width), the group cut
    deepest first, and keeps the better (`_preferred`): adding the most fills the budget
    with the layers of the largest counts whatever they lose, cutting the deepest first can
    leave the budget less full."""
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
    start = start or _start(options, kept, counter, most)
    if start is None or counter.count(start) > most or not keep(start):
        return None
    found = []
    for deepest in (None, level) if level is not None else (None,):
        sizes = _raise(options, start, counter, most, keep, deepest)
        if window is not None and counter.count(sizes) >= window[0]:
            sizes = _lowered(options, sizes, counter, most, keep, window)
        found.append(sizes)
    return max(found, key=lambda sizes: _preferred(sizes, counter, window, tie, level))


def _preferred(sizes: dict[str, int], counter: Counter,
               window: tuple[int, Callable[[dict[str, int]], float]] | None,
               tie: Callable[[dict[str, int]], float],
               level: Callable[[str, int], float] | None) -> tuple:
    """How the greedy path ranks what its two orders of raising found: as every combination
    is ranked where all are tried, the sum of the groups' highest removed scores (lower is
    better) before the count."""
    count = counter.count(sizes)
    if window is None or count < window[0]:
        return False, 0.0, 0.0, 0.0, count
    levels = [level(name, n) for name, n in sizes.items()] if level is not None else []
    removed = sum(x for x in levels if x > -math.inf)  # a group cut nowhere loses nothing
    return True, -window[1](sizes), tie(sizes), -removed, count


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
           level: Callable[[str, int], float] | None = None) -> dict[str, int]:
    """Move groups up to a larger option, the move that adds the most while the count stays
    within `most` (and `keep` accepts the widths) first, until no move fits; with `level` (a
    group's highest removed score at a width), the group cut deepest first."""
    sizes, count = dict(sizes), counter.count(sizes)
    while True:
        best = None
        for name, opts in options.items():
            for higher in (o for o in opts if o > sizes[name]):
                gain = counter.change(sizes, name, higher)
                key = (level(name, sizes[name]) if level else 0.0, gain)
                if count + gain <= most and (best is None or key > best[0]) and \
                        keep({**sizes, name: higher}):
                    best = (key, name, higher)
        if best is None:
            return _exchanged(options, sizes, counter, most, keep)
        sizes[best[1]] = best[2]
        count += best[0][1]


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
