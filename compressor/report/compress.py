"""The report: a table for people (stdout) and the same facts as JSON (beside the output)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from ..export.pack import KernelRow
from ..measure.budgets import BudgetRow
from ..prune.cycles import CycleRow
from .table import align


@dataclass(frozen=True)
class LayerRow:
    name: str
    in_before: int
    out_before: int
    in_after: int
    out_after: int
    dead: int | None  # neurons that never fired on the calibration data (prunable layers)
    note: str  # "pruned", or why the layer's outputs were left dense


@dataclass(frozen=True)
class Latency:
    batch: int
    before_ms: float  # the dense export, plain onnxruntime
    after_ms: float  # the written file, plain onnxruntime
    runtime_ms: float | None = None  # the written file in compressor.runtime (sparse kernels)

    @property
    def speedup(self) -> float:
        return self.before_ms / self.after_ms


@dataclass(frozen=True)
class ModelInput:
    """The written file's input."""

    name: str
    shape: tuple[int | str, ...]  # "batch" for the dynamic batch axis
    dtype: str  # numpy's name: float32
    also: str = ""  # other sample shapes the input model takes as well ("" if none)

    def __str__(self) -> str:
        text = f"{self.name}: {self.dtype} [{', '.join(map(str, self.shape))}]"
        if self.also:
            text += (f" (the model also takes {self.also}; --input-shape chooses one)")
        return text


@dataclass(frozen=True)
class Report:
    model: str
    model_format: str
    data: str | None
    output: str
    report: str
    target: float
    scope: str
    criterion: str
    compensate: str
    calibration_samples: int
    weights_before: int
    weights_after: int
    flops_before: int
    flops_after: int
    onnx_bytes_before: int
    onnx_bytes: int
    accuracy_before: float | None
    accuracy_after: float | None
    accuracy_data: str | None
    parity_max_abs_diff: float
    parity_samples: int
    parity_inputs: str  # "held-back" (data) or "random" (no data)
    latency_threads: int
    latency: tuple[Latency, ...]
    layers: tuple[LayerRow, ...]
    cycles: tuple[CycleRow, ...]
    plan: dict[str, dict[str, object]]
    seconds: float
    budgets: tuple[BudgetRow, ...] = ()  # per budget given (`compress --max-size ...`)
    score: str = "neurons"
    criterion_reason: str = ""  # why --criterion auto chose `criterion` (empty when given)
    alignment: str = ""  # what --align auto rounded conv channels to, and why (empty: not used)
    method: str | None = None  # how single weights were scored (score neurons-weights)
    format: str = "dense"
    format_note: str = ""  # auto: the whole-model choice and its times
    kernels: tuple[KernelRow, ...] = ()  # per weight matrix (formats other than dense)
    runtime: bool = False  # the file needs compressor.runtime for its sparse kernels
    int8_max_abs_diff: float | None = None  # max |int8 - float32 pruned| on the parity inputs
    lowrank_max_abs_diff: float | None = None  # max |low-rank factors - float32 pruned| alike
    of: str = "weights"  # what the target reduces: weights or flops
    input: ModelInput | None = None  # the written file's input
    options: dict[str, object] | None = None  # every setting used, defaults resolved
    versions: dict[str, str] | None = None  # of compressor, Python and its libraries
    warnings: tuple[str, ...] = ()  # what looks wrong (e.g. an input model near chance)
    spectra: tuple[dict[str, tuple[float, ...]], ...] = ()  # --trace-spectra: per layer, its
    #     singular values before pruning (entry 0) and after each cycle (entry n)

    @property
    def reduction(self) -> float:
        return 1 - self.weights_after / self.weights_before

    def to_json(self) -> str:
        data = asdict(self)
        data["reduction"] = round(self.reduction, 6)
        data["latency"] = [{**asdict(lat), "speedup": round(lat.speedup, 3)}
                           for lat in self.latency]
        data["kernels"] = [asdict(row) for row in self.kernels]
        data["budgets"] = [{**asdict(row), "unit": row.unit} for row in self.budgets]
        data["units"] = UNITS
        return json.dumps(data, indent=2) + "\n"


UNITS = {  # of the report's values (the JSON's "units")
    "weights": "weight entries of every Conv and Linear", "flops": "FLOPs per sample "
    "(2 x multiply-adds)", "onnx_bytes": "bytes", "accuracy": "fraction of samples",
    "latency": "ms per onnxruntime run() of a batch", "seconds": "s",
    "parity_max_abs_diff": "absolute difference of logits", "target": "fraction removed"}


def format_table(r: Report) -> str:
    """The report as aligned text."""
    lines = [f"compressed {r.model} -> {r.output}"]
    if r.input is not None:
        lines += [f"input {r.input}"]
    lines += [""]
    lines += align([("", "before", "after", "")] + _totals(r))
    lines += ["", f"parity: max |onnxruntime - pytorch| = {r.parity_max_abs_diff:.2g} on "
                  f"{r.parity_samples:,} {r.parity_inputs} inputs (float32 export)"]
    if r.int8_max_abs_diff is not None:
        lines += [f"int8: max |int8 - float32| = {r.int8_max_abs_diff:.2g} on the same inputs"]
    if r.lowrank_max_abs_diff is not None:
        lines += [f"lowrank: max |factored - float32| = {r.lowrank_max_abs_diff:.2g} on the same "
                  "inputs"]
    lines += [""] + _kernels(r)
    layer_rows = [("layer", "before", "after", "dead", "")]
    for row in r.layers:
        layer_rows.append((row.name, f"{row.in_before} -> {row.out_before}",
                           f"{row.in_after} -> {row.out_after}",
                           "-" if row.dead is None else str(row.dead), row.note))
    lines += align(layer_rows)
    if r.cycles:
        lines += [""] + _cycles(r.cycles)
    lines += ["", _summary(r)]
    lines += [f"warning: {w}" for w in r.warnings]
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _totals(r: Report) -> list[tuple[str, ...]]:
    """Weights, FLOPs, bytes, accuracy and latency, before and after."""
    target = f" (target {100 * r.target:.2f}%)"
    flops = f"{r.flops_before / r.flops_after:.1f}x fewer (2 x multiply-adds)"
    if r.of == "flops":
        flops = f"-{100 * (1 - r.flops_after / r.flops_before):.2f}%{target}, {flops}"
    rows = [
        ("weights", f"{r.weights_before:,}", f"{r.weights_after:,}",
         f"-{100 * r.reduction:.2f}%" + (target if r.of != "flops" else "")),
        ("FLOPs / sample", f"{r.flops_before:,}", f"{r.flops_after:,}", flops),
        ("ONNX bytes", f"{r.onnx_bytes_before:,}", f"{r.onnx_bytes:,}",
         f"{100 * r.onnx_bytes / r.onnx_bytes_before:.1f}% of dense"),
    ]
    if r.accuracy_before is not None:
        change = 100 * (r.accuracy_after - r.accuracy_before)
        rows.append(("accuracy", _pct(r.accuracy_before), _pct(r.accuracy_after),
                     f"{change:+.2f} pt on {r.accuracy_data}"))
    threads = f"{r.latency_threads} thread{'s' if r.latency_threads > 1 else ''}"
    for lat in r.latency:
        rows.append((f"latency batch {lat.batch}", f"{lat.before_ms:.4f} ms",
                     f"{lat.after_ms:.4f} ms",
                     f"{lat.speedup:.1f}x faster (onnxruntime CPU, {threads})"))
        if lat.runtime_ms is not None:
            speedup = lat.before_ms / lat.runtime_ms
            rows.append(("  with compressor.runtime", "", f"{lat.runtime_ms:.4f} ms",
                         f"{speedup:.1f}x faster (sparse kernels, {threads})"))
    return rows


def _kernels(r: Report) -> list[str]:
    """The format table (formats other than dense)."""
    if not r.kernels:
        return []
    lines = [f"format {r.format}" + (f": {r.format_note}" if r.format_note else "")]
    rows = [("weight", "shape", "zeros", "stored", "kernel", "why")]
    for k in r.kernels:
        rows.append((k.name, "x".join(map(str, k.shape)), f"{100 * k.sparsity:.1f}%",
                     k.storage, k.kernel, k.why))
    lines += align(rows)
    if r.runtime:
        lines += ["sparse kernels run only in compressor.runtime (SparseModel.load(path, "
                  "kernels='stored')); plain onnxruntime runs this file dense"]
    return lines + [""]


def _cycles(cycles: tuple[CycleRow, ...]) -> list[str]:
    weights = cycles[0].weights_removed is not None
    rows = [("cycle", "target", "reached") +
            (("weights", "neurons") if weights else ("removed", "dead")) + ("epochs", "val acc")]
    for c in cycles:
        removed = (f"{c.weights_removed:,}", str(c.removed)) if weights else \
            (str(c.removed), "-" if c.dead is None else str(c.dead))
        rows.append((str(c.cycle), _pct(c.target), _pct(c.reduction), *removed,
                     str(c.epochs), _pct(c.val_accuracy)))
    return align(rows)


def _summary(r: Report) -> str:
    removed = sum(c.removed for c in r.cycles)
    merged = sum(c.merged for c in r.cycles)
    seconds = sum(c.compensate_seconds for c in r.cycles)
    how = f"compensation {r.compensate}"
    if r.compensate == "merge":
        how += f" ({merged} of {removed} removed neurons merged)"
    how += f" in {seconds:.2f} s"
    data = "no calibration data (data-free)" if r.data is None else \
        f"{r.calibration_samples:,} calibration samples of {r.data}"
    chose = f" (auto: {r.criterion_reason})" if r.criterion_reason else ""
    what = f"criterion {r.criterion}{chose}, {how}" if r.method is None else \
        f"single weights by {r.method}" + (" (count x |w|)" if r.method == "activation" else "")
    aligned = f", {r.alignment}" if r.alignment else ""
    return (f"{r.scope} scope, {what}{aligned}, {data}; took {r.seconds:.1f} s; "
            f"report: {r.report}")
