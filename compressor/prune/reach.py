"""Whether a target can be reached at all, and if not, why: how much the prunable layers hold,
and what keeps the rest dense, in the unit the target counts."""

from __future__ import annotations

import math

from torch import fx

from ..errors import NothingToPruneError
from ..graph import count
from ..graph.groups import PrunableGroup, weight_count
from ..graph.trace import Trace

TOP_REASONS = 3


def reached_share(gm: fx.GraphModule, found: Trace, groups: tuple[PrunableGroup, ...],
                  costs: dict[str, int], total: int) -> float:
    """The share of `total` (weights or FLOPs, as `costs` price them) in tensors the groups
    prune: layers whose rows or columns they own, and the attention products of heads."""
    cost, reached = _reached(gm, found, groups, costs)
    return sum(c for w, c in cost.items() if w in reached) / max(total, 1)


def _reached(gm: fx.GraphModule, found: Trace, groups: tuple[PrunableGroup, ...],
             costs: dict[str, int]) -> tuple[dict[str, int], set[str]]:
    """What each counted tensor costs now, and the tensors the groups prune."""
    cost = {name: math.prod(shape) * costs.get(name, 1)
            for name, shape in count.shapes(gm, found).items()}
    return cost, {s.param for g in groups for s in g.weights + g.consumers + g.counted}


def check_prunable(gm: fx.GraphModule, found: Trace, name: str) -> None:
    """Refuse a model with no prunable group, with the reasons that keep the most of its
    weights dense."""
    if found.groups:
        return
    total = sum(_reached(gm, found, (), {})[0].values())
    reasons = dense_reasons(gm, found, {}, total) or "no Linear or Conv layers"
    raise NothingToPruneError(
        f"nothing to prune in {name}: no layer has neurons or channels that can be removed "
        f"(by share of the weights: {reasons}); the README's Limits say which ops the tracer "
        "follows")


def check_reachable(gm: fx.GraphModule, found: Trace, groups: tuple[PrunableGroup, ...],
                    costs: dict[str, int], total: int, target: float, flops: bool) -> None:
    """Refuse a target no selection can reach: with one unit left in every group the model
    still keeps more than the target allows. The message says the most that can be removed,
    the share of the count the prunable groups reach, and the reasons that keep the most of
    the rest dense."""
    shapes = count.shapes(gm, found)
    floor = weight_count(shapes, list(groups), {g.name: 1 for g in groups}, costs)
    if floor <= (1 - target) * total:
        return
    unit = "FLOPs" if flops else "weights"
    cost, reached = _reached(gm, found, groups, costs)
    share = sum(c for w, c in cost.items() if w in reached) / max(total, 1)
    reasons = dense_reasons(gm, found, costs, total, reached)
    most = 1 - floor / total
    raise NothingToPruneError(
        f"cannot remove {100 * target:.1f}% of the {unit}: with one unit left in every "
        f"prunable layer {100 * most:.1f}% is the most; the prunable layers reach "
        f"{100 * share:.0f}% of the {unit}" + (f", and the rest stay dense ({reasons})"
                                              if reasons else "") +
        f": choose a target below {most:.3g}")


def dense_reasons(gm: fx.GraphModule, found: Trace, costs: dict[str, int], total: int,
                  reached: set[str] = frozenset()) -> str:
    """The TOP_REASONS reasons that keep the most of `total` dense (layers whose weights are
    not in `reached`), largest first: the share their layers hold, two of the layers, the
    reason."""
    cost, _ = _reached(gm, found, (), costs)
    by_reason: dict[str, list[str]] = {}
    weight_of = {layer.name: layer.weight for layer in found.layers}
    for layer, why in dict.fromkeys(found.dense):  # a layer used twice (shared) is one layer
        if weight_of.get(layer) not in reached:
            by_reason.setdefault(why, []).append(layer)

    def held(names: list[str]) -> int:  # a weight's cost already counts every use of it
        return sum(cost.get(w, 0) for w in {weight_of.get(n) for n in names})

    ranked = sorted(by_reason.items(), key=lambda item: -held(item[1]))
    return "; ".join(
        f"{100 * held(names) / max(total, 1):.0f}% in "
        f"{', '.join(names[:2])}{' and more' if len(names) > 2 else ''}: {why}"
        for why, names in ranked[:TOP_REASONS])
