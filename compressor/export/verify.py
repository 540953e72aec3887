"""Verify an export: onnxruntime must compute what the pruned PyTorch model computes."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
from torch import fx

from ..errors import ExportError
from ..graph.capture import run_batched
from ..runtime import SparseModel, session
from .pack import Packed


def run_onnx(sess: ort.InferenceSession, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Outputs of an onnxruntime session on `x`, in batches."""
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: x[i:i + batch_size].numpy()})[0]
            for i in range(0, x.shape[0], batch_size)]
    return torch.from_numpy(np.concatenate(outs))


def limit(tolerance: float, reference: torch.Tensor) -> float:
    """The largest difference accepted from a float32 result: `tolerance` for outputs up to 1
    in size, `tolerance` x max |output| beyond (rounding grows with the values summed)."""
    return tolerance * max(1.0, float(reference.abs().max()))


def verify(model: bytes, gm: fx.GraphModule, x: torch.Tensor, *,
           tolerance: float) -> tuple[float, float]:
    """Max |onnxruntime - PyTorch| on `x` and max |PyTorch output| (what the tolerance scales
    with); raises ExportError above `tolerance` (relative to the outputs' size where they
    exceed 1)."""
    reference = run_batched(gm, x)
    diff = float((run_onnx(session(model), x) - reference).abs().max())
    allowed = limit(tolerance, reference)
    if not diff <= allowed:
        raise ExportError(f"the ONNX model differs from the pruned PyTorch model by {diff:.3g} "
                          f"(limit {allowed:.3g}) on {x.shape[0]} inputs; nothing was written. "
                          "Please report this with the model")
    return diff, float(reference.abs().max())


def verify_packed(packed: Packed, gm: fx.GraphModule, x: torch.Tensor, *,
                  tolerance: float) -> float | None:
    """Check a packed file against the pruned model: float formats must match it (in plain
    onnxruntime and, where sparse kernels are used, in compressor.runtime); int8 and low-rank
    factors are approximate, so their max difference is returned for the report instead of
    checked."""
    if any(row.kernel == "int8" or row.kernel.startswith("lowrank") for row in packed.layers):
        return float((run_onnx(session(packed.data), x) - run_batched(gm, x)).abs().max())
    verify(packed.data, gm, x, tolerance=tolerance)
    if packed.runtime:
        runtime = SparseModel.load(packed.data, kernels="stored")
        got = torch.from_numpy(runtime.run(x.numpy()))
        reference = run_batched(gm, x)
        found = float((got - reference).abs().max())
        if not found <= limit(tolerance, reference):
            raise ExportError(f"compressor.runtime differs from the pruned model by {found:.3g}; "
                              "nothing was written. Please report this with the model")
    return None
