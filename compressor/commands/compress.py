"""`compress`: load -> trace -> (calibrate -> select -> compensate -> shrink -> fine-tune) per
cycle -> export -> verify -> pack -> report -> write. Nothing is written unless every step
succeeds."""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import fx

from ..errors import DataError, NothingToPruneError, OutputError, UsageError
from ..export.pack import Format, Packed, pack_onnx
from ..export.to_onnx import to_onnx
from ..export.variants import VARIANTS, variants
from ..export.verify import verify, verify_packed
from ..graph import count
from ..graph.capture import capture, run_batched
from ..graph.trace import trace
from ..io.data import DataSplits, load_data, normalized
from ..io.files import check_output, files_in, write_atomic
from ..io.inputs import PARITY_SAMPLES, InputLayout, example, fit_data, random_inputs
from ..io.load import LoadedModel, check_float32, load_model, select_logits
from ..prune.config import Score
from ..measure.widths import Kernel, preferred_multiple
from ..prune.config import PruneConfig
from ..prune.cycles import Log, Progress, has_channels, has_tokens, is_channels, measure, prune
from ..prune.factor import Factored, auto_rank, candidates, factor
from ..prune.finetune import finetune
from ..prune.lsq import ranks_by_error
from ..prune.shrink import expand
from ..report.compress import Report
from ..report.plots import compress_plots, require_matplotlib
from .config import CompressConfig
from .summary import Outcome, summarize


@dataclass(frozen=True)
class Paths:
    """Where `compress` reads and writes (the model may carry its own code via `arch`)."""

    model: Path
    output: Path | None = None
    report: Path | None = None
    arch: str | None = None
    trust_pickle: bool = False
    variants: Path | None = None  # a directory to write every variant of the result into
    logits: str | None = None  # which output (tuple index or dict key) are the logits
    plots: Path | None = None  # a directory to write the report's pictures into


def compress(paths: Paths, data: str | None, config: CompressConfig, *, log: Log | None = None,
             progress: Progress | None = None) -> Report:
    """Prune the model at `paths.model` to `config.prune.target`, export and verify ONNX, write
    the ONNX file and the JSON report, and return the report.

    Args:
        paths: model, outputs (default: `<stem>.compressed.onnx` and `.json` beside the model).
        data: `fashion-mnist`, a data file (see `compressor.io.data.load_data`), or None to
            prune data-free (weight-norm criterion, merge or no compensation; the export is
            then checked on random inputs).
        config: pruning, fine-tuning and benchmark settings.
        log: receives one line per stage.
        progress: receives (stage, done, total) while counting activations.
    """
    started = time.perf_counter()
    log = log or (lambda _: None)
    torch.manual_seed(config.seed)
    check_options(data, config)
    output, report_path = _check_paths(paths, data)
    if paths.plots is not None:
        require_matplotlib()
    model, splits, probe, layout = _load(paths, data, config, log)
    outcome = run(model, splits, probe, layout, config, name=str(paths.model), log=log,
                  progress=progress)
    measures = [f"accuracy on {data}"] * bool(data) + ["latency"] * bool(config.bench)
    log("measuring the result" + (f" ({', '.join(measures)})" if measures else ""))
    report = summarize(outcome, config, model=str(Path(paths.model).resolve()), data=data,
                       output=str(output),
                       report_path=str(report_path), started=started)
    files = {output: outcome.packed.data, report_path: report.to_json().encode()}
    if paths.variants is not None:
        files |= _variants(paths.variants, outcome, config)
    if paths.plots is not None:
        stats = outcome.pruned.stats
        rates = {} if stats is None else {g: stats.rate(g).tolist() for g in stats.counts}
        files |= files_in(paths.plots, compress_plots(report, rates), option="--plots")
    write_atomic(files)
    return report


def run(model: LoadedModel, splits: DataSplits | None, probe: torch.Tensor,
        layout: InputLayout, config: CompressConfig, *, name: str, log: Log,
        progress: Progress | None = None) -> Outcome:
    """Capture, trace, prune, export, verify and pack a loaded model (files are neither read
    nor written here).

    Args:
        model: the loaded model.
        splits: its data, in its layout (None: data-free).
        probe: inputs the export is checked on (held-back data, or random inputs).
        layout: how the data was shaped for the model.
        config: pruning, fine-tuning and benchmark settings.
        name: what messages call the model.
        log: receives one line per stage.
        progress: receives (stage, done, total) while counting activations.
    """
    sample = example(probe)
    dense = capture(model, sample)
    gm = copy.deepcopy(dense)
    found = trace(gm)
    if not found.groups:
        reasons = "; ".join(f"{layer}: {why}" for layer, why in found.dense) or \
            "no Linear or Conv layers"
        raise NothingToPruneError(f"nothing to prune in {name} ({reasons}): compressor "
                                  "removes neurons and channels of Linear and Conv layers whose "
                                  "next layers read them through a ReLU")
    tuning = config.finetune
    distills = bool(splits and splits.labelled and tuning.max_epochs != 0 and tuning.distill)
    if distills:
        log(f"computing the input model's logits on {len(splits.train):,} training samples "
            "(for distillation)")
    teacher = run_batched(dense, splits.train.x, device=config.prune.device) if distills \
        else None  # a pass over train
    settings, alignment = _multiples(gm, found, config.prune, log)
    dense_found, reference = found, None
    factored = _factored(gm, found, splits, settings, config, teacher, log)
    if factored:
        reference = measure(dense, dense_found, settings)
        found = trace(gm)
    pruned = prune(gm, found, splits, settings, config.finetune, seed=config.seed,
                   teacher=teacher, log=log, progress=progress, reference=reference)
    log("exporting ONNX and verifying it in onnxruntime")
    onnx_pruned = to_onnx(gm, sample)
    parity_x = probe[:PARITY_SAMPLES]
    diff = verify(onnx_pruned, gm, parity_x, tolerance=config.parity_tolerance)
    calibration = (splits.train.x if splits else probe)[:INT8_CALIBRATION]
    packed, packed_diff = _pack(onnx_pruned, gm, parity_x, config, log, calibration)
    return Outcome(model.format.value, splits, probe, dense, gm, found, pruned,
                   to_onnx(dense, sample), onnx_pruned, packed, layout,
                   (diff, int(parity_x.shape[0])), packed_diff, alignment,
                   dense_found=dense_found, factored=tuple(factored))


def _factored(gm: fx.GraphModule, found, splits: DataSplits | None, config: PruneConfig,
              run: CompressConfig, teacher: torch.Tensor | None, log: Log) -> list[Factored]:
    """Factor the layers `config.factor` asks for (auto: `factor.auto_rank`, only where the
    model is fine-tuned) in place and fine-tune the factored model; what was factored."""
    tuning = run.finetune.resolved(channels=has_channels(gm, found.groups),
                                   tokens=has_tokens(found.groups))
    tuned = bool(splits and splits.labelled and tuning.max_epochs)
    mlp = all(g.relu for g in found.groups) and ranks_by_error(gm, found.groups)
    if config.factor == 0 or config.score is not Score.NEURONS or \
            (config.factor is None and not (tuned and mlp)):
        return []
    layers = {layer.name: layer for layer in found.layers}
    budget = round((1 - config.target) * count.weights(gm, found))
    ranks = {}
    for name in candidates(gm, found):
        layer = layers[name]
        rank = auto_rank(layer.out_features, layer.in_features, config.target,
                         config.align or config.linear_multiple or 1, budget) \
            if config.factor is None else config.factor
        if rank is not None and rank < min(layer.in_features, layer.out_features):
            ranks[name] = rank
    if not ranks and config.factor:
        raise UsageError(f"--factor {config.factor}: nothing to factor: it splits pruned Linear "
                         f"layers that read unpruned inputs (an MLP's first layer) and have more "
                         f"than {config.factor} inputs and outputs, and this model has none: "
                         f"drop --factor or give a smaller rank")
    if not ranks:
        return []
    calib = splits.train.x[:config.calibration_samples] if splits else None
    done = factor(gm, found, ranks, calib)
    for f in done:
        log(f"factoring {f.name} as {f.in_features} -> {f.rank} -> its units before pruning "
            f"({100 * f.kept_energy:.1f}% of its output variance kept)")
    if tuned:
        log(f"fine-tuning the factored model (at most {tuning.max_epochs} epochs)")
        result = finetune(gm, splits.train, splits.validation, tuning, teacher=teacher,
                          seed=run.seed, device=config.device,
                          log=lambda line: log(f"factored model: {line}"))
        log(f"factored model: fine-tuned {result.epochs} epochs, val acc "
            f"{100 * result.val_accuracy:.2f}%")
    return done


def _multiples(gm: fx.GraphModule, found, config: PruneConfig,
               log: Log) -> tuple[PruneConfig, str]:
    """`config` with the multiples `--align auto` rounds conv channels and wide Linear
    layers to on this machine (each measured once, then cached), and how they were found,
    for the report; only what the model has and the settings leave to measurement."""
    if config.align or config.score is not Score.NEURONS:
        return config, ""
    conv = [g for g in found.groups if is_channels(gm, g)]
    wide = [g for g in found.groups if not is_channels(gm, g) and g.size >= 16]  # 4 steps of 4
    found_here = {}
    if conv and config.channel_multiple is None:
        found_here["channel_multiple"] = preferred_multiple(Kernel.CONV)
    if wide and config.linear_multiple is None:
        found_here["linear_multiple"] = preferred_multiple(Kernel.GEMM)
    for chosen in found_here.values():
        log(chosen.describe())
    return dataclasses.replace(config, **{k: c.multiple for k, c in found_here.items()}), \
        ", ".join(c.describe() for c in found_here.values())


def _load(paths: Paths, data: str | None, config: CompressConfig,
          log: Log) -> tuple[LoadedModel, DataSplits | None, torch.Tensor, InputLayout]:
    """The model, the data split and fitted to it (None without data), the inputs the
    export is checked on (held-back data, or random inputs in the model's shape), and the
    input layout chosen."""
    model = prepared(load_model(paths.model, arch=paths.arch, trust_pickle=paths.trust_pickle),
                     logits=paths.logits)
    if data is None:
        probe, layout = random_inputs(model, seed=config.seed, shape=config.input_shape)
        splits = None
        log(f"loaded {model.format.value} model; no data: pruning data-free, checking the "
            f"export on {len(probe):,} random inputs")
    else:
        given = load_data(data, seed=config.seed)
        if config.normalize is not None:
            given = normalized(given, *config.normalize)
        splits, layout = fit_data(model, given, shape=config.input_shape)
        if config.budgets.min_accuracy is not None and not splits.labelled:
            raise DataError(f"--min-accuracy needs labels, and {data} has none: give labelled "
                            "data or drop --min-accuracy")
        probe = splits.validation.x
        log(f"loaded {model.format.value} model and {data} ({len(splits.train):,} train / "
            f"{len(splits.validation):,} validation / {len(splits.test or ()):,} test samples)")
    return model, splits, probe, layout


def prepared(model: LoadedModel, *, logits: str | None = None) -> LoadedModel:
    """A loaded model made ready to run: float32 checked, the logits picked from several
    outputs, and a `.pt2` program's shape guards dropped (any batch size)."""
    check_float32(model)
    if logits is not None:
        model = select_logits(model, logits)
    if model.program is not None:
        model = dataclasses.replace(model, run=capture(model))
    return model


INT8_CALIBRATION = 1_000  # inputs the activation ranges of int8 convolutions are set on


def _pack(onnx_pruned: bytes, gm: fx.GraphModule, x: torch.Tensor, config: CompressConfig,
          log: Log, calibration: torch.Tensor) -> tuple[Packed, float | None]:
    """The verified export in `config.format`, checked against `gm` on `x`; with the max
    |packed - float32| difference for int8 and low-rank files (int8 convolutions take their
    activation ranges from the `calibration` inputs)."""
    if config.format is Format.DENSE:
        return pack_onnx(onnx_pruned, Format.DENSE), None
    log(f"packing as {config.format.value}" + (
        f" (measuring kernels at batch {config.budget_batch})"
        if config.format in (Format.CSR, Format.AUTO) else ""))
    packed = pack_onnx(onnx_pruned, config.format, batch=config.budget_batch,
                       threads=config.threads, calibration=calibration.numpy(),
                       energy=config.rank_energy)
    return packed, verify_packed(packed, gm, x, tolerance=config.parity_tolerance)


def _variants(folder: Path, run: Outcome, config: CompressConfig) -> dict[Path, bytes]:
    """`--variants`: every variant of the result, by the path it is written to."""
    sample, x = example(run.probe), run.probe[:PARITY_SAMPLES]
    kept = {name: torch.tensor(p["kept"]) for name, p in run.pruned.plan.items()}
    masked = expand(run.found.groups, run.pruned_gm, kept)
    blobs = variants(run.onnx_dense, run.onnx_pruned, masked, run.pruned_gm, sample, x,
                     batch=config.budget_batch, threads=config.threads,
                     tolerance=config.parity_tolerance, energy=config.rank_energy)
    return files_in(folder, {f"{name}.onnx": blob for name, blob in blobs.items()},
                    option="--variants")


def check_options(data: str | None, config: CompressConfig) -> None:
    """Options that cannot work without data (`data` None), refused before any work."""
    if data is not None:
        return
    if config.normalize is not None:
        raise DataError("--normalize applies to --data: pass --data, or drop --normalize")
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
        folder = Path(paths.variants).expanduser()
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"--variants {folder} is a file: pass a directory (it is "
                              "created if missing)")
        for name in VARIANTS:
            check_output(folder / f"{name}.onnx" if folder.is_dir() else folder, inputs=inputs,
                         option="--variants")
    return output, report


def _default_output(model: Path) -> Path:
    if not model.name:
        raise OutputError(f"cannot derive an output name from {model}: pass -o/--output")
    return model.with_name(f"{model.stem}.compressed.onnx")
