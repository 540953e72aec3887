"""`compress bench`'s result: a row per model, batch size and thread count."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .table import align


@dataclass(frozen=True)
class BenchRow:
    """One model at one batch size and thread count."""

    model: str  # file name; "(runtime)" when run by compressor.runtime
    batch: int
    threads: int
    p50_ms: float
    p95_ms: float
    throughput: float  # samples per second at p50
    size: int  # bytes on disk
    peak_mb: float | None  # peak resident memory added by loading and running it
    flops: int  # per sample, 2 x non-zero weights
    speedup: float | None  # baseline p50 / p50
    ideal: float | None  # baseline FLOPs / FLOPs
    efficiency: float | None  # speedup / ideal


@dataclass(frozen=True)
class BenchResult:
    rows: tuple[BenchRow, ...]
    baseline: str | None

    def to_json(self) -> str:
        return json.dumps({"baseline": self.baseline, "rows": [asdict(r) for r in self.rows]},
                          indent=2) + "\n"


def format_bench(result: BenchResult) -> str:
    """The rows as an aligned table."""
    head = ("model", "batch", "threads", "p50 ms", "p95 ms", "samples/s", "bytes", "peak MB",
            "FLOPs", "speedup", "ideal", "efficiency")
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    rows = [head] + [(r.model, str(r.batch), str(r.threads), f"{r.p50_ms:.4f}", f"{r.p95_ms:.4f}",
                      f"{r.throughput:,.0f}", f"{r.size:,}", fmt(r.peak_mb, ".1f"), f"{r.flops:,}",
                      fmt(r.speedup, ".2f"), fmt(r.ideal, ".2f"), fmt(r.efficiency, ".2f"))
                     for r in result.rows]
    lines = align(rows, free_last=False)
    note = ("speedup = baseline p50 / p50 at the same batch and threads; ideal = baseline FLOPs / "
            "FLOPs (non-zero weights); efficiency = speedup / ideal. "
            "(runtime) rows run in compressor.runtime with kernels measured per layer; the sparse "
            "kernels are single-threaded.") if result.baseline else ""
    return "\n".join(lines + ([f"\nbaseline: {result.baseline}. {note}"] if note else []))
