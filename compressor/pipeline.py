"""`compress`: load -> trace -> (calibrate -> select -> compensate -> shrink -> fine-tune) per
cycle -> export -> verify -> report -> write. Nothing is written unless every step succeeds."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import fx

from .bench import latency_ms
from .calibrate import ActivationStats, count_activations
from .compensate import compensate
from .config import CompressConfig
from .data import DataSplits, load_data
from .errors import DataError, NothingToPruneError, OutputError
from .export import run_onnx, session, to_onnx, verify
from .files import check_output, write_atomic
from .finetune import accuracy, finetune
from .graph import capture, get_tensor, run_batched
from .load import ModelFormat, find_input_layout, load_model
from .pack import shrink
from .report import CycleRow, LayerRow, Latency, Report, format_table
from .select import Budget, select
from .trace import Trace, trace

TOLERANCE = 0.0095  # the achieved reduction lands in [target, target + 0.01)
PARITY_SAMPLES = 1_000
Log = Callable[[str], None]
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Paths:
    """Where `compress` reads and writes (the model may carry its own code via `arch`)."""

    model: Path
    output: Path | None = None
    report: Path | None = None
    arch: str | None = None
    trust_pickle: bool = False


def compress(paths: Paths, data: str, config: CompressConfig, *, log: Log | None = None,
             progress: Progress | None = None) -> Report:
    """Prune the model at `paths.model` to `config.prune.target`, export and verify ONNX, write
    the ONNX file and the JSON report, and return the report.

    Args:
        paths: model, outputs (default: `<stem>.compressed.onnx` and `.json` beside the model).
        data: `fashion-mnist` or a data file (see `compressor.data.load_data`).
        config: pruning, fine-tuning and benchmark settings.
        log: receives one line per stage.
        progress: receives (stage, done, total) while counting activations.
    """
    started = time.perf_counter()
    log = log or (lambda _: None)
    torch.manual_seed(config.seed)
    output, report_path = _check_paths(paths, data)
    model = load_model(paths.model, arch=paths.arch, trust_pickle=paths.trust_pickle)
    if model.format is ModelFormat.EXPORTED_PROGRAM:  # drop its shape guards: any batch size
        model = dataclasses.replace(model, run=capture(model))
    splits = _fit_data(model, load_data(data, seed=config.seed))
    log(f"loaded {model.format.value} model and {data} ({len(splits.train):,} train / "
        f"{len(splits.validation):,} validation / {len(splits.test or ()):,} test samples)")
    example = _example(splits.train.x)
    dense = capture(model, example)
    gm = copy.deepcopy(dense)
    found = trace(gm)
    if not found.groups:
        reasons = "; ".join(f"{name}: {why}" for name, why in found.dense) or "no Linear layers"
        raise NothingToPruneError(f"nothing to prune in {paths.model} ({reasons}): compressor "
                                  "removes neurons of a Linear followed by a ReLU and one Linear")
    teacher = run_batched(dense, splits.train.x) if splits.labelled else None
    pruned = _prune(gm, found, splits, config, teacher, log, progress)
    log("exporting ONNX and verifying it in onnxruntime")
    run = _Run(model.format.value, splits, dense, gm, found, pruned,
               to_onnx(dense, example), to_onnx(gm, example))
    parity_x = splits.validation.x[:PARITY_SAMPLES]
    diff = verify(run.onnx_pruned, gm, parity_x, tolerance=config.parity_tolerance)
    report = _report(run, paths, data, config, output=output, report_path=report_path,
                     parity=(diff, int(parity_x.shape[0])), started=started)
    write_atomic({output: run.onnx_pruned, report_path: report.to_json().encode()})
    return report


def _check_paths(paths: Paths, data: str) -> tuple[Path, Path]:
    """The output and report paths, checked before any work is done."""
    inputs = (Path(paths.model),) if data == "fashion-mnist" else (Path(paths.model), Path(data))
    output = check_output(paths.output or _default_output(Path(paths.model)), inputs=inputs)
    report = check_output(paths.report or output.with_suffix(".json"), inputs=inputs)
    if report == output:
        raise OutputError(f"--report and --output are the same file ({output}): give the "
                          "report its own path, e.g. ending in .json")
    return output, report


@dataclass(frozen=True)
class _Pruned:
    stats: ActivationStats  # first cycle's counts (of the original model)
    cycles: tuple[CycleRow, ...]
    plan: dict[str, dict[str, object]]


@dataclass(frozen=True)
class _Run:
    model_format: str
    splits: DataSplits
    dense: fx.GraphModule
    gm: fx.GraphModule
    found: Trace
    pruned: _Pruned
    onnx_dense: bytes
    onnx_pruned: bytes


def _report(run: _Run, paths: Paths, data: str, config: CompressConfig, *, output: Path,
            report_path: Path, parity: tuple[float, int], started: float) -> Report:
    test = run.splits.test
    acc_before = acc_after = accuracy_data = None
    if test is not None and test.y is not None:
        acc_before = accuracy(run_batched(run.dense, test.x), test.y)
        acc_after = accuracy(run_onnx(session(run.onnx_pruned), test.x), test.y)
        accuracy_data = (f"{'fashion-mnist test' if data == 'fashion-mnist' else 'held-out test split'}"
                         f" ({len(test):,} samples, not used for fine-tuning)")
    w_before, w_after = _weights(run.dense, run.found), _weights(run.gm, run.found)
    return Report(
        model=str(paths.model), model_format=run.model_format, data=data, output=str(output),
        report=str(report_path), target=config.prune.target, scope=config.prune.scope.value,
        compensate=config.prune.compensate.value,
        calibration_samples=run.pruned.stats.samples, weights_before=w_before,
        weights_after=w_after, flops_before=2 * w_before, flops_after=2 * w_after,
        onnx_bytes_before=len(run.onnx_dense), onnx_bytes=len(run.onnx_pruned),
        accuracy_before=acc_before, accuracy_after=acc_after, accuracy_data=accuracy_data,
        parity_max_abs_diff=parity[0], parity_samples=parity[1],
        latency_threads=config.bench.threads if config.bench else 0,
        latency=_latencies(run.onnx_dense, run.onnx_pruned, run.splits.validation.x[:256], config),
        layers=_layer_rows(run.dense, run.gm, run.found, run.pruned.stats),
        cycles=run.pruned.cycles, plan=run.pruned.plan,
        seconds=round(time.perf_counter() - started, 2))


def schedule(target: float, cycles: int) -> list[float]:
    """Cumulative targets: cycle n removes a share proportional to 0.8**n (paper Algorithm 1)."""
    shares = [0.8 ** n for n in range(cycles)]
    total, done, out = sum(shares), 0.0, []
    for share in shares:
        done += share
        out.append(target * done / total)
    out[-1] = target
    return out


def _prune(gm: fx.GraphModule, found: Trace, splits: DataSplits, config: CompressConfig,
           teacher: torch.Tensor | None, log: Log, progress: Progress | None) -> _Pruned:
    prune, groups = config.prune, found.groups
    original = {g.name: g.size for g in groups}
    kept = {g.name: torch.arange(g.size) for g in groups}
    w0 = _weights(gm, found)
    train = splits.labelled and config.finetune.max_epochs > 0
    targets = schedule(prune.target, prune.cycles if splits.labelled else 1)
    calib = splits.train.x[:prune.calibration_samples]
    rows, first = [], None
    for n, target in enumerate(targets, 1):
        stage = f"cycle {n}/{len(targets)}: counting activations"
        stats = count_activations(gm, groups, calib, batch_size=prune.batch_size,
                                  progress=progress and (lambda d, t: progress(stage, d, t)))
        first = first or stats
        shapes = {layer.weight: tuple(get_tensor(gm, layer.weight).shape) for layer in found.layers}
        budget = Budget(math.floor((1 - target) * w0), math.ceil((1 - target - TOLERANCE) * w0))
        removed = select(groups, stats.counts, shapes, budget, scope=prune.scope,
                         original_sizes=original)
        exact = compensate(gm, groups, removed, stats, mode=prune.compensate)
        dead = sum(int((stats.counts[g.name][removed[g.name]] == 0).sum()) for g in groups)
        for g in groups:
            mask = torch.ones(g.size, dtype=torch.bool)
            mask[removed[g.name]] = False
            kept[g.name] = kept[g.name][mask]
        groups = shrink(gm, groups, removed)
        result = finetune(gm, splits.train, splits.validation, config.finetune,
                          teacher=teacher, seed=config.seed + n) if train else None
        reached = 1 - _weights(gm, found) / w0
        rows.append(CycleRow(n, round(target, 6), round(reached, 6),
                             sum(int(r.numel()) for r in removed.values()), dead,
                             sum(exact.values()), result.epochs if result else 0,
                             result.val_accuracy if result else None))
        log(f"cycle {n}/{len(targets)}: removed {rows[-1].removed} neurons ({dead} dead), "
            f"weights -{100 * reached:.2f}%" + (f", fine-tuned {result.epochs} epoch"
                                                f"{'' if result.epochs == 1 else 's'}, "
                                                f"val acc {100 * result.val_accuracy:.2f}%"
                                                if result else ""))
    if rows[-1].reduction > prune.target + 0.01:
        log(f"note: removed {100 * rows[-1].reduction:.2f}% for a target of "
            f"{100 * prune.target:.2f}%: single neurons of this model hold too large a share of "
            "its weights to land within 1 point (try --cycles 1)")
    plan = {name: {"size": original[name], "kept": kept[name].tolist()} for name in original}
    return _Pruned(first, tuple(rows), plan)


def _fit_data(model, splits: DataSplits) -> DataSplits:
    layout, classes = find_input_layout(model, splits.train.x)
    splits = splits.map_x(layout)
    for part in (splits.train, splits.validation, splits.test):
        if part is not None and part.y is not None and int(part.y.max()) >= classes:
            raise DataError(f"{splits.name}: labels go up to {int(part.y.max())} but the model "
                            f"has {classes} outputs: give labels 0..{classes - 1}")
    return splits


def _latencies(dense: bytes, pruned: bytes, sample: torch.Tensor,
               config: CompressConfig) -> tuple[Latency, ...]:
    if config.bench is None:
        return ()
    b = config.bench
    return tuple(Latency(batch, latency_ms(dense, sample, batch=batch, threads=b.threads,
                                           seconds=b.seconds),
                         latency_ms(pruned, sample, batch=batch, threads=b.threads,
                                    seconds=b.seconds)) for batch in b.batches)


def _weights(gm: fx.GraphModule, found: Trace) -> int:
    return sum(get_tensor(gm, layer.weight).numel() for layer in found.layers)


def _layer_rows(dense: fx.GraphModule, gm: fx.GraphModule, found: Trace,
                stats: ActivationStats) -> tuple[LayerRow, ...]:
    reasons = dict(found.dense)
    rows = []
    for layer in found.layers:
        before, after = get_tensor(dense, layer.weight).shape, get_tensor(gm, layer.weight).shape
        pruned = layer.name in stats.counts
        rows.append(LayerRow(layer.name, int(before[1]), int(before[0]), int(after[1]),
                             int(after[0]), stats.dead(layer.name) if pruned else None,
                             "pruned" if pruned else reasons.get(layer.name, "")))
    return tuple(rows)


def _example(x: torch.Tensor) -> torch.Tensor:
    """Two samples: torch.export treats a batch of one as a fixed size."""
    return x[:2] if x.shape[0] >= 2 else x.repeat(2, *[1] * (x.ndim - 1))


def _default_output(model: Path) -> Path:
    if not model.name:
        raise OutputError(f"cannot derive an output name from {model}: pass -o/--output")
    return model.with_name(f"{model.stem}.compressed.onnx")
