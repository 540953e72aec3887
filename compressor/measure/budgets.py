"""Budgets: limits a model file must meet, each measured value against its limit, and the
measurements `compress` and `compress check` share."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable

import onnx
import torch

from .onnx_file import flops_per_sample, parameter_count


@dataclass(frozen=True)
class Budgets:
    """Limits a compressed model must meet (None = not checked).

    Args:
        max_size: file size in bytes.
        max_params: stored parameters (all floating-point and 8-bit initializer entries).
        max_flops: FLOPs per sample (2 x weights of MatMul/Gemm/Conv x positions).
        min_accuracy: top-1 accuracy on labelled data, 0..1.
        min_agreement: share of samples whose top-1 class equals the reference model's, 0..1.
        max_latency_ms: onnxruntime latency of one run() at the checked batch size.
        max_latency_ratio: that latency divided by the baseline model's.
    """

    max_size: int | None = None
    max_params: int | None = None
    max_flops: int | None = None
    min_accuracy: float | None = None
    min_agreement: float | None = None
    max_latency_ms: float | None = None
    max_latency_ratio: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_size", "max_params", "max_flops"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 0):
                raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
        for name in ("min_accuracy", "min_agreement"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        for name in ("max_latency_ms", "max_latency_ratio"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, got {value!r}")

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    @property
    def needs_latency(self) -> bool:
        return self.max_latency_ms is not None or self.max_latency_ratio is not None


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
    def unit(self) -> str:
        """What `value` and `limit` are measured in."""
        return UNITS[self.name]

    @property
    def comparison(self) -> str:
        kind, fmt = SPECS[self.name][1:]
        op = "<=" if kind == "max" else ">="
        return f"{fmt(self.value)} {op if self.passed else _BROKEN[op]} {fmt(self.limit)}"


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


# budget name -> (Budgets field, max or min, how values print)
SPECS: dict[str, tuple[str, str, Callable[[float], str]]] = {
    "size": ("max_size", "max", lambda v: f"{int(v):,} B"),
    "parameters": ("max_params", "max", lambda v: f"{int(v):,}"),
    "flops": ("max_flops", "max", lambda v: f"{int(v):,}"),
    "accuracy": ("min_accuracy", "min", _pct),
    "agreement": ("min_agreement", "min", _pct),
    "latency": ("max_latency_ms", "max", lambda v: f"{v:.4f} ms"),
    "latency_ratio": ("max_latency_ratio", "max", lambda v: f"{v:.3f}x"),
}
UNITS = {"size": "bytes", "parameters": "count", "flops": "FLOPs per sample",
         "accuracy": "fraction", "agreement": "fraction", "latency": "ms",
         "latency_ratio": "ratio"}
_BROKEN = {"<=": ">", ">=": "<"}


def evaluate(budgets: Budgets, measured: dict[str, Measured]) -> tuple[BudgetRow, ...]:
    """A row for every budget that is set, in a fixed order; `measured` must hold each."""
    rows = []
    for name, (field, kind, _) in SPECS.items():
        limit = getattr(budgets, field)
        if limit is None:
            continue
        m = measured[name]
        passed = m.value <= limit if kind == "max" else m.value >= limit
        rows.append(BudgetRow(name, m.value, limit, bool(passed), m.detail))
    return tuple(rows)


def measure_file(proto: onnx.ModelProto, size: int, budgets: Budgets) -> dict[str, Measured]:
    """Size, and the parameters and FLOPs when their budgets are set."""
    measured = {"size": Measured(size, "bytes on disk")}
    if budgets.max_params is not None:
        measured["parameters"] = Measured(parameter_count(proto), "stored values")
    if budgets.max_flops is not None:
        flops, uncounted = flops_per_sample(proto)
        note = f"; not counted: {', '.join(uncounted)}" if uncounted else ""
        measured["flops"] = Measured(flops, f"per sample, 2 x weights{note}")
    return measured




def share_equal(predicted: torch.Tensor, reference: torch.Tensor) -> float:
    """Share of samples whose top-1 class equals the reference's (labels for accuracy, another
    model's classes for agreement)."""
    return float((predicted == reference).double().mean())
