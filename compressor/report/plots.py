"""`--plots DIR`: the report as PNG pictures (matplotlib, the `plots` extra), rendered in memory
so that they are written with the other outputs or not at all."""

from __future__ import annotations

import io
import math
from typing import Mapping, Sequence

from ..errors import UsageError
from .analyze import Analysis
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
    if report.spectra:
        out["spectra_cycles.png"] = _spectra_cycles(plt, report.spectra)
    return out


def _spectra_cycles(plt, spectra: Sequence[Mapping[str, Sequence[float]]]):
    """Each layer's singular values before pruning and after every cycle (paper Figure 7)."""
    names = list(spectra[0])
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    colours = plt.get_cmap("viridis")
    for ax, name in zip(axes.flat, names):
        for n, values in enumerate(spectra):
            sigma = values[name]
            ax.plot(range(1, len(sigma) + 1), sigma, color=colours(n / max(1, len(spectra) - 1)),
                    label="before" if n == 0 else f"cycle {n}")
        ax.set(yscale="log", title=name, xlabel="index", ylabel="singular value")
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("singular values before pruning and after each cycle")
    return _png(plt, fig)


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


def analyze_plots(analysis: Analysis, weights: Sequence[Mapping[str, object]]) -> dict[str, bytes]:
    """PNGs of `compress analyze`: singular-value spectra of every layer (one line per model),
    a weight heatmap per model (|w|, zero entries white, as the paper's Figure 6), and the
    firing-rate histograms of every model analysed with data. `weights`: per model, its
    matrices by layer name."""
    plt = _pyplot("--out")
    out = {"spectra.png": _spectra(plt, analysis)}
    for i, (model, matrices) in enumerate(zip(analysis.models, weights)):
        out[f"weights_{i}.png"] = _heatmaps(plt, model.path, matrices)
    for i, model in enumerate(analysis.models):
        rates = {layer.name: layer.firing.rates for layer in model.layers if layer.firing}
        if rates:
            out[f"firing_rates_{i}.png"] = _rates(plt, rates, title=f"firing rates: {model.path}")
    return out


def _spectra(plt, analysis: Analysis):
    count = max(len(m.layers) for m in analysis.models)
    cols = min(3, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= count:
            ax.axis("off")
            continue
        for model in analysis.models:
            if k < len(model.layers):
                sigma = model.layers[k].weights.singular_values
                top = sigma[0] if sigma and sigma[0] > 0 else 1.0
                ax.plot(range(1, len(sigma) + 1), [s / top for s in sigma],
                        label=model.path.rsplit("/", 1)[-1])
        ax.set(yscale="log", title=f"layer #{k} ({analysis.models[0].layers[k].name})"
               if k < len(analysis.models[0].layers) else f"layer {k}",
               xlabel="index", ylabel="sigma / sigma_max")
        ax.grid(True, alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("singular values of each weight matrix")
    return _png(plt, fig)


def _heatmaps(plt, path: str, matrices: Mapping[str, object]):
    names = list(matrices)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.5 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        w = abs(matrices[name])
        ax.imshow(w, cmap="Greys", aspect="auto", interpolation="nearest",
                  vmin=0, vmax=float(w.max()) or 1.0)
        ax.set(title=f"{name} {w.shape[0]}x{w.shape[1]}", xlabel="input", ylabel="output")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"|weights| (zeros white): {path.rsplit('/', 1)[-1]}")
    return _png(plt, fig)


def require_matplotlib(option: str = "--plots") -> None:
    """Refuse `option` (PNGs) before any work when matplotlib is missing."""
    _pyplot(option)


def _pyplot(option: str = "--plots"):
    try:
        import matplotlib
    except ImportError:
        raise UsageError(f"{option} needs matplotlib: pip install 'compressor[plots]' (or pip "
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


def _rates(plt, rates: Mapping[str, Sequence[float]], *,
           title: str = "firing rates on the calibration data (before pruning)"):
    names = list(rates)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        ax.hist(list(rates[name]), bins=30, range=(0, 1))
        ax.set(title=name, xlabel="firing rate", ylabel="units")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title)
    return _png(plt, fig)


def _cycles(plt, report: Report):
    cycles = [c for c in report.cycles if c.val_accuracy is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([100 * c.reduction for c in cycles], [100 * c.val_accuracy for c in cycles],
            marker="o")
    for c in cycles:
        ax.annotate(f"cycle {c.cycle}", (100 * c.reduction, 100 * c.val_accuracy), fontsize=8,
                    textcoords="offset points", xytext=(4, 4))
    ax.set(xlabel=f"{report.plan.of} removed (%)", ylabel="validation accuracy (%)",
           title="accuracy across pruning cycles")
    ax.grid(True, alpha=0.3)
    return _png(plt, fig)


def _png(plt, fig) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return buffer.getvalue()
