"""The report of one `compress` run: sizes, accuracy, parity, latency, layers, cycles and
budgets, each measured once."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import platform
import time
from dataclasses import dataclass
from enum import Enum
from typing import Mapping

import onnx
import onnxruntime
import torch
from torch import fx

from ..export.pack import Format, Packed
from ..export.verify import run_onnx
from ..graph.capture import get_tensor, run_batched
from ..graph.count import flops, weights
from ..graph.trace import Trace
from ..io.inputs import InputLayout
from ..measure.budgets import BudgetRow, Measured, evaluate, measure_file, share_equal
from ..measure.latency import compared_ms
from ..measure.onnx_file import flops_per_sample
from ..plan import Plan
from ..prune.calibrate import ActivationStats
from ..prune.config import Compensation, Score
from ..prune.factor import Factored
from ..prune.finetune import accuracy
from ..report.compress import (
    Accuracy,
    Latency,
    LayerRow,
    ModelInput,
    Parity,
    PlanRow,
    Report,
    Settings,
    Sizes,
    Source,
    Storage,
    Threads,
    Timing,
)
from ..runtime import SparseModel, session
from .outcome import Outcome


@dataclass(frozen=True)
class _Predictions:
    """Dense and written model on the held-out split, computed once for accuracy and agreement."""

    about: str
    dense: torch.Tensor  # logits of the input model
    written: torch.Tensor  # logits of the written file in onnxruntime
    labels: torch.Tensor | None


def summarize(run: Outcome, *, model: str, data: str | None, output: str, report_path: str,
              started: float, normalize=None) -> Report:
    """The report of `run`, with the budgets measured as `compress check` measures them
    (`normalize`: the means and deviations the data was normalised with, if it was)."""
    chosen = run.plan
    seen = _predictions(run, data, needed=chosen.budgets.min_agreement is not None)
    labelled = seen is not None and seen.labels is not None
    source = Source(model, run.model_format, data, output, report_path,
                    _input(run.packed.data, run.layout),
                    run.pruned.stats.samples if run.pruned.stats else 0, normalize)
    accuracy_ = Accuracy(accuracy(seen.dense, seen.labels), accuracy(seen.written, seen.labels),
                         seen.about) if labelled else None
    lowrank = chosen.format is Format.LOWRANK
    diff, samples, largest, rounding = run.parity
    parity = Parity(diff, samples, "held-back" if run.splits else "random",
                    None if lowrank else run.packed_diff, run.packed_diff if lowrank else None,
                    largest, rounding)
    storage = Storage(chosen.format.value, run.packed.note,
                      run.packed.layers if chosen.format is not Format.DENSE else (),
                      run.packed.runtime)
    timing = Timing(chosen.bench.threads, _latencies(run.onnx_dense, run.packed,
                                                     run.probe[:256], chosen)) \
        if chosen.bench else None
    used = run.threads
    threads = None if used is None else Threads(used.fixed, used.least, used.most, used.mean,
                                                chosen.onnx_threads, used.others, run.processes)
    report = Report(
        source=source, plan=_settings(run), size=_sizes(run), parity=parity,
        accuracy=accuracy_, latency=timing, storage=storage, threads=threads,
        layers=_layer_rows(run.dense, run.pruned_gm, run.found, run.pruned.stats,
                           run.factored),
        cycles=run.pruned.cycles, kept=run.pruned.kept, spectra=run.pruned.spectra,
        versions=versions(), seconds=round(time.perf_counter() - started, 2))
    budgets = _budgets(run, report, seen)
    return dataclasses.replace(report, budgets=budgets,
                               warnings=chosen.warnings + _warnings(report, run.layout)
                               + _off_multiples(report, chosen.prune.align))


def _sizes(run: Outcome) -> Sizes:
    """Weights, FLOPs and bytes of the input model and of the written file (FLOPs of every
    weight, zeros included, as `compress check` counts them; of the non-zero ones too, for
    single weights)."""
    single = run.plan.prune.score is Score.WEIGHTS
    w_after = weights(run.pruned_gm, run.found, nonzero=single)
    f_after = flops(run.pruned_gm, run.found)
    if run.plan.format is Format.LOWRANK:  # the file's layers are the factors
        w_after -= sum(out * inp - row.rank * (out + inp) for row in run.packed.layers
                       if row.rank is not None for out, inp in [row.shape])
        f_after = flops_per_sample(onnx.load_from_string(run.packed.data))[0]
    return Sizes(weights(run.dense, run.dense_found), w_after,
                 flops(run.dense, run.dense_found), f_after, run.onnx_dense_size,
                 len(run.packed.data),
                 flops(run.pruned_gm, run.found, nonzero=True) if single else None)


def _settings(run: Outcome) -> Settings:
    """The plan as it ran: its choices and every concrete value the stages received."""
    chosen = run.plan
    rows = tuple(PlanRow(d.option, d.shown(), d.reason, d.given) for d in chosen.decisions)
    compensation = chosen.prune.compensate.method
    if compensation is Compensation.MERGE and not all(g.mergeable for g in run.found.groups):
        rows = tuple(dataclasses.replace(r, value="merge/none") if r.option == "compensate"
                     else r for r in rows)
    config = {"prune": chosen.prune, "finetune": chosen.finetune, "factor": chosen.factor,
              "format": chosen.format, "rank_energy": chosen.rank_energy,
              "bench": chosen.bench, "batch": chosen.batch, "seed": chosen.seed}
    plain = json.loads(json.dumps(config, default=_plain))
    return Settings(chosen.prune.target, chosen.prune.of.value, chosen.prune.score.value, rows,
                    plain)


def _warnings(report: Report, layout: InputLayout) -> tuple[str, ...]:
    """What looks wrong with the inputs: an input model that scores near chance was most
    likely given data preprocessed differently from its training data."""
    chance = 1 / max(layout.classes, 1)
    if report.accuracy is None or report.accuracy.before >= 2 * chance:
        return ()
    return (f"the input model scores {100 * report.accuracy.before:.2f}% on "
            f"{report.accuracy.data}, under twice chance ({100 * chance:.1f}% for "
            f"{layout.classes} classes): is the data preprocessed as in training (--normalize "
            "MEAN,STD, --input-shape)? Calibration and fine-tuning used the same data.",)


def _off_multiples(report: Report, align: Mapping[str, int]) -> tuple[str, ...]:
    """Pruned layers whose width the plan's multiple does not divide: where no combination of
    multiples lands within the target's window, the alignment takes finer steps."""
    off = [f"{row.name} ({row.out_after})" for row in report.layers
           if row.note == "pruned" and align.get(row.name, 1) > 1
           and row.out_after % align[row.name] and row.out_after != row.out_before]
    if not off:
        return ()
    steps = sorted({align[name.rsplit(" (", 1)[0]] for name in off})
    return (f"{', '.join(off)} kept widths off the planned multiples "
            f"({' or '.join(map(str, steps))}): no combination of those lands within the "
            "target's window, so finer steps were taken; a width between two steps runs as "
            "long as the step above. --align 1 chooses exact widths; a target nearer a step "
            "keeps the multiples.",)


def _plain(value: object) -> object:
    if dataclasses.is_dataclass(value):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return dict(value)
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
                        run_onnx(session(run.packed.data), split.x), split.labels())


def _budgets(run: Outcome, report: Report, seen: _Predictions | None) -> tuple[BudgetRow, ...]:
    """The written model measured against the budgets, as `compress check` measures it; the
    reference for agreement and the baseline for latency are the input model."""
    budgets = run.plan.budgets
    if not budgets.any:
        return ()
    measured = measure_file(onnx.load_from_string(run.packed.data), len(run.packed.data), budgets)
    if report.accuracy is not None:
        measured["accuracy"] = Measured(report.accuracy.after, f"on {report.accuracy.data}")
    if budgets.min_agreement is not None:
        same = share_equal(seen.written.argmax(1), seen.dense.argmax(1))
        measured["agreement"] = Measured(same, f"top-1 vs {report.source.model} on "
                                         f"{len(seen.dense):,} held-out samples")
    for lat in report.latency.rows if report.latency else ():
        if lat.batch == run.plan.batch:
            threads = report.latency.threads
            how = f"batch {lat.batch}, {threads} thread{'s' * (threads > 1)}, onnxruntime CPU"
            measured["latency"] = Measured(lat.after_ms, how)
            measured["latency_ratio"] = Measured(
                lat.after_ms / lat.before_ms,
                f"vs the dense export ({lat.before_ms:.4f} ms), {how}")
    return evaluate(budgets, measured)


def _latencies(dense: bytes, packed: Packed, sample: torch.Tensor,
               chosen: Plan) -> tuple[Latency, ...]:
    """Dense export vs the written file in plain onnxruntime, and in compressor.runtime when
    the file has layers chosen for sparse kernels."""
    b = chosen.bench
    models: list = [dense, packed.data]
    if packed.runtime:
        models.append(SparseModel.load(packed.data, kernels="stored", threads=b.threads))
    rows = []
    for batch in b.batches:
        found = compared_ms(models, [sample] * len(models), batch=batch, threads=b.threads,
                            seconds=2 * b.seconds)
        times = found.ms
        rows.append(Latency(batch, times[0], times[1], times[2] if packed.runtime else None,
                            found.spread, found.busy))
    return tuple(rows)


def _layer_rows(dense: fx.GraphModule, gm: fx.GraphModule, found: Trace,
                stats: ActivationStats | None,
                factored: tuple[Factored, ...] = ()) -> tuple[LayerRow, ...]:
    reasons = dict(found.dense)
    group_of = {s.param: g.name for g in found.groups for s in g.weights}
    heads = {g.name for g in found.groups if "heads" in g.kinds}
    streams = {g.name for g in found.groups if g.stream}
    inner = {f.inner: f for f in factored}
    outer = {f.name: f for f in factored}
    rows = []
    for layer in found.layers:
        after = get_tensor(gm, layer.weight).shape
        before = after if layer.name in inner else get_tensor(dense, layer.weight).shape
        group = group_of.get(layer.weight)
        dead = stats.dead(layer.name) if group == layer.name and stats is not None else None
        what = "same heads" if group in heads else "residual stream" if group in streams else \
            "same channels"
        note = ("pruned heads" if group in heads else "pruned (residual stream)"
                if group in streams else "pruned") if group == layer.name else \
            f"pruned with {group} ({what})" if group else reasons.get(layer.name, "")
        if layer.name in inner:
            f = inner[layer.name]
            note = f"factor of {f.name} ({100 * f.kept_energy:.1f}% of its output variance)"
        elif layer.name in outer:
            note += f", reads {outer[layer.name].inner}'s {outer[layer.name].rank} features"
        rows.append(LayerRow(layer.name, int(before[1]), int(before[0]), int(after[1]),
                             int(after[0]), dead, note))
    return tuple(rows)
