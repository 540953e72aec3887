"""onnxruntime CPU latency of ONNX models (or of `compressor.runtime` models) on real inputs,
through the one latency loop in `compressor.runtime.timing`."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..io.cores import MARGIN, watching_load
from ..runtime import SparseModel, session, timing


@dataclass(frozen=True)
class BenchConfig:
    """onnxruntime latency measurement: batches to time, threads, time per measurement."""

    batches: tuple[int, ...] = (1, 256)
    threads: int = 1
    seconds: float = 0.5

    def __post_init__(self) -> None:
        if not self.batches or min(self.batches) < 1:
            raise ValueError(f"batches must be positive, got {self.batches}")
        if self.threads < 1 or self.seconds <= 0:
            raise ValueError("threads must be >= 1 and seconds > 0")




def runner(model: bytes | SparseModel, sample: torch.Tensor, *, batch: int,
           threads: int) -> Callable[[], object]:
    """One `run()` on a batch of `batch` inputs built from the rows of `sample` (repeated to
    fill the batch): a plain onnxruntime session for ONNX bytes, or the runtime's own run."""
    reps = -(-batch // sample.shape[0])
    x = np.ascontiguousarray(sample.repeat(reps, *[1] * (sample.ndim - 1))[:batch].numpy())
    if isinstance(model, SparseModel):
        return lambda: model.run(x)
    sess = session(model, threads=threads)
    feed = {sess.get_inputs()[0].name: x}
    return lambda: sess.run(None, feed)


def timings(models: Sequence[bytes | SparseModel], samples: Sequence[torch.Tensor], *,
            batch: int, threads: int = 1, seconds: float = 0.5,
            rounds: int = 5) -> list[list[list[float]]]:
    """Seconds of every run, per model, per round (the rounds interleave the models)."""
    runs = [runner(m, s, batch=batch, threads=threads)
            for m, s in zip(models, samples, strict=True)]
    return timing.timings(runs, seconds=seconds, rounds=rounds)


def latencies_ms(models: Sequence[bytes | SparseModel], samples: Sequence[torch.Tensor], *,
                 batch: int, threads: int = 1, seconds: float = 0.5,
                 rounds: int = 5) -> list[float]:
    """Latency of one `run()` of each model (each on its own inputs) at `batch`: the best of
    `rounds` interleaved rounds' medians, so that a busy moment of the machine slows all of
    them alike (what a ratio of two latencies needs).

    Args:
        models: ONNX bytes (a plain onnxruntime session) or loaded `SparseModel`s.
        samples: real inputs [n, ...] per model; repeated to fill the batch.
        batch: batch size.
        threads: onnxruntime intra-op threads.
        seconds: total measuring time after warm-up; every round has at least 10 runs.
        rounds: rounds the time is split into.
    """
    return [timing.best_median_ms(r) for r in timings(models, samples, batch=batch,
                                                        threads=threads, seconds=seconds,
                                                        rounds=rounds)]


RUN_FLOPS = 4 * 10**9  # the most a timed run() may cost where the batch is left to compressor
BATCHES = (1, 32, 256)  # `compress bench`'s batch sizes when none are given


def affordable(batches: Sequence[int], flops: int) -> tuple[int, ...]:
    """`batches` without those over 1 at which one run() of `flops` FLOPs a sample would cost
    more than RUN_FLOPS: a timing makes tens of runs of each file, and at a BERT-base's
    FLOPs one run at batch 256 takes minutes."""
    return tuple(b for b in batches if b == 1 or b * flops <= RUN_FLOPS)


SPREAD_LIMIT = 0.25  # rounds whose speedups differ by more than this share are not trusted


@dataclass(frozen=True)
class Compared:
    """Latencies of models timed together: each one's ms, how much the rounds disagreed on
    the second model's speedup over the first ((max - min) / median of the per-round
    ratios), and the cores other processes kept busy meanwhile."""

    ms: tuple[float, ...]
    spread: float
    others: float | None

    @property
    def busy(self) -> bool:
        """Whether the machine was too busy for the speedup to be trusted."""
        return self.spread > SPREAD_LIMIT or (self.others is not None and self.others > MARGIN)


def compared_ms(models: Sequence[bytes | SparseModel], samples: Sequence[torch.Tensor], *,
                batch: int, threads: int = 1, seconds: float = 0.5,
                rounds: int = 5) -> Compared:
    """`latencies_ms`, with how far the rounds' speedups of models[1] over models[0] spread
    and how busy other processes kept the cores while they were timed."""
    with watching_load() as load:
        found = timings(models, samples, batch=batch, threads=threads, seconds=seconds,
                        rounds=rounds)
    ratios = [statistics.median(a) / statistics.median(b)
              for a, b in zip(found[0], found[1])] if len(found) > 1 else [1.0]
    spread = (max(ratios) - min(ratios)) / statistics.median(ratios)
    return Compared(tuple(timing.best_median_ms(r) for r in found), round(spread, 3),
                    load.others)


def latency_ms(model: bytes, sample: torch.Tensor, *, batch: int, threads: int = 1,
               seconds: float = 0.5, rounds: int = 5) -> float:
    """`latencies_ms` of one model."""
    return latencies_ms([model], [sample], batch=batch, threads=threads, seconds=seconds,
                        rounds=rounds)[0]
