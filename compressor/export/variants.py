"""Every variant of one result, for `compress bench DIR/*.onnx --baseline DIR/dense.onnx`."""

from __future__ import annotations

import onnx
import torch
from torch import fx

from .formats import quantize
from .pack import ENERGY, Format, pack_onnx
from .to_onnx import to_onnx
from .verify import verify

VARIANTS = ("dense", "masked", "shrunk", "csr", "int8", "int8-dense", "lowrank", "lowrank-dense")


def variants(onnx_dense: bytes, onnx_pruned: bytes, masked: fx.GraphModule,
             pruned: fx.GraphModule, sample: torch.Tensor, x: torch.Tensor, *, batch: int,
             threads: int, tolerance: float, energy: float = ENERGY) -> dict[str, bytes]:
    """ONNX bytes per variant name: the input model's dense export, the pruned model at its
    original shapes with zeros (masked), physically shrunk (zeros kept), sparse storage, int8
    of the pruned model, int8 of the dense input, and the pruned and the dense input's layers
    factored by truncated SVD keeping `energy` (where smaller and faster at `batch`). The
    masked and csr files are verified against `pruned` on `x` (they compute the same function
    as the verified export).

    Args:
        onnx_dense, onnx_pruned: the verified exports of the input and the pruned model.
        masked: the pruned model expanded back to the original shapes (`prune.shrink.expand`).
        pruned: the pruned working graph.
        sample: the example batch the exports were traced with.
        x: parity inputs.
        batch, threads: the setting csr kernels are chosen for.
        tolerance: largest max |onnxruntime - PyTorch| accepted.
    """
    data = {
        "dense": onnx_dense,
        "masked": to_onnx(masked, sample),
        "shrunk": onnx_pruned,
        "csr": pack_onnx(onnx_pruned, Format.CSR, batch=batch, threads=threads).data,
        "int8": pack_onnx(onnx_pruned, Format.INT8).data,
        "int8-dense": quantize(onnx.load_from_string(onnx_dense)).SerializeToString(),
        "lowrank": pack_onnx(onnx_pruned, Format.LOWRANK, batch=batch, threads=threads,
                             energy=energy).data,
        "lowrank-dense": pack_onnx(onnx_dense, Format.LOWRANK, batch=batch, threads=threads,
                                   energy=energy).data,
    }
    for name in ("masked", "csr"):
        verify(data[name], pruned, x, tolerance=tolerance)
    return data
