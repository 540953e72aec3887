"""Verify an export: onnxruntime must compute what the pruned PyTorch model computes."""

from __future__ import annotations

import copy
from typing import NamedTuple

import numpy as np
import onnxruntime as ort
import torch
from torch import fx

from ..errors import ExportError
from ..graph.capture import run_batched
from ..runtime import SparseModel, session
from .pack import Packed

# A float32 implementation counts as faithful, when it misses PyTorch by more than the
# tolerance, if it misses the float64 result by at most this many times what PyTorch's own
# float32 misses it by: two float32 kernels that sum in different orders differ by a few
# times either one's rounding, while an export that computes something else misses by far more.
ROUNDING_FACTOR = 4.0


class Agreement(NamedTuple):
    """How closely one export computes what the pruned PyTorch model computes."""

    diff: float  # max |onnxruntime - PyTorch float32|
    largest: float  # max |PyTorch output| (what the tolerance scales with)
    rounding: float | None = None  # max |PyTorch float32 - float64|, measured where `diff`
    # exceeded the tolerance and the export was accepted as rounding of a sensitive model


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


def float64(gm: fx.GraphModule, x: torch.Tensor) -> torch.Tensor | None:
    """`gm`'s outputs on `x` computed in float64 (a copy of its weights, its constants and
    its casts to float32 made float64), as float64; None where the graph cannot run so."""
    wide = copy.deepcopy(gm).double()
    for node in wide.graph.nodes:
        value = getattr(wide, node.target, None) if node.op == "get_attr" else None
        if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
            setattr(wide, node.target, value.double())  # a constant held as a plain attribute
        node.args, node.kwargs = fx.node.map_aggregate(  # `.float()`, `full(dtype=...)`
            (node.args, node.kwargs), lambda a: torch.float64 if a is torch.float32 else a)
    wide.recompile()
    try:
        out = run_batched(wide, x.double() if x.is_floating_point() else x)  # ids stay ids
    except (RuntimeError, TypeError):
        return None
    return out if out.dtype == torch.float64 else None


def _judge(got: torch.Tensor, gm: fx.GraphModule, x: torch.Tensor, reference: torch.Tensor,
           tolerance: float, what: str) -> Agreement:
    """`got` against `reference` (PyTorch float32 on `x`); above the tolerance, against the
    float64 result too, which tells rounding of a sensitive model from a wrong export."""
    diff = float((got - reference).abs().max())
    allowed = limit(tolerance, reference)
    largest = float(reference.abs().max())
    if diff <= allowed:
        return Agreement(diff, largest)
    exact = float64(gm, x)
    if exact is not None:
        ours = float((reference.double() - exact).abs().max())
        theirs = float((got.double() - exact).abs().max())
        if theirs <= allowed + ROUNDING_FACTOR * ours:
            return Agreement(diff, largest, ours)
        against = (f"; against float64, PyTorch float32 is {ours:.3g} off and {what} "
                   f"{theirs:.3g}")
    else:
        against = ""
    raise ExportError(f"{what} differs from the pruned PyTorch model by {diff:.3g} "
                      f"(limit {allowed:.3g}) on {x.shape[0]} inputs{against}; nothing was "
                      "written. Please report this with the model")


def verify(model: bytes, gm: fx.GraphModule, x: torch.Tensor, *,
           tolerance: float) -> Agreement:
    """How closely onnxruntime running `model` computes `gm` on `x`. Raises ExportError above
    `tolerance` (relative to the outputs' size where they exceed 1), unless the model is so
    sensitive to rounding that PyTorch's own float32 misses its float64 result by as much:
    then `rounding` says by how much."""
    return _judge(run_onnx(session(model), x), gm, x, run_batched(gm, x), tolerance,
                  "the ONNX model")


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
        _judge(got, gm, x, run_batched(gm, x), tolerance, "compressor.runtime")
    return None
