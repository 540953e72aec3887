"""onnxruntime CPU latency of an ONNX model."""

from __future__ import annotations

import statistics
import time

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
    sess = session(model, threads=threads)
    reps = -(-batch // sample.shape[0])
    x = np.ascontiguousarray(sample.repeat(reps, *[1] * (sample.ndim - 1))[:batch].numpy())
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(5):
        sess.run(None, feed)
    medians = []
    for _ in range(rounds):
        times = []
        deadline = time.perf_counter() + seconds / rounds
        while len(times) < 10 or time.perf_counter() < deadline:
            start = time.perf_counter()
            sess.run(None, feed)
            times.append(time.perf_counter() - start)
        medians.append(statistics.median(times))
    return min(medians) * 1e3
