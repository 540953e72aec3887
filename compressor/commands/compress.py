"""`compress`: load -> trace -> plan -> (calibrate -> select -> compensate -> shrink -> fine-tune)
per cycle -> export -> verify -> pack -> report -> write. Nothing is written unless every step
succeeds."""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import fx

from ..errors import OptionError, OutputError
from ..export.pack import Format, Packed, pack_onnx
from ..export.to_onnx import to_onnx
from ..export.variants import VARIANTS, variants
from ..export.verify import verify, verify_packed
from ..graph.capture import capture, clean_graph, run_batched
from ..graph.trace import OUTPUT_LAYER, Trace, trace
from ..io import ranks
from ..io.cores import kept_to_free_cores
from ..io.data import DataSplits, normalized
from ..io.files import check_output, files_in, write_atomic
from ..io.inputs import PARITY_SAMPLES, InputLayout, example, fit_data, random_inputs
from ..io.load import LoadedModel, check_float32, load_model, select_logits
from ..io.sources import load_data
from ..plan import DataFacts, Machine, Options, Plan, ThisMachine, check, model_facts, plan
from ..plan.rules import device as device_rule
from ..prune import rotate
from ..prune.cycles import Log, Progress, measure, prune
from ..prune.factor import Factored, factor
from ..prune.finetune import finetune
from ..prune.reach import check_prunable
from ..prune.shrink import expand
from ..report.compress import Report
from ..report.plots import compress_plots, require_matplotlib
from .outcome import Outcome
from .summary import summarize

PARITY_TOLERANCE = 1e-4  # most |onnxruntime - pytorch| on logits of order 1


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


def compress(paths: Paths, data: str | None, options: Options, *, log: Log | None = None,
             progress: Progress | None = None, machine: Machine | None = None) -> Report | None:
    """Prune the model at `paths.model` to `options.target`, export and verify ONNX, write
    the ONNX file and the JSON report, and return the report.

    Started by torchrun (WORLD_SIZE > 1), the process joins the group first: all processes
    calibrate and fine-tune together, and rank 0 alone logs, exports, measures and writes (the
    others return None once the model is pruned).

    Args:
        paths: model, outputs (default: `<stem>.compressed.onnx` and `.json` beside the model).
        data: `fashion-mnist`, a data file (see `compressor.io.data.load_data`), or None to
            prune data-free (the export is then checked on random inputs).
        options: what the user asked for; the rest is decided by `compressor.plan.plan`.
        log: receives one line per stage.
        progress: receives (stage, done, total) while counting activations.
        machine: what the plan asks about the machine (default: this machine, measured).
    """
    started = time.perf_counter()
    check(options, data=data is not None)
    if ranks.join(device_rule(options)[0]) and not ranks.lead():
        log = progress = None
    log = log or (lambda _: None)
    torch.manual_seed(options.value("seed"))
    output, report_path = _check_paths(paths, data)
    if paths.plots is not None:
        require_matplotlib()
    model, splits, probe, layout = _load(paths, data, options, log)
    outcome = run(model, splits, probe, layout, options, name=str(paths.model), log=log,
                  progress=progress, machine=machine, variants=paths.variants is not None)
    lead = ranks.lead()
    ranks.leave()  # rank 0 measures and writes alone from here (after an error: the group
    if not lead:   # is left as it is, so the error names the rank)
        return None
    measures = [f"accuracy on {data}"] * bool(data) + ["latency"] * bool(outcome.plan.bench)
    log("measuring the result" + (f" ({', '.join(measures)})" if measures else ""))
    report = summarize(outcome, model=str(Path(paths.model).resolve()), data=data,
                       output=str(output), report_path=str(report_path), started=started,
                       normalize=options.normalize)
    files = {output: outcome.packed.data, report_path: report.to_json().encode()}
    if paths.variants is not None:
        files |= _variants(paths.variants, outcome)
    if paths.plots is not None:
        stats = outcome.pruned.stats
        rates = {} if stats is None else {g: stats.rate(g).tolist() for g in stats.counts}
        files |= files_in(paths.plots, compress_plots(report, rates), option="--plots")
    write_atomic(files)
    return report


def run(model: LoadedModel, splits: DataSplits | None, probe: torch.Tensor,
        layout: InputLayout, options: Options, *, name: str, log: Log,
        progress: Progress | None = None, machine: Machine | None = None,
        variants: bool = False) -> Outcome:
    """Capture, trace, plan, prune, export, verify and pack a loaded model (files are neither
    read nor written here).

    Args:
        model: the loaded model.
        splits: its data, in its layout (None: data-free).
        probe: inputs the export is checked on (held-back data, or random inputs).
        layout: how the data was shaped for the model.
        options: what the user asked for.
        name: what messages call the model.
        log: receives one line per stage.
        progress: receives (stage, done, total) while counting activations.
        machine: what the plan asks about the machine (default: this machine).
        variants: whether every variant of the result will be written.
    """
    sample = example(probe)
    dense = clean_graph(model, sample)
    gm = copy.deepcopy(dense)
    stream = bool(options.value("prune_stream"))
    found = trace(gm, sample, stream=stream)
    if stream and not any(g.stream for g in found.groups):
        raise OptionError(f"`prune_stream`: {name} has no residual stream that can be pruned "
                          f"({_stream_reason(found)}); drop `prune_stream`")
    check_prunable(gm, found, name)
    labelled = bool(splits and splits.labelled)
    chosen = plan(options, model_facts(gm, found), DataFacts(splits is not None, labelled),
                  machine or ThisMachine(), variants=variants)
    log("plan: " + ", ".join(f"{d.option} {d.shown()}" for d in chosen.decisions))
    for warning in chosen.warnings:
        log(f"warning: {warning}")
    # exported now, beside the fewest copies of the weights; its size is always reported, the
    # file itself kept only where the latency or the variants read it
    onnx_dense = to_onnx(dense, sample) if ranks.lead() else None
    dense_size = len(onnx_dense or b"")
    onnx_dense = onnx_dense if chosen.bench or variants else None
    with kept_to_free_cores(chosen.torch_threads) as threads:
        teacher = None
        if chosen.tuned and chosen.finetune.distill:
            log(f"computing the input model's logits on {len(splits.train):,} training "
                "samples (for distillation)")
            teacher = run_batched(dense, splits.train.x, device=chosen.prune.device)
        dense_found, reference = found, None
        if stream:
            found = _invariant(gm, found, sample, log)
        factored = _factored(gm, found, splits, chosen, teacher, log)
        if factored:
            reference = measure(dense, dense_found, chosen.prune)
            found = trace(gm, sample, stream=stream)
        pruned = prune(gm, found, splits, chosen.prune, chosen.finetune, teacher=teacher,
                       log=log, progress=progress, reference=reference)
        if not ranks.lead():  # in a group, rank 0 alone exports, verifies and measures
            return Outcome(model.format.value, splits, probe, layout, chosen, dense, dense_found,
                           None, gm, found, pruned, None, None, None, None, tuple(factored))
        log("exporting ONNX and verifying it in onnxruntime")
        onnx_pruned = to_onnx(gm, sample)
        parity_x = probe[:PARITY_SAMPLES]
        agreement = verify(onnx_pruned, gm, parity_x, tolerance=PARITY_TOLERANCE)
        if agreement.rounding is not None:
            log(f"warning: onnxruntime differs from the pruned PyTorch model by "
                f"{agreement.diff:.2g}, above the tolerance, but so does PyTorch's own float32 "
                f"from float64 ({agreement.rounding:.2g}): the pruned model is that sensitive "
                "to rounding, and the file computes it as closely as float32 allows")
        calibration = (splits.train.x if splits else probe)[:INT8_CALIBRATION]
        packed, packed_diff = _pack(onnx_pruned, gm, parity_x, chosen, log, calibration)
    return Outcome(model.format.value, splits, probe, layout, chosen, dense, dense_found,
                   onnx_dense, gm, found, pruned, onnx_pruned, packed,
                   (agreement.diff, int(parity_x.shape[0]), agreement.largest,
                    agreement.rounding), packed_diff, tuple(factored), threads, ranks.size(),
                   dense_size)


def _invariant(gm: fx.GraphModule, found: Trace, sample: torch.Tensor, log: Log) -> Trace:
    """The residual stream made invariant to rotations (`rotate.make_invariant`: its
    LayerNorms become RMSNorms) so that every cycle can cut its least used directions; the
    graph traced again. Where it cannot be, its own features are cut, and the log says why."""
    stream = next(g for g in found.groups if g.stream)
    why = rotate.why_not(gm, stream)
    if why is not None:
        log(f"warning: the residual stream keeps its own features (not rotated: {why}); "
            "cutting features loses more accuracy than cutting directions (docs/method.md)")
        return found
    layer_norms = any(n.target is rotate.LAYER_NORM for n in rotate.norms_of(gm, stream))
    rotate.make_invariant(gm, stream)
    log(f"residual stream: {'LayerNorms' if layer_norms else 'RMSNorms'} folded into the "
        f"layers that read them{' and made RMSNorms' if layer_norms else ''}, so that each "
        "cycle rotates it to its principal directions and cuts the least used")
    return trace(gm, sample, stream=True)


def _stream_reason(found: Trace) -> str:
    """Why the layers that would write a residual stream stay dense: the first reason that
    is not about attention heads or the output layer."""
    reasons = [why for _, why in found.dense if "heads" not in why and why != OUTPUT_LAYER]
    return reasons[0] if reasons else "no LayerNorm or RMSNorm over a stream of several layers"


def _factored(gm: fx.GraphModule, found: Trace, splits: DataSplits | None, chosen: Plan,
              teacher: torch.Tensor | None, log: Log) -> list[Factored]:
    """Factor the layers the plan names in place and, where the run fine-tunes, fine-tune the
    factored model; what was factored."""
    if not chosen.factor:
        return []
    calib = splits.train.head(chosen.prune.calibration_samples).x if splits else None
    done = factor(gm, found, dict(chosen.factor), calib)
    for f in done:
        log(f"factoring {f.name} as {f.in_features} -> {f.rank} -> its units before pruning "
            f"({100 * f.kept_energy:.1f}% of its output variance kept)")
    if chosen.tuned:
        tuning = chosen.finetune
        log(f"fine-tuning the factored model (at most {tuning.max_epochs} epochs)")
        result = finetune(gm, splits.train, splits.validation, tuning, teacher=teacher,
                          seed=chosen.seed, device=chosen.prune.device,
                          log=lambda line: log(f"factored model: {line}"))
        log(f"factored model: fine-tuned {result.epochs} epochs, val acc "
            f"{100 * result.val_accuracy:.2f}%")
    return done


def _load(paths: Paths, data: str | None, options: Options,
          log: Log) -> tuple[LoadedModel, DataSplits | None, torch.Tensor, InputLayout]:
    """The model, the data split and fitted to it (None without data), the inputs the
    export is checked on (held-back data, or random inputs in the model's shape), and the
    input layout chosen."""
    model = prepared(load_model(paths.model, arch=paths.arch, trust_pickle=paths.trust_pickle),
                     logits=paths.logits, owned=True)
    seed = options.value("seed")
    if data is None:
        probe, layout = random_inputs(model, seed=seed, shape=options.input_shape)
        splits = None
        log(f"loaded {model.format.value} model; no data: pruning data-free, checking the "
            f"export on {len(probe):,} random inputs")
    else:
        given = load_data(data, seed=seed)
        if options.normalize is not None:
            given = normalized(given, *options.normalize)
        splits, layout = fit_data(model, given, shape=options.input_shape)
        if options.budgets.min_accuracy is not None and not splits.labelled:
            raise OptionError(f"`min_accuracy` needs labels, and {data} has none: give "
                              "labelled data or drop `min_accuracy`")
        probe = splits.validation.x
        log(f"loaded {model.format.value} model and {data} ({len(splits.train):,} train / "
            f"{len(splits.validation):,} validation / {len(splits.test or ()):,} test samples)")
    return model, splits, probe, layout


def prepared(model: LoadedModel, *, logits: str | None = None,
             owned: bool = False) -> LoadedModel:
    """A loaded model made ready to run: float32 checked, the logits picked from several
    outputs, and a `.pt2` program's shape guards dropped (any batch size). `owned`: the
    program was loaded from a file here, so nobody else holds it."""
    check_float32(model)
    if logits is not None:
        model = select_logits(model, logits)
    if model.program is not None:
        model = dataclasses.replace(model, run=capture(model))
        if owned:
            # the clean graph owns a copy of the weights, and `capture` copies it from here
            # on: the program is read only for its inputs' shapes, so its weights are let go
            model.program.state_dict.clear()
            model.program.constants.clear()
    return model


INT8_CALIBRATION = 1_000  # inputs the activation ranges of int8 convolutions are set on


def _pack(onnx_pruned: bytes, gm: fx.GraphModule, x: torch.Tensor, chosen: Plan,
          log: Log, calibration: torch.Tensor) -> tuple[Packed, float | None]:
    """The verified export in `chosen.format`, checked against `gm` on `x`; with the max
    |packed - float32| difference for int8 and low-rank files (int8 convolutions take their
    activation ranges from the `calibration` inputs)."""
    if chosen.format is Format.DENSE:
        return pack_onnx(onnx_pruned, Format.DENSE), None
    log(f"packing as {chosen.format.value}" + (
        f" (measuring kernels at batch {chosen.batch})"
        if chosen.format in (Format.CSR, Format.AUTO) else ""))
    packed = pack_onnx(onnx_pruned, chosen.format, batch=chosen.batch,
                       threads=chosen.onnx_threads, calibration=calibration.numpy(),
                       energy=chosen.rank_energy)
    return packed, verify_packed(packed, gm, x, tolerance=PARITY_TOLERANCE)


def _variants(folder: Path, run: Outcome) -> dict[Path, bytes]:
    """`--variants`: every variant of the result, by the path it is written to."""
    sample, x = example(run.probe), run.probe[:PARITY_SAMPLES]
    kept = {name: torch.tensor(p["kept"]) for name, p in run.pruned.kept.items()}
    masked = expand(run.found.groups, run.pruned_gm, kept)
    chosen = run.plan
    blobs = variants(run.onnx_dense, run.onnx_pruned, masked, run.pruned_gm, sample, x,
                     batch=chosen.batch, threads=chosen.onnx_threads,
                     tolerance=PARITY_TOLERANCE, energy=chosen.rank_energy)
    return files_in(folder, {f"{name}.onnx": blob for name, blob in blobs.items()},
                    option="--variants")


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
