"""`compress`: load -> trace -> (calibrate -> select -> compensate -> shrink -> fine-tune) per
cycle -> export -> verify -> report -> write. Nothing is written unless every step succeeds."""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import fx

from .bench import latencies_ms
from .calibrate import ActivationStats
from .check import BudgetRow, Measured, evaluate, measure_file
from .config import CompressConfig
from .data import DataSplits, load_data
from .errors import DataError, ExportError, NothingToPruneError, OutputError
from .export import run_onnx, session, to_onnx, verify
from .files import check_output, write_atomic
from .finetune import accuracy
from .graph import capture, get_tensor, run_batched
from .load import LoadedModel, ModelFormat, find_input_layout, load_model
from .config import Format, Score
from .formats import quantize
from .pack import Packed, expand, pack_onnx
from .prune import Log, Progress, Pruned, prune, weights
from .report import LayerRow, Latency, Report
from .runtime import SparseModel
from .sparsify import nonzero_weights
from .trace import Trace, trace

PARITY_SAMPLES = 1_000


@dataclass(frozen=True)
class Paths:
    """Where `compress` reads and writes (the model may carry its own code via `arch`)."""

    model: Path
    output: Path | None = None
    report: Path | None = None
    arch: str | None = None
    trust_pickle: bool = False
    variants: Path | None = None  # a directory to write every variant of the result into


def compress(paths: Paths, data: str | None, config: CompressConfig, *, log: Log | None = None,
             progress: Progress | None = None) -> Report:
    """Prune the model at `paths.model` to `config.prune.target`, export and verify ONNX, write
    the ONNX file and the JSON report, and return the report.

    Args:
        paths: model, outputs (default: `<stem>.compressed.onnx` and `.json` beside the model).
        data: `fashion-mnist`, a data file (see `compressor.data.load_data`), or None to prune
            data-free (weight-norm criterion, merge or no compensation; the export is then
            checked on random inputs).
        config: pruning, fine-tuning and benchmark settings.
        log: receives one line per stage.
        progress: receives (stage, done, total) while counting activations.
    """
    started = time.perf_counter()
    log = log or (lambda _: None)
    torch.manual_seed(config.seed)
    _check_options(data, config)
    output, report_path = _check_paths(paths, data)
    model = load_model(paths.model, arch=paths.arch, trust_pickle=paths.trust_pickle)
    if model.format is ModelFormat.EXPORTED_PROGRAM:  # drop its shape guards: any batch size
        model = dataclasses.replace(model, run=capture(model))
    if data is None:
        splits, probe = None, _random_inputs(model, seed=config.seed)
        log(f"loaded {model.format.value} model; no data: pruning data-free, checking the "
            f"export on {len(probe):,} random inputs")
    else:
        splits = _fit_data(model, load_data(data, seed=config.seed))
        if config.budgets.min_accuracy is not None and not splits.labelled:
            raise DataError(f"--min-accuracy needs labels, and {data} has none: give labelled "
                            "data or drop --min-accuracy")
        probe = splits.validation.x
        log(f"loaded {model.format.value} model and {data} ({len(splits.train):,} train / "
            f"{len(splits.validation):,} validation / {len(splits.test or ()):,} test samples)")
    example = _example(probe)
    dense = capture(model, example)
    gm = copy.deepcopy(dense)
    found = trace(gm)
    if not found.groups:
        reasons = "; ".join(f"{name}: {why}" for name, why in found.dense) or "no Linear layers"
        raise NothingToPruneError(f"nothing to prune in {paths.model} ({reasons}): compressor "
                                  "removes neurons of a Linear followed by a ReLU and one Linear")
    teacher = run_batched(dense, splits.train.x) if splits and splits.labelled else None
    pruned = prune(gm, found, splits, config, teacher=teacher, log=log, progress=progress)
    log("exporting ONNX and verifying it in onnxruntime")
    onnx_pruned = to_onnx(gm, example)
    parity_x = probe[:PARITY_SAMPLES]
    diff = verify(onnx_pruned, gm, parity_x, tolerance=config.parity_tolerance)
    if config.format is not Format.DENSE:
        log(f"packing as {config.format.value}" + (
            f" (measuring kernels at batch {config.budget_batch})"
            if config.format in (Format.CSR, Format.AUTO) else ""))
    threads = config.bench.threads if config.bench else 1
    packed = pack_onnx(onnx_pruned, config.format, batch=config.budget_batch, threads=threads)
    packed_diff = _verify_packed(packed, gm, parity_x, config)
    run = _Run(model.format.value, splits, probe, dense, gm, found, pruned,
               to_onnx(dense, example), onnx_pruned, packed)
    report = _report(run, paths, data, config, output=output, report_path=report_path,
                     parity=(diff, int(parity_x.shape[0])), packed_diff=packed_diff,
                     started=started)
    report = dataclasses.replace(report, budgets=_budgets(run, report, config))
    files = {output: packed.data, report_path: report.to_json().encode()}
    if paths.variants is not None:
        files |= _variants(run, paths.variants, example, config)
    write_atomic(files)
    return report


def _verify_packed(packed: Packed, gm: fx.GraphModule, x: torch.Tensor,
                   config: CompressConfig) -> float | None:
    """Check the packed file against the pruned model: float formats must match it (plain
    onnxruntime and, where sparse kernels are used, compressor.runtime); int8 is approximate,
    so its difference is returned for the report, not checked."""
    if config.format is Format.DENSE:
        return None
    if any(row.kernel == "int8" for row in packed.layers):
        return float((run_onnx(session(packed.data), x) - run_batched(gm, x)).abs().max())
    verify(packed.data, gm, x, tolerance=config.parity_tolerance)
    if packed.runtime:
        runtime = SparseModel.load(packed.data, kernels="stored")
        got = torch.from_numpy(runtime.run(x.numpy()))
        found = float((got - run_batched(gm, x)).abs().max())
        if not found <= config.parity_tolerance:
            raise ExportError(f"compressor.runtime differs from the pruned model by {found:.3g}; "
                              "nothing was written. Please report this with the model")
    return None


VARIANTS = ("dense", "masked", "shrunk", "csr", "int8", "int8-dense")


def _variants(run: _Run, directory: Path, example: torch.Tensor,
              config: CompressConfig) -> dict[Path, bytes]:
    """Every variant of the result, for `compress bench DIR/*.onnx --baseline DIR/dense.onnx`:
    the input model's dense export, the pruned model at its original shapes with zeros
    (masked), physically shrunk (zeros kept), sparse storage, int8 of the pruned model, and
    int8 of the dense input."""
    kept = {name: torch.tensor(p["kept"]) for name, p in run.pruned.plan.items()}
    masked = expand(run.found.groups, run.gm, kept)
    threads = config.bench.threads if config.bench else 1
    data = {
        "dense": run.onnx_dense,
        "masked": to_onnx(masked, example),
        "shrunk": run.onnx_pruned,
        "csr": pack_onnx(run.onnx_pruned, Format.CSR, batch=config.budget_batch,
                         threads=threads).data,
        "int8": pack_onnx(run.onnx_pruned, Format.INT8).data,
        "int8-dense": quantize(onnx.load_from_string(run.onnx_dense)).SerializeToString(),
    }
    x = run.probe[:PARITY_SAMPLES]
    for name in ("masked", "csr"):  # the same function as the verified export
        verify(data[name], run.gm, x, tolerance=config.parity_tolerance)
    directory.mkdir(parents=True, exist_ok=True)
    return {check_output(directory / f"{name}.onnx", inputs=(), option="--variants"): blob
            for name, blob in data.items()}


def _check_options(data: str | None, config: CompressConfig) -> None:
    """Options that cannot work without data, refused before any work is done."""
    if data is not None:
        return
    if config.budgets.min_accuracy is not None or config.budgets.min_agreement is not None:
        raise DataError("--min-accuracy and --min-agreement are measured on data: pass --data "
                        "(labelled for --min-accuracy)")
    prune = config.prune
    if prune.needs_data:
        what = prune.criterion.value if prune.score is Score.NEURONS else prune.method.value
        raise DataError(f"ranking by {what} needs calibration data: pass --data, or rank by "
                        "weights with --method magnitude")
    if prune.compensate.resolve(has_data=False).needs_data:
        raise DataError(f"--compensate {prune.compensate.value} needs calibration data: pass "
                        "--data, or use --compensate merge (data-free) or none")


def _random_inputs(model: LoadedModel, *, seed: int) -> torch.Tensor:
    """Inputs to check the export on when there is no data: uniform [0, 1) in the model's
    input shape (from a .pt2 program's signature, else the first weight matrix's columns)."""
    shape = _input_shape(model)
    x = torch.rand((PARITY_SAMPLES, *shape), generator=torch.Generator().manual_seed(seed))
    try:
        layout, _ = find_input_layout(model, x)
    except DataError as e:
        raise DataError(f"without --data the model is checked on random inputs of shape "
                        f"[N, {', '.join(map(str, shape))}], and it does not take them: pass "
                        "--data with inputs in the shape it expects") from e
    return layout(x)


def _input_shape(model: LoadedModel) -> tuple[int, ...]:
    if model.program is not None:
        names = set(model.program.graph_signature.user_inputs)
        for node in model.program.graph.nodes:
            if node.op == "placeholder" and node.name in names and "val" in node.meta:
                return tuple(int(d) for d in node.meta["val"].shape[1:])
    for _, p in model.run.named_parameters():
        if p.ndim == 2:
            return (int(p.shape[1]),)
    raise DataError("cannot tell the model's input shape without data: pass --data")


def _check_paths(paths: Paths, data: str | None) -> tuple[Path, Path]:
    """The output and report paths, checked before any work is done."""
    inputs = (Path(paths.model),) if data in (None, "fashion-mnist") else \
        (Path(paths.model), Path(data))
    output = check_output(paths.output or _default_output(Path(paths.model)), inputs=inputs)
    report = check_output(paths.report or output.with_suffix(".json"), inputs=inputs,
                          option="--report")
    if report == output:
        raise OutputError(f"--report and --output are the same file ({output}): give the "
                          "report its own path, e.g. ending in .json")
    if paths.variants is not None:
        variants = Path(paths.variants).expanduser()
        if variants.exists() and not variants.is_dir():
            raise OutputError(f"--variants {variants} is a file: pass a directory (it is "
                              "created if missing)")
        for name in VARIANTS:
            check_output(variants / f"{name}.onnx", inputs=inputs, option="--variants") \
                if variants.is_dir() else check_output(variants, inputs=inputs,
                                                       option="--variants")
    return output, report


@dataclass(frozen=True)
class _Run:
    model_format: str
    splits: DataSplits | None
    probe: torch.Tensor  # inputs for parity and latency: held-back data, or random
    dense: fx.GraphModule
    gm: fx.GraphModule
    found: Trace
    pruned: Pruned
    onnx_dense: bytes
    onnx_pruned: bytes  # float32, zeros kept
    packed: Packed  # what is written


def _report(run: _Run, paths: Paths, data: str, config: CompressConfig, *, output: Path,
            report_path: Path, parity: tuple[float, int], packed_diff: float | None,
            started: float) -> Report:
    test = run.splits.test if run.splits else None
    acc_before = acc_after = accuracy_data = None
    if test is not None and test.y is not None:
        acc_before = accuracy(run_batched(run.dense, test.x), test.y)
        acc_after = accuracy(run_onnx(session(run.packed.data), test.x), test.y)
        accuracy_data = (f"{'fashion-mnist test' if data == 'fashion-mnist' else 'held-out test split'}"
                         f" ({len(test):,} samples, not used for fine-tuning)")
    w_before = weights(run.dense, run.found)
    w_after = nonzero_weights(run.gm, run.found) if config.prune.score is Score.WEIGHTS else \
        weights(run.gm, run.found)
    return Report(
        model=str(paths.model), model_format=run.model_format, data=data, output=str(output),
        report=str(report_path), target=config.prune.target, scope=config.prune.scope.value,
        criterion=config.prune.criterion.value, score=config.prune.score.value,
        method=config.prune.method.value if config.prune.score is Score.WEIGHTS else None,
        format=config.format.value, format_note=run.packed.note,
        kernels=run.packed.layers if config.format is not Format.DENSE else (),
        runtime=run.packed.runtime, int8_max_abs_diff=packed_diff,
        compensate=config.prune.compensate.resolve(has_data=run.splits is not None).value,
        calibration_samples=run.pruned.stats.samples if run.pruned.stats else 0,
        weights_before=w_before,
        weights_after=w_after, flops_before=2 * w_before, flops_after=2 * w_after,
        onnx_bytes_before=len(run.onnx_dense), onnx_bytes=len(run.packed.data),
        accuracy_before=acc_before, accuracy_after=acc_after, accuracy_data=accuracy_data,
        parity_max_abs_diff=parity[0], parity_samples=parity[1],
        parity_inputs="held-back" if run.splits else "random",
        latency_threads=config.bench.threads if config.bench else 0,
        latency=_latencies(run.onnx_dense, run.packed, run.probe[:256], config),
        layers=_layer_rows(run.dense, run.gm, run.found, run.pruned.stats),
        cycles=run.pruned.cycles, plan=run.pruned.plan,
        seconds=round(time.perf_counter() - started, 2))


def _budgets(run: _Run, report: Report, config: CompressConfig) -> tuple[BudgetRow, ...]:
    """The written model measured against the budgets, as `compress check` measures it; the
    reference for agreement and the baseline for latency are the input model."""
    budgets = config.budgets
    if not budgets.any:
        return ()
    measured = measure_file(onnx.load_from_string(run.packed.data), len(run.packed.data), budgets)
    if report.accuracy_after is not None:
        measured["accuracy"] = Measured(report.accuracy_after, f"on {report.accuracy_data}")
    if budgets.min_agreement is not None:
        test = run.splits.test if run.splits.test is not None else run.splits.validation
        same = run_onnx(session(run.packed.data), test.x).argmax(1) == \
            run_batched(run.dense, test.x).argmax(1)
        measured["agreement"] = Measured(float(same.double().mean()), f"top-1 vs {report.model} "
                                         f"on {len(test):,} held-out samples")
    for lat in report.latency:
        if lat.batch == config.budget_batch:
            threads = report.latency_threads
            how = f"batch {lat.batch}, {threads} thread{'s' * (threads > 1)}, onnxruntime CPU"
            measured["latency"] = Measured(lat.after_ms, how)
            measured["latency_ratio"] = Measured(
                lat.after_ms / lat.before_ms, f"vs the dense export ({lat.before_ms:.4f} ms), {how}")
    return evaluate(budgets, measured)


def _fit_data(model, splits: DataSplits) -> DataSplits:
    layout, classes = find_input_layout(model, splits.train.x)
    splits = splits.map_x(layout)
    for part in (splits.train, splits.validation, splits.test):
        if part is not None and part.y is not None and int(part.y.max()) >= classes:
            raise DataError(f"{splits.name}: labels go up to {int(part.y.max())} but the model "
                            f"has {classes} outputs: give labels 0..{classes - 1}")
    return splits


def _latencies(dense: bytes, packed: Packed, sample: torch.Tensor,
               config: CompressConfig) -> tuple[Latency, ...]:
    """Dense export vs the written file in plain onnxruntime, and in compressor.runtime when
    the file has layers chosen for sparse kernels."""
    if config.bench is None:
        return ()
    b = config.bench
    models: list = [dense, packed.data]
    if packed.runtime:
        models.append(SparseModel.load(packed.data, kernels="stored", threads=b.threads))
    rows = []
    for batch in b.batches:
        times = latencies_ms(models, [sample] * len(models), batch=batch, threads=b.threads,
                             seconds=2 * b.seconds)
        rows.append(Latency(batch, times[0], times[1], times[2] if packed.runtime else None))
    return tuple(rows)


def _layer_rows(dense: fx.GraphModule, gm: fx.GraphModule, found: Trace,
                stats: ActivationStats | None) -> tuple[LayerRow, ...]:
    reasons = dict(found.dense)
    prunable = {g.name for g in found.groups}
    rows = []
    for layer in found.layers:
        before, after = get_tensor(dense, layer.weight).shape, get_tensor(gm, layer.weight).shape
        pruned = layer.name in prunable
        dead = stats.dead(layer.name) if pruned and stats is not None else None
        rows.append(LayerRow(layer.name, int(before[1]), int(before[0]), int(after[1]),
                             int(after[0]), dead,
                             "pruned" if pruned else reasons.get(layer.name, "")))
    return tuple(rows)


def _example(x: torch.Tensor) -> torch.Tensor:
    """Two samples: torch.export treats a batch of one as a fixed size."""
    return x[:2] if x.shape[0] >= 2 else x.repeat(2, *[1] * (x.ndim - 1))


def _default_output(model: Path) -> Path:
    if not model.name:
        raise OutputError(f"cannot derive an output name from {model}: pass -o/--output")
    return model.with_name(f"{model.stem}.compressed.onnx")
