"""The one way compressor opens an onnxruntime session: CPU, a given number of threads."""

from __future__ import annotations

import onnxruntime as ort


def session(model: bytes, *, threads: int = 1) -> ort.InferenceSession:
    """A CPU onnxruntime session with `threads` intra-op threads (one inter-op thread, warnings
    off)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
