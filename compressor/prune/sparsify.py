"""Unstructured pruning: remove single weights (set them to zero and keep them there), then
harvest the structure that appears: neurons left with no incoming weights output a constant,
which is folded into the next layer's bias before they are removed; neurons no layer reads
any more are removed too. Both removals are exact."""

from __future__ import annotations

import math

import torch
from torch import fx

from ..errors import NothingToPruneError
from ..graph.capture import get_tensor, set_tensor
from ..graph.groups import PrunableGroup, Slice
from .calibrate import ActivationStats
from .compensate import compensate
from .config import CompensateConfig, Compensation, Method, Scope
from .shrink import shrink


def prunable_weights(groups: tuple[PrunableGroup, ...]) -> dict[str, tuple[str, Slice]]:
    """The tensors single weights are removed from: each group's producer weights (the
    incoming weights of its neurons; the output layer is never pruned, as in the paper).
    Maps tensor name -> (group name, its units' slice of it)."""
    return {s.param: (g.name, s) for g in groups for s in g.weights}


def weight_scores(gm: fx.GraphModule, groups: tuple[PrunableGroup, ...], method: Method, *,
                  stats: ActivationStats | None = None,
                  generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Per prunable tensor, one score per entry (lower is removed first); removed (zero)
    entries score -inf.

    - activation: the activation count of the neuron the weight feeds x |w| (the paper's
      "neurons & weights"), in units of the calibration set (count / samples);
    - magnitude: |w|;
    - random: uniform random.
    """
    if method is Method.ACTIVATION and stats is None:
        raise ValueError("activation scores need calibration data")
    scores = {}
    for param, (group, unit_slice) in prunable_weights(groups).items():
        w = get_tensor(gm, param).detach().double()
        if method is Method.RANDOM:
            score = torch.rand(w.shape, generator=generator, dtype=torch.float64)
        else:
            score = w.abs()
        if method is Method.ACTIVATION:
            counts = unit_slice.per_entry(stats.rate(group))
            shape = [1] * w.ndim
            shape[unit_slice.axis] = -1
            score = score * counts.reshape(shape)
        scores[param] = torch.where(w == 0, -math.inf, score)
    return scores


def remove_weights(gm: fx.GraphModule, groups: tuple[PrunableGroup, ...],
                   scores: dict[str, torch.Tensor], count: int, *, scope: Scope,
                   original: dict[str, int]) -> int:
    """Zero the `count` lowest-scored non-zero entries of the prunable tensors: globally, or
    (LOCAL) so that every tensor keeps the same fraction of its `original` size. Returns how
    many were zeroed."""
    alive = {p: int(torch.isfinite(s).sum()) for p, s in scores.items()}
    if count <= 0:
        return 0
    if count > sum(alive.values()):
        raise NothingToPruneError(
            f"cannot remove {count:,} more weights: only {sum(alive.values()):,} prunable weights "
            "are left (the output layer is never pruned); choose a smaller --target")
    if scope is Scope.GLOBAL:
        flat = torch.cat([s.reshape(-1) for s in scores.values()])
        order = torch.argsort(flat, stable=True)  # ties: graph order, then index
        chosen = torch.zeros_like(flat, dtype=torch.bool)
        chosen[order[(flat[order] == -math.inf).sum():][:count]] = True
        offset, picks = 0, {}
        for p, s in scores.items():
            picks[p] = chosen[offset:offset + s.numel()].reshape(s.shape)
            offset += s.numel()
    else:
        picks = _local_picks(scores, alive, count, original)
    for p, pick in picks.items():
        w = get_tensor(gm, p).detach().clone()
        w[pick] = 0
        set_tensor(gm, p, w)
    return int(sum(int(pick.sum()) for pick in picks.values()))


def _local_picks(scores: dict[str, torch.Tensor], alive: dict[str, int], count: int,
                 original: dict[str, int]) -> dict[str, torch.Tensor]:
    """The same kept fraction of every tensor's original size (largest remainders rounding)."""
    total_original = sum(original.values())
    keep_total = sum(alive.values()) - count
    quota = {p: original[p] * keep_total / total_original for p in scores}
    keep = {p: min(alive[p], max(1, math.floor(q))) for p, q in quota.items()}
    for p in sorted(scores, key=lambda p: quota[p] - math.floor(quota[p]), reverse=True):
        if sum(keep.values()) >= keep_total:
            break
        if keep[p] < alive[p]:
            keep[p] += 1
    picks = {}
    for p, s in scores.items():
        flat = s.reshape(-1)
        order = torch.argsort(flat, stable=True)
        dead = int((flat == -math.inf).sum())
        pick = torch.zeros_like(flat, dtype=torch.bool)
        pick[order[dead:dead + alive[p] - keep[p]]] = True
        picks[p] = pick.reshape(s.shape)
    return picks


def harvest(gm: fx.GraphModule,
            groups: tuple[PrunableGroup, ...]) -> tuple[tuple[PrunableGroup, ...],
                                                        dict[str, torch.Tensor]]:
    """Remove, exactly, the neurons left with no incoming weights (their constant output is
    folded into the next bias) and those whose outgoing weights are all zero. Every group keeps
    at least one neuron. Returns the resized groups and, per group, the removed indices."""
    removed = {}
    for g in groups:
        silent = torch.zeros(g.size, dtype=torch.bool)
        for side in (g.weights, g.consumers):
            connected = torch.zeros(g.size, dtype=torch.bool)
            for s in side:
                connected |= (s.rows(get_tensor(gm, s.param).detach(), g.size) != 0).any(dim=1)
            silent |= ~connected
        if bool(silent.all()):
            silent[0] = False  # a layer keeps one (constant) neuron: the graph stays whole
        removed[g.name] = silent.nonzero().flatten()
    compensate(gm, groups, removed, CompensateConfig(Compensation.NONE))
    return shrink(gm, groups, removed), removed


def masks(gm: fx.GraphModule, groups: tuple[PrunableGroup, ...]) -> dict[str, torch.Tensor]:
    """Per prunable tensor, True where the weight is kept: fine-tuning keeps the rest zero."""
    return {p: get_tensor(gm, p).detach() != 0 for p in prunable_weights(groups)}
