"""The report of one `compress` run: sizes, accuracy, parity, latency, layers, cycles and
budgets, each measured once."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import platform
import time
from enum import Enum
from dataclasses import dataclass

import onnx
import onnxruntime
import torch
from torch import fx

from ..export.pack import Format, Packed
from ..export.verify import run_onnx
from ..graph.capture import get_tensor, run_batched
from ..graph.count import flops, weights
from ..graph.trace import Trace
from ..io.data import DataSplits
from ..io.inputs import InputLayout
from ..measure.budgets import BudgetRow, Measured, evaluate, measure_file, share_equal
from ..measure.latency import latencies_ms
from ..measure.onnx_file import flops_per_sample
from ..prune.calibrate import ActivationStats
from ..prune.config import Criterion, PruneConfig, Score
from ..prune.cycles import Pruned
from ..prune.factor import Factored
from ..prune.finetune import accuracy
from ..report.compress import LayerRow, Latency, ModelInput, Report
from ..runtime import SparseModel, session
from .config import CompressConfig


@dataclass(frozen=True)
class Outcome:
    """What one run produced, from the input model to the file that is written."""

    model_format: str
    splits: DataSplits | None
    probe: torch.Tensor  # inputs for parity and latency: held-back data, or random
    dense: fx.GraphModule
    pruned_gm: fx.GraphModule
    found: Trace
    pruned: Pruned
    onnx_dense: bytes
    onnx_pruned: bytes  # float32, zeros kept
    packed: Packed  # what is written
    layout: InputLayout  # how the data was shaped for the model
    parity: tuple[float, int]  # max |onnxruntime - pytorch| of the float32 export, samples
    packed_diff: float | None  # max |packed - float32| (int8 and low-rank files)
    alignment: str = ""  # how --align auto chose the conv channel multiple, where it did
    dense_found: Trace | None = None  # the input model's trace, where factoring changed layers
    factored: tuple[Factored, ...] = ()  # layers factored before pruning


@dataclass(frozen=True)
class _Predictions:
    """Dense and written model on the held-out split, computed once for accuracy and agreement."""

    about: str
    dense: torch.Tensor  # logits of the input model
    written: torch.Tensor  # logits of the written file in onnxruntime
    labels: torch.Tensor | None


def summarize(run: Outcome, config: CompressConfig, *, model: str, data: str | None,
              output: str, report_path: str, started: float) -> Report:
    """The report of `run`, with the budgets measured as `compress check` measures them."""
    seen = _predictions(run, data, needed=config.budgets.min_agreement is not None)
    labelled = seen is not None and seen.labels is not None
    nonzero = config.prune.score is Score.WEIGHTS
    before = run.dense_found or run.found
    w_before = weights(run.dense, before)
    w_after = weights(run.pruned_gm, run.found, nonzero=nonzero)
    f_after = flops(run.pruned_gm, run.found, nonzero=nonzero)
    if config.format is Format.LOWRANK:  # the file's layers are the factors
        w_after -= sum(out * inp - row.rank * (out + inp) for row in run.packed.layers
                       if row.rank is not None for out, inp in [row.shape])
        f_after = flops_per_sample(onnx.load_from_string(run.packed.data))[0]
    prune = config.prune
    report = Report(
        model=model, model_format=run.model_format, data=data, output=output,
        report=report_path, target=prune.target, scope=run.pruned.config.scope.value,
        criterion=run.pruned.config.criterion.value, score=prune.score.value,
        alignment=run.alignment,
        criterion_reason=Criterion.auto_reason(run.pruned.config.criterion,
                                               tuned=any(c.epochs for c in run.pruned.cycles))
        if prune.criterion is Criterion.AUTO and prune.score is Score.NEURONS else "",
        method=prune.method.value if prune.score is Score.WEIGHTS else None,
        format=config.format.value, format_note=run.packed.note,
        kernels=run.packed.layers if config.format is not Format.DENSE else (),
        runtime=run.packed.runtime, of=prune.of.value,
        int8_max_abs_diff=None if config.format is Format.LOWRANK else run.packed_diff,
        lowrank_max_abs_diff=run.packed_diff if config.format is Format.LOWRANK else None,
        compensate=_compensation(run.pruned.config, run),
        calibration_samples=run.pruned.stats.samples if run.pruned.stats else 0,
        weights_before=w_before, weights_after=w_after,
        flops_before=flops(run.dense, before),
        flops_after=f_after,
        onnx_bytes_before=len(run.onnx_dense), onnx_bytes=len(run.packed.data),
        accuracy_before=accuracy(seen.dense, seen.labels) if labelled else None,
        accuracy_after=accuracy(seen.written, seen.labels) if labelled else None,
        accuracy_data=seen.about if labelled else None,
        parity_max_abs_diff=run.parity[0], parity_samples=run.parity[1],
        parity_inputs="held-back" if run.splits else "random",
        latency_threads=config.bench.threads if config.bench else 0,
        latency=_latencies(run.onnx_dense, run.packed, run.probe[:256], config),
        layers=_layer_rows(run.dense, run.pruned_gm, run.found, run.pruned.stats,
                           run.factored),
        cycles=run.pruned.cycles, plan=run.pruned.plan, spectra=run.pruned.spectra,
        input=_input(run.packed.data, run.layout),
        options=_options(config, run.pruned), versions=versions(),
        seconds=round(time.perf_counter() - started, 2))
    budgets = _budgets(run, report, seen, config)
    return dataclasses.replace(report, budgets=budgets, warnings=_warnings(report, run.layout))


def _warnings(report: Report, layout: InputLayout) -> tuple[str, ...]:
    """What looks wrong with the inputs: an input model that scores near chance was most
    likely given data preprocessed differently from its training data."""
    chance = 1 / max(layout.classes, 1)
    if report.accuracy_before is None or report.accuracy_before >= 2 * chance:
        return ()
    return (f"the input model scores {100 * report.accuracy_before:.2f}% on "
            f"{report.accuracy_data}, under twice chance ({100 * chance:.1f}% for "
            f"{layout.classes} classes): is the data preprocessed as in training (--normalize "
            "MEAN,STD, --input-shape)? Calibration and fine-tuning used the same data.",)


def _compensation(prune: PruneConfig, run: Outcome) -> str:
    """What compensated the removed units: auto resolved by data and activation (without data,
    merge where it is exact, none elsewhere)."""
    chosen = {prune.compensate.resolve(has_data=run.splits is not None,
                                       homogeneous=g.mergeable).value
              for g in run.found.groups}
    return "/".join(sorted(chosen)) or prune.compensate.value


def _options(config: CompressConfig, pruned: Pruned) -> dict[str, object]:
    """Every setting of the run as plain values, with what was left to the model resolved."""
    used = dataclasses.replace(config, prune=pruned.config, finetune=pruned.tuning)
    return json.loads(json.dumps(dataclasses.asdict(used), default=_plain))


def _plain(value: object) -> object:
    return value.value if isinstance(value, Enum) else str(value)


def versions() -> dict[str, str]:
    """compressor's version and those of Python and the libraries a result depends on."""
    return {"compressor": _version("compressor"), "python": platform.python_version(),
            "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _input(model: bytes, layout: InputLayout) -> ModelInput:
    """The written file's input (the batch axis is named `batch`), and the other sample shapes
    the input model would also have taken."""
    graph_input = onnx.load_from_string(model).graph.input[0]
    tensor = graph_input.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else "batch" for d in tensor.shape.dim)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    return ModelInput(graph_input.name, shape, dtype, layout.describe_also())


def _predictions(run: Outcome, data: str | None, *, needed: bool) -> _Predictions | None:
    """Both models on the test split (labelled data), else, if `needed`, on the validation
    split; None without data."""
    if run.splits is None or (run.splits.test is None and not needed):
        return None
    split = run.splits.test if run.splits.test is not None else run.splits.validation
    name = "fashion-mnist test" if data == "fashion-mnist" else "held-out test split"
    about = f"{name} ({len(split):,} samples, not used for fine-tuning)"
    return _Predictions(about, run_batched(run.dense, split.x),
                        run_onnx(session(run.packed.data), split.x), split.y)


def _budgets(run: Outcome, report: Report, seen: _Predictions | None,
             config: CompressConfig) -> tuple[BudgetRow, ...]:
    """The written model measured against the budgets, as `compress check` measures it; the
    reference for agreement and the baseline for latency are the input model."""
    budgets = config.budgets
    if not budgets.any:
        return ()
    measured = measure_file(onnx.load_from_string(run.packed.data), len(run.packed.data), budgets)
    if report.accuracy_after is not None:
        measured["accuracy"] = Measured(report.accuracy_after, f"on {report.accuracy_data}")
    if budgets.min_agreement is not None:
        same = share_equal(seen.written.argmax(1), seen.dense.argmax(1))
        measured["agreement"] = Measured(same, f"top-1 vs {report.model} on "
                                         f"{len(seen.dense):,} held-out samples")
    for lat in report.latency:
        if lat.batch == config.budget_batch:
            threads = report.latency_threads
            how = f"batch {lat.batch}, {threads} thread{'s' * (threads > 1)}, onnxruntime CPU"
            measured["latency"] = Measured(lat.after_ms, how)
            measured["latency_ratio"] = Measured(
                lat.after_ms / lat.before_ms, f"vs the dense export ({lat.before_ms:.4f} ms), {how}")
    return evaluate(budgets, measured)


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
                stats: ActivationStats | None,
                factored: tuple[Factored, ...] = ()) -> tuple[LayerRow, ...]:
    reasons = dict(found.dense)
    group_of = {s.param: g.name for g in found.groups for s in g.weights}
    inner = {f.inner: f for f in factored}
    outer = {f.name: f for f in factored}
    rows = []
    for layer in found.layers:
        after = get_tensor(gm, layer.weight).shape
        before = after if layer.name in inner else get_tensor(dense, layer.weight).shape
        group = group_of.get(layer.weight)
        dead = stats.dead(layer.name) if group == layer.name and stats is not None else None
        note = "pruned" if group == layer.name else \
            f"pruned with {group} (same channels)" if group else reasons.get(layer.name, "")
        if layer.name in inner:
            f = inner[layer.name]
            note = f"factor of {f.name} ({100 * f.kept_energy:.1f}% of its output variance)"
        elif layer.name in outer:
            note += f", reads {outer[layer.name].inner}'s {outer[layer.name].rank} features"
        rows.append(LayerRow(layer.name, int(before[1]), int(before[0]), int(after[1]),
                             int(after[0]), dead, note))
    return tuple(rows)
