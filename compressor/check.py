"""`compress check`: measure an ONNX model against budgets (size, parameters, FLOPs,
accuracy, agreement with a reference, latency) and say which hold, for people (a table),
programs (JSON) and CI systems (JUnit XML)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import onnx
import torch

from .bench import latencies_ms
from .config import Budgets, CheckConfig
from .data import Dataset, load_eval_data
from .errors import CompressorError, DataError
from .files import check_output, write_atomic
from .load import find_input_layout, load_model, output_tensor
from .measure import (OnnxModel, fit_input, flops_per_sample, load_onnx, parameter_count,
                      predictions, random_input)

LATENCY_SAMPLES = 256


class UsageError(CompressorError):
    """Options that do not fit together."""


@dataclass(frozen=True)
class Measured:
    """One measured value and what it was measured on."""

    value: float
    detail: str = ""


@dataclass(frozen=True)
class BudgetRow:
    """One budget: the measured value, the limit, and whether it holds."""

    name: str  # size, parameters, flops, accuracy, agreement, latency, latency_ratio
    value: float
    limit: float
    passed: bool
    detail: str

    @property
    def comparison(self) -> str:
        kind, fmt = _SPECS[self.name][1:]
        op = "<=" if kind == "max" else ">="
        return f"{fmt(self.value)} {op if self.passed else _BROKEN[op]} {fmt(self.limit)}"


@dataclass(frozen=True)
class CheckResult:
    """Every budget's row for one model."""

    model: str
    rows: tuple[BudgetRow, ...]

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    @property
    def broken(self) -> tuple[BudgetRow, ...]:
        return tuple(row for row in self.rows if not row.passed)

    def to_json(self) -> str:
        rows = [{**asdict(row), "comparison": row.comparison} for row in self.rows]
        return json.dumps({"model": self.model, "passed": self.passed, "budgets": rows},
                          indent=2) + "\n"

    def to_junit(self) -> bytes:
        """A JUnit XML report: one test case per budget, a <failure> for each broken one."""
        suite = ET.Element("testsuite", name="compress check", tests=str(len(self.rows)),
                           failures=str(len(self.broken)), errors="0")
        for row in self.rows:
            case = ET.SubElement(suite, "testcase", name=row.name, time="0",
                                 classname=f"compress.check.{Path(self.model).name}")
            ET.SubElement(case, "system-out").text = f"{row.comparison}; {row.detail}".rstrip("; ")
            if not row.passed:
                ET.SubElement(case, "failure", message=f"{row.name}: {row.comparison}",
                              type="budget").text = row.detail
        root = ET.Element("testsuites", tests=str(len(self.rows)), failures=str(len(self.broken)))
        root.append(suite)
        ET.indent(root)
        return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


# budget name -> (Budgets field, max or min, how values print)
_SPECS: dict[str, tuple[str, str, Callable[[float], str]]] = {
    "size": ("max_size", "max", lambda v: f"{int(v):,} B"),
    "parameters": ("max_params", "max", lambda v: f"{int(v):,}"),
    "flops": ("max_flops", "max", lambda v: f"{int(v):,}"),
    "accuracy": ("min_accuracy", "min", _pct),
    "agreement": ("min_agreement", "min", _pct),
    "latency": ("max_latency_ms", "max", lambda v: f"{v:.4f} ms"),
    "latency_ratio": ("max_latency_ratio", "max", lambda v: f"{v:.3f}x"),
}
_BROKEN = {"<=": ">", ">=": "<"}


def evaluate(budgets: Budgets, measured: dict[str, Measured]) -> tuple[BudgetRow, ...]:
    """A row for every budget that is set, in a fixed order; `measured` must hold each."""
    rows = []
    for name, (field, kind, _) in _SPECS.items():
        limit = getattr(budgets, field)
        if limit is None:
            continue
        m = measured[name]
        passed = m.value <= limit if kind == "max" else m.value >= limit
        rows.append(BudgetRow(name, m.value, limit, bool(passed), m.detail))
    return tuple(rows)


def format_check(result: CheckResult) -> str:
    """The rows as an aligned table with a verdict line."""
    rows = [("budget", "value", "limit", "result", "")]
    for row in result.rows:
        fmt = _SPECS[row.name][2]
        op = "<=" if _SPECS[row.name][1] == "max" else ">="
        rows.append((row.name, fmt(row.value), f"{op} {fmt(row.limit)}",
                     "pass" if row.passed else "FAIL", row.detail))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:4], widths[1:])),
                        r[4]]).rstrip() for r in rows]
    n = len(result.broken)
    verdict = (f"all {len(result.rows)} budgets hold" if n == 0 else
               f"{n} of {len(result.rows)} budget{'s' if len(result.rows) > 1 else ''} broken: "
               + ", ".join(r.name for r in result.broken))
    return "\n".join([f"check {result.model}", "", *lines, "", verdict])


@dataclass(frozen=True)
class CheckInputs:
    """The files `compress check` reads and writes.

    Args:
        model: the ONNX model to check.
        data: `fashion-mnist` (its test set) or a data file (every sample), for accuracy,
            agreement and latency.
        reference: ONNX or PyTorch model the top-1 agreement is measured against.
        baseline: ONNX model the latency ratio is measured against.
        arch: builds a state_dict `reference` (`module:callable`).
        trust_pickle: allow a whole pickled module as `reference`.
        junit: where to write the JUnit XML report.
    """

    model: Path
    data: str | None = None
    reference: Path | None = None
    baseline: Path | None = None
    arch: str | None = None
    trust_pickle: bool = False
    junit: Path | None = None


def check(inputs: CheckInputs, config: CheckConfig) -> CheckResult:
    """Measure `inputs.model` against `config.budgets` (and write the JUnit file if asked).

    Returns:
        One row per budget; the caller decides the exit code from `result.passed`.
    """
    budgets = config.budgets
    _check_options(inputs, budgets)
    junit = inputs.junit and check_output(inputs.junit, inputs=_sources(inputs), option="--junit")
    model = load_onnx(inputs.model)
    measured = measure_file(model.proto, len(model), budgets)
    data, about = load_eval_data(inputs.data) if inputs.data else (None, "")
    if data is not None and (budgets.min_accuracy is not None or budgets.min_agreement is not None):
        x = fit_input(model, data.x, source=about)
        predicted, classes = predictions(model, x)
        if budgets.min_accuracy is not None:
            measured["accuracy"] = Measured(_accuracy(predicted, classes, data, about),
                                            f"on {about}")
        if budgets.min_agreement is not None:
            same = (predicted == _reference_predictions(inputs, data.x, about)).double().mean()
            measured["agreement"] = Measured(float(same), f"top-1 vs {inputs.reference} on {about}")
    if budgets.needs_latency:
        measured.update(_latency(model, inputs, data, about, config))
    result = CheckResult(str(inputs.model), evaluate(budgets, measured))
    if junit:
        write_atomic({junit: result.to_junit()})
    return result


def measure_file(proto: onnx.ModelProto, size: int, budgets: Budgets) -> dict[str, Measured]:
    """Size, and the parameters and FLOPs when their budgets are set."""
    measured = {"size": Measured(size, "bytes on disk")}
    if budgets.max_params is not None:
        measured["parameters"] = Measured(parameter_count(proto), "stored values")
    if budgets.max_flops is not None:
        flops, uncounted = flops_per_sample(proto)
        note = f"; not counted: {', '.join(uncounted)}" if uncounted else ""
        measured["flops"] = Measured(flops, f"per sample, 2 x non-zero weights{note}")
    return measured


def _check_options(inputs: CheckInputs, budgets: Budgets) -> None:
    if not budgets.any:
        raise UsageError("no budget given: pass at least one of --max-size, --max-params, "
                         "--max-flops, --min-accuracy, --min-agreement, --max-latency, "
                         "--max-latency-ratio")
    pairs = [(budgets.min_accuracy, "--min-accuracy", inputs.data,
              "labelled --data (fashion-mnist, or a .npz/.pt file with y)"),
             (budgets.min_agreement, "--min-agreement", inputs.reference,
              "--reference REF.onnx|REF.pt, the model to agree with"),
             (budgets.min_agreement, "--min-agreement", inputs.data,
              "--data, the inputs to compare predictions on"),
             (budgets.max_latency_ratio, "--max-latency-ratio", inputs.baseline,
              "--baseline BASE.onnx, the model to compare with")]
    for budget, name, given, needed in pairs:
        if budget is not None and given is None:
            raise UsageError(f"{name} needs {needed}")
    unused = [("--reference", inputs.reference, budgets.min_agreement, "--min-agreement"),
              ("--baseline", inputs.baseline, budgets.max_latency_ratio, "--max-latency-ratio"),
              ("--arch", inputs.arch, inputs.reference, "a state_dict --reference")]
    for name, given, needed, what in unused:
        if given is not None and needed is None:
            raise UsageError(f"{name} is only used with {what}: add it or drop {name}")


def _sources(inputs: CheckInputs) -> tuple[Path, ...]:
    found = [inputs.model, inputs.reference, inputs.baseline]
    if inputs.data not in (None, "fashion-mnist"):
        found.append(Path(inputs.data))
    return tuple(Path(p) for p in found if p is not None)


def _accuracy(predicted: torch.Tensor, classes: int, data: Dataset, about: str) -> float:
    if data.y is None:
        raise DataError(f"--min-accuracy needs labels, and {about} has none: give a .npz with "
                        "x and y, a .pt dict with 'y', or --data fashion-mnist")
    if int(data.y.max()) >= classes:
        raise DataError(f"{about}: labels go up to {int(data.y.max())} but the model has "
                        f"{classes} outputs: give labels 0..{classes - 1}")
    return float((predicted == data.y).double().mean())


def _reference_predictions(inputs: CheckInputs, x: torch.Tensor, about: str) -> torch.Tensor:
    path = Path(inputs.reference)
    if path.suffix.lower() == ".onnx":
        reference = load_onnx(path, what="--reference")
        return predictions(reference, fit_input(reference, x, source=about))[0]
    loaded = load_model(path, arch=inputs.arch, trust_pickle=inputs.trust_pickle)
    layout, _ = find_input_layout(loaded, x)
    with torch.no_grad():
        return torch.cat([output_tensor(loaded.run(layout(x[i:i + 1024]))).argmax(1)
                          for i in range(0, x.shape[0], 1024)])


def _latency(model: OnnxModel, inputs: CheckInputs, data: Dataset | None, about: str,
             config: CheckConfig) -> dict[str, Measured]:
    raw = None if data is None else data.x[:LATENCY_SAMPLES]
    models = [model]
    if inputs.baseline is not None:
        models.append(load_onnx(inputs.baseline, what="--baseline"))
    samples = [random_input(m, LATENCY_SAMPLES) if raw is None else
               fit_input(m, raw, source=about) for m in models]
    times = latencies_ms([m.data for m in models], samples, batch=config.batch,
                         threads=config.threads, seconds=config.seconds * len(models))
    how = (f"batch {config.batch}, {config.threads} thread{'s' if config.threads > 1 else ''}, "
           f"onnxruntime CPU, {'inputs from ' + about if raw is not None else 'random inputs'}")
    found = {"latency": Measured(times[0], how)}
    if len(times) == 2:
        found["latency_ratio"] = Measured(times[0] / times[1], f"vs {inputs.baseline} "
                                          f"({times[1]:.4f} ms), {how}")
    return found
