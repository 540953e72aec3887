"""compressor: activation-based pruning of PyTorch models into small, fast ONNX.

    import compressor
    result = compressor.compress(model, target=0.85, data=(x, y))
    result.save_onnx("model.onnx")
    compressor.check("model.onnx", max_flops=2_000_000)

The API loads torch on first use, so `compressor.runtime` (numpy and onnxruntime only) stays
importable without it.
"""

from __future__ import annotations

__all__ = ["compress", "check", "Result"]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'compressor' has no attribute {name!r}")
