"""The report of one `compress` run, in sections: a table for people (stdout) and the same facts
as JSON (beside the output)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from ..export.pack import KernelRow
from ..measure.budgets import BudgetRow
from ..prune.cycles import CycleRow
from .table import align


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
class Source:
    """What was compressed, with what data, and where the results went."""

    model: str
    model_format: str
    data: str | None
    output: str
    report: str
    input: ModelInput | None = None
    calibration_samples: int = 0  # samples the units were counted on
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # means, deviations


@dataclass(frozen=True)
class PlanRow:
    """One choice of the run's plan: the option, the value used, and why."""

    option: str
    value: str
    reason: str
    given: bool


@dataclass(frozen=True)
class Settings:
    """The plan the run followed: its choices with their reasons, and every concrete value the
    stages received (`config`)."""

    target: float
    of: str  # what the target reduces: weights or flops
    score: str  # whole units ("neurons") or single weights ("neurons-weights")
    choices: tuple[PlanRow, ...] = ()
    config: dict[str, object] | None = None


@dataclass(frozen=True)
class Sizes:
    weights_before: int
    weights_after: int
    flops_before: int
    flops_after: int
    onnx_bytes_before: int
    onnx_bytes: int
    nonzero_flops_after: int | None = None  # single weights: of the non-zero weights only

    @property
    def reduction(self) -> float:
        return 1 - self.weights_after / self.weights_before

    @property
    def flop_reduction(self) -> float:
        return 1 - self.flops_after / self.flops_before


@dataclass(frozen=True)
class Accuracy:
    before: float
    after: float
    data: str  # which samples, and how many


@dataclass(frozen=True)
class Parity:
    """How closely the written file computes what the pruned PyTorch model computes."""

    max_abs_diff: float  # float32 export vs PyTorch
    samples: int
    inputs: str  # "held-back" (data) or "random" (no data)
    int8_max_abs_diff: float | None = None  # int8 file vs the float32 export
    lowrank_max_abs_diff: float | None = None  # low-rank file vs the float32 export
    max_abs_output: float | None = None  # the PyTorch outputs' largest size (tolerance scale)
    # max |PyTorch float32 - float64|, given where max_abs_diff exceeds the tolerance and the
    # file was accepted because PyTorch's own float32 misses the exact result by as much
    float32_rounding: float | None = None


@dataclass(frozen=True)
class Latency:
    batch: int
    before_ms: float  # the dense export, plain onnxruntime
    after_ms: float  # the written file, plain onnxruntime
    runtime_ms: float | None = None  # the written file in compressor.runtime (sparse kernels)
    spread: float = 0.0  # (max - min) / median of the speedups the timing rounds measured
    busy: bool = False  # other work made the rounds disagree: the speedup is not trusted

    @property
    def speedup(self) -> float:
        return self.before_ms / self.after_ms


@dataclass(frozen=True)
class Timing:
    threads: int
    rows: tuple[Latency, ...]


@dataclass(frozen=True)
class Threads:
    """The threads the run used: torch's (fixed, or following the cores other work left free:
    the least, the most and their time-weighted mean; the most cores other work held at one
    look) and onnxruntime's (latency and kernel choices)."""

    torch_fixed: bool
    torch_least: int
    torch_most: int
    torch_mean: float
    onnxruntime: int
    others: float | None = None
    processes: int = 1  # calibrating and fine-tuning together (torchrun), each with these threads

    def __str__(self) -> str:
        if self.torch_fixed:
            torch_part = f"torch {self.torch_most}"
        else:
            used = f"{self.torch_least}" if self.torch_least == self.torch_most else \
                f"{self.torch_least}-{self.torch_most}, mean {self.torch_mean:g}"
            held = "" if self.others is None else \
                f"; other work held up to {self.others:.2f} cores"
            torch_part = f"torch {used} (following the free cores{held})"
        shared = f" in each of {self.processes} processes" if self.processes > 1 else ""
        return f"threads: {torch_part}{shared}, onnxruntime {self.onnxruntime}"


@dataclass(frozen=True)
class Storage:
    """How the written file stores its weights."""

    format: str = "dense"
    note: str = ""  # auto: the whole-model choice and its times
    kernels: tuple[KernelRow, ...] = ()  # per weight matrix (formats other than dense)
    runtime: bool = False  # the file needs compressor.runtime for its sparse kernels


@dataclass(frozen=True)
class LayerRow:
    name: str
    in_before: int
    out_before: int
    in_after: int
    out_after: int
    dead: int | None  # neurons that never fired on the calibration data (prunable layers)
    note: str  # "pruned", "pruned heads", "pruned with <group> (...)", or why left dense


@dataclass(frozen=True)
class Report:
    source: Source
    plan: Settings
    size: Sizes
    parity: Parity
    accuracy: Accuracy | None = None
    latency: Timing | None = None
    storage: Storage = Storage()
    threads: Threads | None = None
    layers: tuple[LayerRow, ...] = ()
    cycles: tuple[CycleRow, ...] = ()
    kept: dict[str, dict[str, object]] | None = None  # per group: its size, the units kept
    spectra: tuple[dict[str, tuple[float, ...]], ...] = ()  # trace_spectra: per layer, its
    #     singular values before pruning (entry 0) and after each cycle (entry n)
    budgets: tuple[BudgetRow, ...] = ()  # per budget given (`compress --max-size ...`)
    warnings: tuple[str, ...] = ()  # options that did nothing; what looks wrong
    versions: dict[str, str] | None = None  # of compressor, Python and its libraries
    seconds: float = 0.0

    @property
    def reduction(self) -> float:
        return self.size.reduction

    def to_json(self) -> str:
        data = asdict(self)
        data["plan"]["choices"] = {c.option: {"value": c.value, "reason": c.reason,
                                              "given": c.given} for c in self.plan.choices}
        data["size"]["reduction"] = round(self.size.reduction, 6)
        data["size"]["flop_reduction"] = round(self.size.flop_reduction, 6)
        if self.latency is not None:
            data["latency"]["rows"] = [{**asdict(lat), "speedup": round(lat.speedup, 3)}
                                       for lat in self.latency.rows]
        data["budgets"] = [{**asdict(row), "unit": row.unit} for row in self.budgets]
        data["units"] = UNITS
        return json.dumps(data, indent=2) + "\n"


UNITS = {  # of the report's values (the JSON's "units")
    "weights": "weight entries of every Conv and Linear", "flops": "FLOPs per sample "
    "(2 x multiply-adds)", "onnx_bytes": "bytes", "accuracy": "fraction of samples",
    "latency": "ms per onnxruntime run() of a batch", "seconds": "s",
    "parity": "absolute difference of logits", "target": "fraction removed"}


def format_table(r: Report) -> str:
    """The report as aligned text."""
    lines = [f"compressed {r.source.model} -> {r.source.output}"]
    if r.source.input is not None:
        lines += [f"input {r.source.input}"]
    lines += [""] + align([("", "before", "after", "")] + _totals(r))
    p = r.parity
    scale = "" if p.max_abs_output is None or p.max_abs_output <= 1 else \
        f"; outputs up to {p.max_abs_output:.2g}, {p.max_abs_diff / p.max_abs_output:.1g} of that"
    lines += ["", f"parity: max |onnxruntime - pytorch| = {p.max_abs_diff:.2g} on "
                  f"{p.samples:,} {p.inputs} inputs (float32 export{scale})"]
    if p.float32_rounding is not None:
        lines += [f"  above the tolerance: the pruned model is sensitive to rounding (max "
                  f"|pytorch float32 - float64| = {p.float32_rounding:.2g})"]
    if p.int8_max_abs_diff is not None:
        lines += [f"int8: max |int8 - float32| = {p.int8_max_abs_diff:.2g} on the same inputs"]
    if p.lowrank_max_abs_diff is not None:
        lines += [f"lowrank: max |factored - float32| = {p.lowrank_max_abs_diff:.2g} on the "
                  "same inputs"]
    if r.threads is not None:
        lines += [str(r.threads)]
    lines += [""] + _kernels(r.storage)
    layer_rows = [("layer", "before", "after", "dead", "")]
    for row in r.layers:
        layer_rows.append((row.name, f"{row.in_before} -> {row.out_before}",
                           f"{row.in_after} -> {row.out_after}",
                           "-" if row.dead is None else str(row.dead), row.note))
    lines += align(layer_rows)
    if r.cycles:
        lines += [""] + _cycles(r.cycles)
    lines += ["", *_plan(r)]
    lines += [f"warning: {w}" for w in r.warnings]
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _totals(r: Report) -> list[tuple[str, ...]]:
    """Weights, FLOPs, bytes, accuracy and latency, before and after."""
    s = r.size
    target = f" (target {100 * r.plan.target:.2f}%)"
    flops = f"{s.flops_before / s.flops_after:.1f}x fewer (2 x multiply-adds)"
    if s.nonzero_flops_after is not None:
        flops += f"; {s.nonzero_flops_after:,} of non-zero weights (sparse kernels)"
    if r.plan.of == "flops":
        flops = f"-{100 * s.flop_reduction:.2f}%{target}, {flops}"
    rows = [
        ("weights", f"{s.weights_before:,}", f"{s.weights_after:,}",
         f"-{100 * s.reduction:.2f}%" + (target if r.plan.of != "flops" else "")),
        ("FLOPs / sample", f"{s.flops_before:,}", f"{s.flops_after:,}", flops),
        ("ONNX bytes", f"{s.onnx_bytes_before:,}", f"{s.onnx_bytes:,}",
         f"{100 * s.onnx_bytes / s.onnx_bytes_before:.1f}% of dense"),
    ]
    if r.accuracy is not None:
        a = r.accuracy
        rows.append(("accuracy", _pct(a.before), _pct(a.after),
                     f"{100 * (a.after - a.before):+.2f} pt on {a.data}"))
    if r.latency is not None:
        n = r.latency.threads
        threads = f"{n} thread{'s' if n > 1 else ''}"
        for lat in r.latency.rows:
            trust = f", rounds ±{100 * lat.spread / 2:.0f}%" + (
                ": the machine was busy, not trusted" if lat.busy else "")
            rows.append((f"latency batch {lat.batch}", f"{lat.before_ms:.4f} ms",
                         f"{lat.after_ms:.4f} ms",
                         f"{lat.speedup:.1f}x faster (onnxruntime CPU, {threads}{trust})"))
            if lat.runtime_ms is not None:
                rows.append(("  with compressor.runtime", "", f"{lat.runtime_ms:.4f} ms",
                             f"{lat.before_ms / lat.runtime_ms:.1f}x faster (sparse kernels, "
                             f"{threads})"))
    return rows


def _kernels(storage: Storage) -> list[str]:
    """The format table (formats other than dense)."""
    if not storage.kernels:
        return []
    lines = [f"format {storage.format}" + (f": {storage.note}" if storage.note else "")]
    rows = [("weight", "shape", "zeros", "stored", "kernel", "why")]
    for k in storage.kernels:
        rows.append((k.name, "x".join(map(str, k.shape)), f"{100 * k.sparsity:.1f}%",
                     k.storage, k.kernel, k.why))
    lines += align(rows)
    if storage.runtime:
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


def _plan(r: Report) -> list[str]:
    """The plan's choices with their reasons, then how the run went."""
    rows = [("plan", "", "")] + [(f"  {c.option}", c.value, "given" if c.given else c.reason)
                                 for c in r.plan.choices]
    removed = sum(c.removed for c in r.cycles)
    merged = sum(c.merged for c in r.cycles)
    seconds = sum(c.compensate_seconds for c in r.cycles)
    data = "no calibration data (data-free)" if r.source.data is None else \
        f"{r.source.calibration_samples:,} calibration samples of {r.source.data}"
    done = f"{merged} of {removed} removed units merged, " if merged else ""
    return align(rows) + [f"{data}; {done}compensation took {seconds:.2f} s; took "
                          f"{r.seconds:.1f} s; report: {r.source.report}"]
