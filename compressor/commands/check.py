"""`compress check`: measure an ONNX model against budgets (size, parameters, FLOPs,
accuracy, agreement with a reference, latency) and say which hold."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError, UsageError
from ..graph.capture import run_batched
from ..io.data import Dataset
from ..io.files import check_output, write_atomic
from ..io.inputs import check_labels, find_input_layout, program_shape
from ..io.load import load_model
from ..io.sources import load_eval_data
from ..io.stream import apply
from ..measure.budgets import Budgets, Measured, evaluate, measure_file, share_equal
from ..measure.latency import latencies_ms
from ..measure.onnx_file import OnnxModel, fit_input, load_onnx, predictions, random_input
from ..report.check import CheckResult

LATENCY_SAMPLES = 256


@dataclass(frozen=True)
class CheckConfig:
    """What `compress check` measures: the budgets, and how latency is timed."""

    budgets: Budgets
    batch: int = 1
    threads: int = 1
    seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.batch < 1 or self.threads < 1 or not self.seconds > 0:
            raise ValueError("batch and threads must be >= 1 and seconds > 0")



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
            same = share_equal(predicted, _reference_predictions(inputs, data.x, about))
            measured["agreement"] = Measured(same, f"top-1 vs {inputs.reference} on {about}")
    if budgets.needs_latency:
        measured.update(_latency(model, inputs, data, about, config))
    result = CheckResult(str(inputs.model), evaluate(budgets, measured))
    if junit:
        write_atomic({junit: result.to_junit()})
    return result


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
    labels = data.labels()
    check_labels(labels, classes, source=about)
    return share_equal(predicted, labels)


def _reference_predictions(inputs: CheckInputs, x: torch.Tensor, about: str) -> torch.Tensor:
    path = Path(inputs.reference)
    if path.suffix.lower() == ".onnx":
        reference = load_onnx(path, what="--reference")
        return predictions(reference, fit_input(reference, x, source=about))[0]
    loaded = load_model(path, arch=inputs.arch, trust_pickle=inputs.trust_pickle)
    layout = find_input_layout(loaded, x, shape=program_shape(loaded))
    return run_batched(loaded.run, apply(x, layout.reshape)).argmax(1)


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
