"""`--plots DIR`: the report as PNG pictures (matplotlib, the `plots` extra), rendered in memory
so that they are written with the other outputs or not at all."""

from __future__ import annotations

import io
import math
from typing import Mapping, Sequence

from ..errors import UsageError
from .bench import BenchResult
from .compress import Report

DPI = 110


def compress_plots(report: Report, rates: Mapping[str, Sequence[float]]) -> dict[str, bytes]:
    """PNGs of one `compress` run, by file name: per-layer widths before and after, the
    firing-rate histogram of every pruned group (with calibration data), and validation
    accuracy across the cycles (with fine-tuning)."""
    plt = _pyplot()
    out = {"widths.png": _widths(plt, report)}
    if rates:
        out["firing_rates.png"] = _rates(plt, rates)
    if any(c.val_accuracy is not None for c in report.cycles):
        out["cycles.png"] = _cycles(plt, report)
    return out


def bench_plots(result: BenchResult) -> dict[str, bytes]:
    """`latency_vs_batch.png`: p50 latency against batch size, one line per file and thread
    count (log-log)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for row in result.rows:
        lines.setdefault((row.model, row.threads), []).append((row.batch, row.p50_ms))
    for (model, threads), points in lines.items():
        points.sort()
        ax.plot([b for b, _ in points], [ms for _, ms in points], marker="o",
                label=f"{model} ({threads} thread{'s' * (threads > 1)})")
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="p50 latency (ms)",
           title="onnxruntime latency by batch size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return {"latency_vs_batch.png": _png(plt, fig)}


def require_matplotlib() -> None:
    """Refuse `--plots` before any work when matplotlib is missing."""
    _pyplot()


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UsageError("--plots needs matplotlib: pip install 'compressor[plots]' (or pip "
                         "install matplotlib)") from None
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _widths(plt, report: Report):
    rows = report.layers
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rows) + 2), 4.5))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r.out_before for r in rows], 0.4, label="before")
    ax.bar([x + 0.2 for x in xs], [r.out_after for r in rows], 0.4, label="after")
    ax.set_xticks(list(xs), [r.name for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set(ylabel="output neurons / channels",
           title=f"layer widths: {100 * report.reduction:.1f}% fewer weights")
    ax.legend()
    return _png(plt, fig)


def _rates(plt, rates: Mapping[str, Sequence[float]]):
    names = list(rates)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        ax.hist(list(rates[name]), bins=30, range=(0, 1))
        ax.set(title=name, xlabel="firing rate", ylabel="units")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("firing rates on the calibration data (before pruning)")
    return _png(plt, fig)


def _cycles(plt, report: Report):
    cycles = [c for c in report.cycles if c.val_accuracy is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([100 * c.reduction for c in cycles], [100 * c.val_accuracy for c in cycles],
            marker="o")
    for c in cycles:
        ax.annotate(f"cycle {c.cycle}", (100 * c.reduction, 100 * c.val_accuracy), fontsize=8,
                    textcoords="offset points", xytext=(4, 4))
    ax.set(xlabel=f"{report.of} removed (%)", ylabel="validation accuracy (%)",
           title="accuracy across pruning cycles")
    ax.grid(True, alpha=0.3)
    return _png(plt, fig)


def _png(plt, fig) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return buffer.getvalue()
