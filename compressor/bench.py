"""onnxruntime CPU latency of ONNX models, and `compress bench`: p50/p95, throughput, size,
peak memory and speedup against a baseline, next to the speedup the FLOPs promise."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .export import session
from .measure import OnnxModel, flops_per_sample, load_onnx, random_input
from .runtime import SparseModel, stored_kernels


def latency_ms(model: bytes, sample: torch.Tensor, *, batch: int, threads: int = 1,
               seconds: float = 0.5, rounds: int = 5) -> float:
    """Latency of one `run()` on a batch of `batch` inputs built from `sample` rows: the
    median of each of `rounds` rounds, and the best of those (noise only ever adds time).

    Args:
        model: ONNX bytes.
        sample: real inputs [n, ...]; repeated to fill the batch.
        batch: batch size.
        threads: onnxruntime intra-op threads.
        seconds: total measuring time after warm-up; every round has at least 10 runs.
        rounds: rounds the time is split into.
    """
    return latencies_ms([model], [sample], batch=batch, threads=threads, seconds=seconds,
                        rounds=rounds)[0]


def latencies_ms(models: Sequence[bytes | SparseModel], samples: Sequence[torch.Tensor], *,
                 batch: int, threads: int = 1, seconds: float = 0.5,
                 rounds: int = 5) -> list[float]:
    """`latency_ms` of several models (each with its own inputs), measured in interleaved
    rounds so that a busy moment of the machine slows all of them alike: what a ratio of
    two latencies needs. A model is ONNX bytes (a plain onnxruntime session) or a loaded
    `compressor.runtime.SparseModel`."""
    found = timings(models, samples, batch=batch, threads=threads, seconds=seconds,
                    rounds=rounds)
    return [min(statistics.median(r) for r in per_round) * 1e3 for per_round in found]


def timings(models: Sequence[bytes | SparseModel], samples: Sequence[torch.Tensor], *,
            batch: int, threads: int = 1, seconds: float = 0.5,
            rounds: int = 5) -> list[list[list[float]]]:
    """Seconds of every run, per model, per round (the rounds interleave the models)."""
    runs = [_runner(model, sample, batch=batch, threads=threads)
            for model, sample in zip(models, samples, strict=True)]
    found: list[list[list[float]]] = [[] for _ in runs]
    for _ in range(rounds):
        for run, per_round in zip(runs, found):
            times = []
            deadline = time.perf_counter() + seconds / rounds / len(runs)
            while len(times) < 10 or time.perf_counter() < deadline:
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            per_round.append(times)
    return found


def _runner(model: bytes | SparseModel, sample: torch.Tensor, *, batch: int, threads: int):
    reps = -(-batch // sample.shape[0])
    x = np.ascontiguousarray(sample.repeat(reps, *[1] * (sample.ndim - 1))[:batch].numpy())
    if isinstance(model, SparseModel):
        run = lambda: model.run(x)  # noqa: E731
    else:
        sess = session(model, threads=threads)
        feed = {sess.get_inputs()[0].name: x}
        run = lambda: sess.run(None, feed)  # noqa: E731
    for _ in range(5):  # warm-up
        run()
    return run


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


def bench(models: Sequence[Path], *, baseline: Path | None = None,
          batches: Sequence[int] = (1, 32, 256), threads: Sequence[int] = (1,),
          seconds: float = 1.0, runtime: bool = True, memory: bool = True) -> BenchResult:
    """Time every model (and the baseline) at every batch size and thread count in plain
    onnxruntime, and, for files with sparse initializers, in compressor.runtime too.

    Args:
        models: ONNX files.
        baseline: ONNX file speedups are relative to (timed in the same rounds).
        batches: batch sizes.
        threads: intra-op thread counts.
        seconds: measuring time per model per configuration.
        runtime: also run files with sparse initializers in compressor.runtime (kernels
            measured at each batch size and thread count).
        memory: measure peak memory (one child process per model and batch size).
    """
    files = list(dict.fromkeys([*([baseline] if baseline else []), *models]))
    loaded = {p: load_onnx(p).runnable() for p in files}
    flops = {p: _flops(m) for p, m in loaded.items()}
    sample = {p: random_input(m, 64) for p, m in loaded.items()}
    sparse = {p for p, m in loaded.items() if runtime and m.proto.graph.sparse_initializer}
    peaks: dict[tuple[Path, bool, int], float | None] = {}
    rows = []
    for t in threads:
        for b in batches:
            entries = [(p, False) for p in files] + [(p, True) for p in files if p in sparse]
            runners = [SparseModel.load(loaded[p].proto, batch=b, threads=t) if rt else
                       loaded[p].data for p, rt in entries]
            found = timings(runners, [sample[p] for p, _ in entries], batch=b, threads=t,
                            seconds=seconds * len(entries))
            pooled = [[x * 1e3 for r in per_round for x in r] for per_round in found]
            base = statistics.median(pooled[0]) if baseline else None
            for (p, rt), times in zip(entries, pooled):
                if memory and (p, rt, b) not in peaks:
                    peaks[(p, rt, b)] = peak_memory_mb(p, batch=b, runtime=rt)
                p50 = statistics.median(times)
                ideal = flops[baseline] / flops[p] if baseline and flops[p] else None
                speedup = base / p50 if base else None
                rows.append(BenchRow(p.name + (" (runtime)" if rt else ""), b, t, round(p50, 5),
                                     round(float(np.percentile(times, 95)), 5),
                                     round(b / p50 * 1e3, 1), len(loaded[p]),
                                     peaks.get((p, rt, b)), flops[p],
                                     speedup and round(speedup, 3), ideal and round(ideal, 3),
                                     round(speedup / ideal, 3) if speedup and ideal else None))
    return BenchResult(tuple(rows), baseline.name if baseline else None)


def _flops(model: OnnxModel) -> int:
    return flops_per_sample(model.proto)[0]


def peak_memory_mb(path: Path, *, batch: int, runtime: bool = False) -> float | None:
    """Peak resident memory (MB) that loading `path` and running it at `batch` adds to a fresh
    Python process that has already imported everything (Linux: the peak is reset through
    /proc/self/clear_refs, then read from VmHWM). None where that cannot be measured."""
    code = "from compressor.bench import _peak_child; _peak_child()"
    try:
        done = subprocess.run([sys.executable, "-c", code, str(path), str(batch),
                               str(int(runtime))], capture_output=True, text=True, timeout=300,
                              check=True)
        return round(float(done.stdout.strip().splitlines()[-1]), 1)
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def _peak_child() -> None:
    path, batch, runtime = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    model = load_onnx(Path(path)).runnable()
    x = random_input(model, batch).numpy()
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS (Linux)
    before = _high_water_kb()
    if runtime:
        run = SparseModel.load(model.data, batch=batch, kernels="stored" if
                               stored_kernels(model.proto) else "measure").run
    else:
        sess = session(model.data)
        run = lambda x: sess.run(None, {model.input_name: x})  # noqa: E731
    for _ in range(10):
        run(x)
    print((_high_water_kb() - before) / 1024)


def _high_water_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise OSError("no VmHWM in /proc/self/status")


def format_bench(result: BenchResult) -> str:
    """The rows as an aligned table."""
    head = ("model", "batch", "threads", "p50 ms", "p95 ms", "samples/s", "bytes", "peak MB",
            "FLOPs", "speedup", "ideal", "efficiency")
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    rows = [head] + [(r.model, str(r.batch), str(r.threads), f"{r.p50_ms:.4f}", f"{r.p95_ms:.4f}",
                      f"{r.throughput:,.0f}", f"{r.size:,}", fmt(r.peak_mb, ".1f"), f"{r.flops:,}",
                      fmt(r.speedup, ".2f"), fmt(r.ideal, ".2f"), fmt(r.efficiency, ".2f"))
                     for r in result.rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths))) for row in rows]
    note = ("speedup = baseline p50 / p50 at the same batch and threads; ideal = baseline FLOPs / "
            "FLOPs (non-zero weights); efficiency = speedup / ideal. "
            "(runtime) rows run in compressor.runtime with kernels measured per layer; the sparse "
            "kernels are single-threaded.") if result.baseline else ""
    return "\n".join(lines + ([f"\nbaseline: {result.baseline}. {note}"] if note else []))
