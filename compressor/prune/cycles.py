"""Pruning cycles: count -> rank -> select -> compensate -> shrink -> fine-tune, repeated on a
schedule until the weight target is reached."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import fx

from ..graph import count
from ..graph.capture import get_tensor
from ..graph.count import weights
from ..graph.groups import PrunableGroup
from ..graph.trace import Trace
from ..io.data import DataSplits
from ..io.ranks import from_lead
from .calibrate import ActivationStats, count_activations
from .compensate import Compensated, compensate
from .error import ConsumerSums, Problems
from .config import Criterion, FinetuneConfig, Of, PruneConfig, Scope, Score
from .finetune import FinetuneResult, evaluate, finetune
from .align import StepTime, align_widths
from .reach import check_reachable
from .select import Budget, select, shares, unit_scores
from .stream import principal_directions, stream_cuts
from .shrink import shrink
from .sparsify import harvest, masks, remove_weights, weight_scores

TOLERANCE = 0.0095  # the achieved reduction lands in [target, target + 0.01)
Log = Callable[[str], None]
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class CycleRow:
    """What one pruning cycle did, for the report."""

    cycle: int
    target: float  # cumulative reduction this cycle aims for
    reduction: float  # cumulative reduction reached
    removed: int  # neurons removed this cycle
    dead: int | None  # of them, never fired (None without calibration data)
    exact: int  # of them, constant outputs folded exactly
    merged: int  # of them, merged into a similar kept neuron
    compensate_seconds: float  # time spent compensating
    epochs: int  # fine-tuning epochs run
    val_accuracy: float | None
    weights_removed: int | None = None  # single weights zeroed this cycle (--score neurons-weights)
    finetune_seconds: float = 0.0  # time spent fine-tuning (its validation passes included)


@dataclass(frozen=True)
class Pruned:
    """What the pruning cycles did, for the report."""

    stats: ActivationStats | None  # first cycle's counts (of the original model), with data
    cycles: tuple[CycleRow, ...]
    kept: dict[str, dict[str, object]]  # per group: its original size, the units kept
    config: PruneConfig  # the settings used
    tuning: FinetuneConfig  # the fine-tuning used
    spectra: tuple[dict[str, tuple[float, ...]], ...] = ()  # trace_spectra: per layer, its
    #     singular values before pruning (entry 0) and after each cycle (entry n)



def schedule(target: float, cycles: int) -> list[float]:
    """Cumulative targets: cycle n removes a share proportional to 0.8**n (paper Algorithm 1)."""
    shares = [0.8 ** n for n in range(cycles)]
    total, done, out = sum(shares), 0.0, []
    for share in shares:
        done += share
        out.append(target * done / total)
    out[-1] = target
    return out


def prune(gm: fx.GraphModule, found: Trace, splits: DataSplits | None, config: PruneConfig,
          tuning: FinetuneConfig, *, teacher: torch.Tensor | None = None,
          log: Log | None = None, progress: Progress | None = None,
          reference: int | None = None) -> Pruned:
    """Prune `gm` in place to `config.target` fewer weights: per cycle, count (with data),
    rank, select, compensate, shrink and fine-tune (when `tuning.max_epochs` > 0; labelled
    `splits` needed then).

    Args:
        gm: the working graph.
        found: its trace.
        splits: the data, or None to prune data-free.
        config: what to remove and how.
        tuning: fine-tuning between cycles (max_epochs 0: none).
        teacher: the dense model's logits on `splits.train`, for distillation.
        log: receives one line per cycle.
        progress: receives (stage, done, total) while counting activations.
        reference: what `config.target` is a fraction of, in `measure`'s units (default:
            `gm` as given; the input model's where `gm` was factored first).
    """
    log = log or (lambda _: None)
    train = tuning.max_epochs > 0
    if train and not (splits is not None and splits.labelled):
        raise ValueError("fine-tuning needs labelled data")
    if config.score is Score.WEIGHTS:
        return _prune_weights(gm, found, splits, config, tuning, teacher=teacher, log=log,
                              progress=progress)
    prune, groups = config, found.groups
    original = {g.name: g.size for g in groups}
    kept = {g.name: torch.arange(g.size) for g in groups}
    costs = count.costs(found, of_flops=prune.of is Of.FLOPS)
    w0 = reference or measure(gm, found, prune)
    check_reachable(gm, found, groups, costs, w0, prune.target, prune.of is Of.FLOPS)
    start = 1 - measure(gm, found, prune) / w0  # what factoring removed already
    targets = [start + (1 - start) * t for t in
               schedule(1 - (1 - prune.target) / (1 - start), prune.cycles)]
    calib = splits.train.head(prune.calibration_samples).x if splits else None
    dense_accuracy = evaluate(gm, splits.validation, device=prune.device)[1] \
        if train and tuning.recover is not None else None
    rows, first = [], []
    spectra = [singular_values(gm, found)] if prune.trace_spectra else []
    streams = schedule(prune.stream, len(targets)) if prune.stream else [0.0] * len(targets)
    for n, (target, stream) in enumerate(zip(targets, streams), 1):
        principal = principal_directions(gm, groups, calib) if stream else {}
        stage = f"cycle {n}/{len(targets)}: counting activations"
        # the error criterion's covariances are taken in the counting pass, not in another
        consumers = ConsumerSums(gm, tuple(g for g in groups if not g.stream)) \
            if calib is not None and prune.select.criterion is Criterion.ERROR else None
        stats = None if calib is None else count_activations(
            gm, groups, calib, batch_size=prune.batch_size, device=prune.device,
            progress=progress and (lambda d, t: progress(stage, d, t)), consumers=consumers)
        first = first or [stats]
        budget = Budget(math.floor((1 - target) * w0), math.ceil((1 - target - TOLERANCE) * w0))
        last = n == len(targets)
        time_model = StepTime({name: step for name, step in prune.steps.items()
                               if name not in {g.name for g in groups if g.stream}},
                              count.costs(found, of_flops=True),
                              dict(original)) if last and prune.steps else None
        removed = from_lead(_select(gm, found, groups, stats, calib, budget, prune, original,
                                    costs, align=dict(prune.align) if last else 1,
                                    step_time=time_model, stream=stream,
                                    principal=principal,
                                    problems=None if consumers is None else
                                    consumers.problems(gm)))
        begun = time.perf_counter()
        stage = f"cycle {n}/{len(targets)}: compensating"
        done = compensate(gm, groups, removed, prune.compensate, stats=stats, x=calib,
                          progress=progress and (lambda d, t: progress(stage, d, t)))
        seconds = time.perf_counter() - begun
        by_mean = sorted({name for d in done.values() for name in d.mean_rule})
        if by_mean:
            log(f"cycle {n}/{len(targets)}: {', '.join(by_mean[:3])}"
                f"{' and more' if len(by_mean) > 3 else ''} given the mean rule, not a "
                "least-squares refit (more kept inputs than calibration rows, or than the "
                "refit's memory allows)")
        for g in groups:
            mask = torch.ones(g.size, dtype=torch.bool)
            mask[removed[g.name]] = False
            kept[g.name] = kept[g.name][mask]
        groups = shrink(gm, groups, removed)
        tune, goal = tuning.cycle(n, len(targets), dense_accuracy)
        begun = time.perf_counter()
        result = finetune(gm, splits.train, splits.validation, tune, goal=goal, teacher=teacher,
                          seed=prune.seed + n,
                          **_epoch_reports(n, len(targets), log, progress, prune.device)) \
            if train else None
        rows.append(dataclasses.replace(
            _cycle_row(n, target, 1 - measure(gm, found, prune) / w0, removed, stats, done,
                       seconds, result),
            finetune_seconds=round(time.perf_counter() - begun, 3) if train else 0.0))
        log(_cycle_line(rows[-1], len(targets), _units(gm, found.groups),
                        "FLOPs" if prune.of is Of.FLOPS else "weights"))
        spectra += [singular_values(gm, found)] if prune.trace_spectra else []
    aligned = any(m > 1 for m in prune.align.values())
    if rows[-1].reduction > prune.target + 0.01 and not aligned:
        log(f"note: removed {100 * rows[-1].reduction:.2f}% for a target of "
            f"{100 * prune.target:.2f}%: single units of this model hold too large a share of "
            "its weights to land within 1 point (try cycles 1)")
    survivors = {name: {"size": original[name], "kept": kept[name].tolist()}
                 for name in original}
    return Pruned(first[0], tuple(rows), survivors, prune, tuning, tuple(spectra))


def _prune_weights(gm: fx.GraphModule, found: Trace, splits: DataSplits | None,
                   config: PruneConfig, tuning: FinetuneConfig, *,
                   teacher: torch.Tensor | None, log: Log,
                   progress: Progress | None) -> Pruned:
    """`prune` for single weights: per cycle, count (activation method), score every remaining
    weight, zero the lowest, harvest neurons left without inputs or outputs, and fine-tune with
    the zeros held (labelled data and epochs > 0 only; otherwise one shot)."""
    prune, groups = config, found.groups
    original = {g.name: g.size for g in groups}
    original_weights = {p: get_tensor(gm, p).numel() for g in groups for p in
                        (s.param for s in g.weights)}
    kept = {g.name: torch.arange(g.size) for g in groups}
    w0 = weights(gm, found)
    train = tuning.max_epochs > 0
    targets = schedule(prune.target, prune.cycles)
    calib = splits.train.head(prune.calibration_samples).x if splits else None
    dense_accuracy = evaluate(gm, splits.validation, device=prune.device)[1] \
        if train and tuning.recover is not None else None
    generator = torch.Generator().manual_seed(prune.seed)
    rows, first = [], []
    spectra = [singular_values(gm, found)] if prune.trace_spectra else []
    for n, target in enumerate(targets, 1):
        stage = f"cycle {n}/{len(targets)}: counting activations"
        stats = None if calib is None or not prune.needs_data else count_activations(
            gm, groups, calib, batch_size=prune.batch_size, device=prune.device,
            progress=progress and (lambda d, t: progress(stage, d, t)))
        first = first or [stats]
        scores = weight_scores(gm, groups, prune.method, stats=stats, generator=generator)
        excess = weights(gm, found, nonzero=True) - math.floor((1 - target) * w0)
        zeroed = remove_weights(gm, groups, scores, excess, scope=prune.select.scope,
                                original=original_weights)
        begun = time.perf_counter()
        groups, removed = harvest(gm, groups)
        seconds = time.perf_counter() - begun
        for g in groups:
            mask = torch.ones(kept[g.name].numel(), dtype=torch.bool)
            mask[removed[g.name]] = False
            kept[g.name] = kept[g.name][mask]
        tune, goal = tuning.cycle(n, len(targets), dense_accuracy)
        result = finetune(gm, splits.train, splits.validation, tune, goal=goal, teacher=teacher,
                          seed=prune.seed + n, masks=masks(gm, groups),
                          **_epoch_reports(n, len(targets), log, progress, prune.device)) \
            if train else None
        exact = sum(int(r.numel()) for r in removed.values())
        row = CycleRow(n, round(target, 6), round(1 - weights(gm, found, nonzero=True) / w0, 6),
                       exact, None, exact, 0, round(seconds, 3),
                       result.epochs if result else 0,
                       result.val_accuracy if result else None, weights_removed=zeroed)
        rows.append(row)
        log(_cycle_line(row, len(targets), _units(gm, found.groups)))
        spectra += [singular_values(gm, found)] if prune.trace_spectra else []
    survivors = {name: {"size": original[name], "kept": kept[name].tolist()}
                 for name in original}
    return Pruned(first[0], tuple(rows), survivors, prune, tuning, tuple(spectra))


def singular_values(gm: fx.GraphModule, found: Trace) -> dict[str, tuple[float, ...]]:
    """Per Linear and Conv layer, the singular values of its weights as [outputs, inputs]
    (descending, rounded to 6 significant digits)."""
    out = {}
    for layer in found.layers:
        w = get_tensor(gm, layer.weight).detach().double()
        out[layer.name] = tuple(float(f"{v:.6g}") for v in
                                torch.linalg.svdvals(w.reshape(w.shape[0], -1)).tolist())
    return out


def _select(gm: fx.GraphModule, found: Trace, groups: tuple[PrunableGroup, ...],
            stats: ActivationStats | None, calib: torch.Tensor | None, budget: Budget,
            prune: PruneConfig, original: dict[str, int], costs: dict[str, int], *,
            align: int | dict[str, int], step_time: StepTime | None,
            stream: float = 0.0, principal: dict[str, torch.Tensor] | None = None,
            problems: Problems | None = None) -> dict[str, torch.Tensor]:
    """Units to remove this cycle; in the last cycle, widths rounded to multiples of `align`
    (earlier cycles stay exact, so the rounding has every unit left to choose from), with
    `step_time`, among those that run as fast as their FLOPs say. A residual stream loses
    `stream` of its original width first (rounded to its multiple in the last cycle): its
    least principal directions where it was rotated (`principal`: their eigenvalues), else
    its units lowest in energy (`stream_cuts`); the other groups meet the budget around it.
    `problems`: the error criterion's covariances, where the counting pass took them."""
    shapes = count.shapes(gm, found)
    ranked = tuple(g for g in groups if not g.stream)
    scores = unit_scores(gm, ranked, prune.select, stats=stats, x=calib, problems=problems)
    dead = None if stats is None else {name: c == 0 for name, c in stats.counts.items()}
    fixed = stream_cuts(gm, groups, stats, original, stream, align, principal or {})
    for g in groups:  # a stream's cut is chosen already: never ranked, never dead
        if g.name in fixed:
            scores[g.name] = torch.full((g.size,), -math.inf, dtype=torch.float64)
            if dead is not None:
                dead[g.name] = torch.zeros(g.size, dtype=torch.bool)
    removed = select(groups, scores, shapes, budget, scope=prune.select.scope,
                     original_sizes=original, dead=dead, costs=costs, fixed=fixed)
    multiples = align if not fixed or not isinstance(align, dict) else \
        {**align, **{name: 1 for name in fixed}}
    ranking = shares(groups, scores, dead, original) \
        if prune.select.scope is Scope.LOCAL else scores
    return align_widths(groups, removed, ranking, shapes, budget, multiples, dead, costs,
                        original, step_time=step_time)


def measure(gm: fx.GraphModule, found: Trace, config: PruneConfig) -> int:
    """What the target counts, in the units of `count.costs`: weight entries, or multiply-adds
    per sample (FLOPs / 2)."""
    return count.flops(gm, found) // 2 if config.of is Of.FLOPS else count.weights(gm, found)


def _cycle_row(n: int, target: float, reached: float, removed: dict[str, torch.Tensor],
               stats: ActivationStats | None, done: dict[str, Compensated], seconds: float,
               result: FinetuneResult | None) -> CycleRow:
    dead = None if stats is None else \
        sum(int((stats.counts[name][units] == 0).sum()) for name, units in removed.items())
    return CycleRow(n, round(target, 6), round(reached, 6),
                    sum(int(r.numel()) for r in removed.values()), dead,
                    sum(d.exact for d in done.values()), sum(d.merged for d in done.values()),
                    round(seconds, 3), result.epochs if result else 0,
                    result.val_accuracy if result else None)


def _epoch_reports(n: int, cycles: int, log: Log, progress: Progress | None,
                   device: str) -> dict:
    """finetune's `log` and `progress`, prefixed with the cycle, and its device."""
    stage = f"cycle {n}/{cycles}: fine-tuning"
    return {"log": lambda line: log(f"{stage} {line}"), "device": device,
            "progress": progress and (lambda d, t: progress(stage, d, t))}


def has_channels(gm: fx.GraphModule, groups: tuple[PrunableGroup, ...]) -> bool:
    """Whether any group is convolution channels."""
    return any(is_channels(gm, g) for g in groups)


def is_channels(gm: fx.GraphModule, group: PrunableGroup) -> bool:
    """Whether the group's units are convolution channels (else Linear neurons)."""
    return get_tensor(gm, group.weights[0].param).ndim > 2


def _units(gm: fx.GraphModule, groups: tuple[PrunableGroup, ...]) -> str:
    """What the units are called in the log: neurons, or channels and neurons; and heads."""
    units = "channels and neurons" if has_channels(gm, groups) else "neurons"
    return units.replace(" and ", ", ") + " and heads" if any(
        "heads" in g.kinds for g in groups) else units


def _cycle_line(row: CycleRow, cycles: int, units: str = "neurons",
                counted: str = "weights") -> str:
    dead = "" if row.dead is None else f" ({row.dead} dead)"
    removed = f"{row.removed} {units}{dead}" if row.weights_removed is None else (
        f"{row.weights_removed:,} weights, then {row.removed} {units} left without inputs or "
        "outputs")
    line = f"cycle {row.cycle}/{cycles}: removed {removed}, {counted} -{100 * row.reduction:.2f}%"
    if row.merged:
        line += f", merged {row.merged}"
    if row.val_accuracy is not None:
        line += (f", fine-tuned {row.epochs} epoch{'' if row.epochs == 1 else 's'}, "
                 f"val acc {100 * row.val_accuracy:.2f}%")
    return line
