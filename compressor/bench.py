"""onnxruntime CPU latency of ONNX models."""

from __future__ import annotations

import statistics
import time
from typing import Sequence

import numpy as np
import torch

from .export import session


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


def latencies_ms(models: Sequence[bytes], samples: Sequence[torch.Tensor], *, batch: int,
                 threads: int = 1, seconds: float = 0.5, rounds: int = 5) -> list[float]:
    """`latency_ms` of several models (each with its own inputs), measured in interleaved
    rounds so that a busy moment of the machine slows all of them alike: what a ratio of
    two latencies needs."""
    runs = [_runner(model, sample, batch=batch, threads=threads)
            for model, sample in zip(models, samples, strict=True)]
    medians: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for run, found in zip(runs, medians):
            times = []
            deadline = time.perf_counter() + seconds / rounds / len(runs)
            while len(times) < 10 or time.perf_counter() < deadline:
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            found.append(statistics.median(times))
    return [min(found) * 1e3 for found in medians]


def _runner(model: bytes, sample: torch.Tensor, *, batch: int, threads: int):
    sess = session(model, threads=threads)
    reps = -(-batch // sample.shape[0])
    x = np.ascontiguousarray(sample.repeat(reps, *[1] * (sample.ndim - 1))[:batch].numpy())
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(5):  # warm-up
        sess.run(None, feed)
    return lambda: sess.run(None, feed)
