"""`compress bench`: p50/p95 latency, throughput, size, peak memory and speedup against a
baseline, next to the speedup the FLOPs promise."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..io.files import files_in, write_atomic
from ..measure.latency import BATCHES, RUN_FLOPS, affordable, timings
from ..measure.memory import peak_memory_mb
from ..measure.onnx_file import flops_per_sample, load_onnx, random_input
from ..report.bench import BenchResult, BenchRow
from ..report.plots import bench_plots, require_matplotlib
from ..runtime import SparseModel


def bench(models: Sequence[Path], *, baseline: Path | None = None,
          batches: Sequence[int] | None = None, threads: Sequence[int] = (1,),
          seconds: float = 1.0, runtime: bool = True, memory: bool = True,
          log: Callable[[str], None] | None = None, plots: Path | None = None) -> BenchResult:
    """Time every model (and the baseline) at every batch size and thread count in plain
    onnxruntime, and, for files with sparse initializers, in compressor.runtime too.

    Args:
        models: ONNX files.
        baseline: ONNX file speedups are relative to (timed in the same rounds).
        batches: batch sizes; None: BATCHES, those over 1 only where a run of the costliest
            file is affordable (`latency.affordable`; the others are logged).
        threads: intra-op thread counts.
        seconds: measuring time per model per configuration.
        runtime: also run files with sparse initializers in compressor.runtime (kernels
            measured at each batch size and thread count).
        memory: measure peak memory (one child process per model and batch size).
        log: receives a line before each batch size and thread count is timed.
        plots: a directory to write `latency_vs_batch.png` into (matplotlib).
    """
    log = log or (lambda _: None)
    if plots is not None:
        require_matplotlib()
    files = list(dict.fromkeys([*([baseline] if baseline else []), *models]))
    names = labels(files)
    loaded = {p: load_onnx(p).runnable() for p in files}
    flops = {p: flops_per_sample(m.proto, nonzero=True)[0] for p, m in loaded.items()}
    if batches is None:
        costliest = max(flops.values())
        batches = affordable(BATCHES, costliest)
        left = [str(b) for b in BATCHES if b not in batches]
        if left:
            log(f"batch {', '.join(left)} left out: one run would cost over {RUN_FLOPS / 1e9:g} "
                f"GFLOPs ({costliest / 1e9:.2g} GFLOPs a sample); give --batch to time them")
    sample = {p: random_input(m, 64) for p, m in loaded.items()}
    sparse = {p for p, m in loaded.items() if runtime and m.proto.graph.sparse_initializer}
    peaks: dict[tuple[Path, bool, int], float | None] = {}
    rows = []
    for t in threads:
        for b in batches:
            entries = [(p, False) for p in files] + [(p, True) for p in files if p in sparse]
            log(f"timing {len(entries)} model{'s' * (len(entries) > 1)} at batch {b}, {t} "
                f"thread{'s' * (t > 1)} (about {seconds * len(entries):g} s"
                + (", then peak memory)" if memory else ")"))
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
                rows.append(BenchRow(names[p] + (" (runtime)" if rt else ""), b, t, round(p50, 5),
                                     round(float(np.percentile(times, 95)), 5),
                                     round(b / p50 * 1e3, 1), len(loaded[p]),
                                     peaks.get((p, rt, b)), flops[p],
                                     speedup and round(speedup, 3), ideal and round(ideal, 3),
                                     round(speedup / ideal, 3) if speedup and ideal else None))
    result = BenchResult(tuple(rows), names[baseline] if baseline else None)
    if plots is not None:
        write_atomic(files_in(plots, bench_plots(result), option="--plots"))
    return result


def labels(paths: Sequence[Path]) -> dict[Path, str]:
    """Per path, its shortest trailing part that no other path shares: the file name, or
    `a/model.onnx` and `b/model.onnx` for two files of the same name."""
    parts = {p: Path(p).resolve().parts for p in paths}
    out = {}
    for p in paths:
        for n in range(1, len(parts[p]) + 1):
            tail = parts[p][-n:]
            if sum(other[-n:] == tail for other in parts.values()) == 1:
                break
        out[p] = str(Path(*tail))
    return out
