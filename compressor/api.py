"""The Python API: `compress` an in-memory model inside your own code, `check` an ONNX file.

    import compressor
    result = compressor.compress(model, target=0.85, data=(x, y))
    result.model          # the pruned nn.Module (a torch.fx GraphModule)
    result.report         # what changed: weights, FLOPs, accuracy, latency, layers
    result.save_onnx("model.onnx")

The command line runs the same pipeline (`compressor.commands`) from files.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .commands.check import CheckConfig, CheckInputs
from .commands.check import check as check_file
from .commands.compress import prepared, run
from .commands.summary import summarize
from .errors import UsageError
from .io import ranks
from .io.data import DataSplits, split
from .io.files import write_atomic
from .io.inputs import fit_data, random_inputs
from .io.load import LoadedModel, ModelFormat
from .io.sources import as_dataset, load_data
from .measure.budgets import Budgets
from .plan import Options
from .plan import check as check_plan
from .report.check import CheckResult
from .report.compress import Report

Data = Any  # tensors, (x, y), a Dataset, a DataLoader, batches, "fashion-mnist", a data file
# path or "module:callable"


@dataclass(frozen=True)
class Result:
    """What `compress` made: the pruned model, its verified ONNX file, and the report."""

    model: nn.Module  # the pruned model (a torch.fx GraphModule; BatchNorm folded)
    onnx: bytes | None  # the verified ONNX file in the chosen format
    report: Report | None  # onnx and report: None on ranks other than 0 of a process group

    def save_onnx(self, path: str | Path) -> Path:
        """Write the ONNX file (atomically) and return its path."""
        path = Path(path)
        write_atomic({path: self.onnx})
        return path

    def save_report(self, path: str | Path) -> Path:
        """Write the JSON report (atomically) and return its path."""
        path = Path(path)
        write_atomic({path: self.report.to_json().encode()})
        return path


def compress(model: nn.Module | torch.export.ExportedProgram, target: float, *,
             data: Data = None, logits: int | str | None = None, log=None,
             **options: Any) -> Result:
    """Prune `model` to `target` fewer weights (or FLOPs, `of="flops"`), export it to ONNX,
    verify the file in onnxruntime and measure it. The input model is not modified.

    Args:
        model: an `nn.Module` (put in eval mode on a copy) or a `torch.export` program.
        target: the fraction to remove, 0 < target < 1.
        data: calibration data: a tensor of inputs, a tuple `(x, y)` with integer labels, a
            `torch.utils.data.Dataset` or `DataLoader` yielding `x` or `(x, y)`,
            `"fashion-mnist"`, or a data file path. Given data is split 80/10/10 into train,
            validation and test (90/10 without labels) with `seed`; labels enable
            fine-tuning and accuracy. None: data-free (needs `input_shape` for CNNs).
        logits: for a model that returns a tuple or dict, which entry are the logits.
        log: called with one line per stage (e.g. `print`); None for silence.
        **options: the command's options by their names (`compressor.plan.Options`: of,
            criterion, compensate, scope, cycles, epochs, align, factor, format, input_shape,
            latency, seed, ...); what is not given is decided by `compressor.plan.plan`.

    Returns:
        The pruned model, the ONNX file and the report.

    Called in every process of an initialised torch.distributed group, calibration and
    fine-tuning are shared between them (see `compressor.io.ranks`); rank 0 logs, exports and
    measures, the others return the same pruned model with `onnx` and `report` None.
    """
    started = time.perf_counter()
    log = (log if ranks.lead() else None) or (lambda _: None)
    chosen = _options(target, options)
    name = f"<{type(model).__name__}>"
    loaded = prepared(_loaded(model, name), logits=None if logits is None else str(logits))
    about = data if isinstance(data, str) else None if data is None else "data"
    check_plan(chosen, data=data is not None)
    seed = chosen.value("seed")
    torch.manual_seed(seed)
    if data is None:
        probe, layout = random_inputs(loaded, seed=seed, shape=chosen.input_shape)
        splits = None
    else:
        splits, layout = fit_data(loaded, _splits(data, seed=seed), shape=chosen.input_shape)
        probe = splits.validation.x
    outcome = run(loaded, splits, probe, layout, chosen, name=name, log=log)
    if outcome.packed is None:  # a process other than rank 0 of a torch.distributed group
        return Result(outcome.pruned_gm.eval(), None, None)
    report = summarize(outcome, model=name, data=about, output="", report_path="",
                       started=started)
    return Result(outcome.pruned_gm.eval(), outcome.packed.data, report)


def check(model: str | Path, *, data: str | None = None, reference: str | Path | None = None,
          baseline: str | Path | None = None, batch: int = 1, threads: int = 1,
          seconds: float = 1.0, **budgets: Any) -> CheckResult:
    """Measure an ONNX file against budgets, as `compress check` does.

    Args:
        model: the ONNX file.
        data: `fashion-mnist` or a data file, for accuracy, agreement and latency.
        reference: ONNX or PyTorch model the top-1 agreement is measured against.
        baseline: ONNX model the latency ratio is measured against.
        batch, threads, seconds: how latency is timed.
        **budgets: any of max_size (bytes), max_params, max_flops, min_accuracy,
            min_agreement (fractions), max_latency (ms), max_latency_ratio.

    Returns:
        One row per budget; `result.passed` says whether all hold.
    """
    unknown = set(budgets) - {f.name for f in dataclasses.fields(Budgets)}
    if unknown:
        raise UsageError(f"unknown budget {', '.join(sorted(unknown))}: use "
                         f"{', '.join(f.name for f in dataclasses.fields(Budgets))}")
    inputs = CheckInputs(Path(model), data, reference and Path(reference),
                         baseline and Path(baseline))
    return check_file(inputs, CheckConfig(Budgets(**budgets), batch, threads, seconds))


def _options(target: float, options: dict[str, Any]) -> Options:
    """The keyword options as `Options`; an unknown name is refused with the known ones."""
    known = set(Options.names()) - {"target", "normalize", "budgets"}
    unknown = set(options) - known
    if unknown:
        raise UsageError(f"unknown option {', '.join(sorted(unknown))}: compress takes "
                         f"{', '.join(sorted(known))}")
    return Options(target=target, **options)


def _loaded(model: nn.Module | torch.export.ExportedProgram, name: str) -> LoadedModel:
    """The model as the pipeline takes it; a module is copied, never changed."""
    if isinstance(model, torch.export.ExportedProgram):
        loaded = LoadedModel(Path(name), ModelFormat.EXPORTED_PROGRAM, model.module(), model)
    elif isinstance(model, nn.Module):
        loaded = LoadedModel(Path(name), ModelFormat.PICKLED_MODULE,
                             copy.deepcopy(model).eval())
    else:
        raise UsageError(f"compress takes an nn.Module or a torch.export program, not "
                         f"{type(model).__name__}")
    return loaded


def _splits(data: Data, *, seed: int) -> DataSplits:
    """Any supported form of data, split into train, validation and test."""
    if isinstance(data, (str, Path)):
        return load_data(str(data), seed=seed)
    return split(as_dataset(data, source="data"), name="data", seed=seed)


