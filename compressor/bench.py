"""onnxruntime CPU latency of an ONNX model."""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from .export import session


def latency_ms(model: bytes, sample: torch.Tensor, *, batch: int, threads: int = 1,
               seconds: float = 0.5) -> float:
    """Median latency of one `run()` on a batch of `batch` inputs built from `sample` rows.

    Args:
        model: ONNX bytes.
        sample: real inputs [n, ...]; repeated to fill the batch.
        batch: batch size.
        threads: onnxruntime intra-op threads.
        seconds: measuring time (after warm-up); at least 10 runs.
    """
    sess = session(model, threads=threads)
    reps = -(-batch // sample.shape[0])
    x = np.ascontiguousarray(sample.repeat(reps, *[1] * (sample.ndim - 1))[:batch].numpy())
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(5):
        sess.run(None, feed)
    times = []
    deadline = time.perf_counter() + seconds
    while len(times) < 10 or time.perf_counter() < deadline:
        start = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3
