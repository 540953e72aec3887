"""Builders the tests share: model files of every format, a trace-compensate-shrink step, and
a sparse ONNX model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import fx, nn

from compressor.export.to_onnx import to_onnx
from compressor.graph.capture import capture, export_program
from compressor.graph.groups import PrunableGroup
from compressor.graph.trace import trace
from compressor.io.load import LoadedModel, ModelFormat
from compressor.prune.calibrate import count_activations
from compressor.prune.compensate import Compensated, compensate
from compressor.prune.config import CompensateConfig, Compensation
from compressor.prune.shrink import shrink

FORMATS = ("ts", "pt2", "sd", "ckpt", "pickle")


def graph_of(module: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """The working graph of an in-memory module (as `compress` builds it)."""
    return capture(LoadedModel(Path("in-memory"), ModelFormat.PICKLED_MODULE, module.eval()),
                   example)


def save_model(net: nn.Module, path: Path, kind: str, example: torch.Tensor) -> Path:
    """Write `net` to `path` as `kind`: TorchScript (ts), torch.export program (pt2),
    state_dict (sd), checkpoint dict with a state_dict (ckpt) or pickled module (pickle)."""
    net = net.eval()
    if kind == "ts":
        torch.jit.script(net).save(str(path))
    elif kind == "pt2":
        torch.export.save(export_program(net, example[:2]), str(path))
    elif kind == "sd":
        torch.save(net.state_dict(), path)
    elif kind == "ckpt":
        torch.save({"state_dict": net.state_dict(), "epoch": 3}, path)
    elif kind == "pickle":
        torch.save(net, path)
    else:
        raise ValueError(f"unknown model format {kind!r}: one of {FORMATS}")
    return path


def remove_units(gm: fx.GraphModule, removed: dict[str, torch.Tensor],
                 mode: Compensation = Compensation.NONE, *, x: torch.Tensor | None = None,
                 **settings) -> tuple[tuple[PrunableGroup, ...], dict[str, Compensated]]:
    """Trace `gm`, compensate the removal of `removed` (per group) with `mode` (on calibration
    inputs `x` when given) and shrink it in place; returns the resized groups and what the
    compensation did."""
    groups = trace(gm).groups
    stats = count_activations(gm, groups, x) if x is not None else None
    done = compensate(gm, groups, removed, CompensateConfig(mode, **settings), stats=stats, x=x)
    return shrink(gm, groups, removed), done


def sparse_onnx(net: nn.Module, x: torch.Tensor, zeros: float = 0.9) -> onnx.ModelProto:
    """`net` exported with the smallest `zeros` share of every weight matrix set to zero."""
    proto = onnx.load_from_string(to_onnx(graph_of(net, x[:2]), x[:2]))
    for t in proto.graph.initializer:
        a = numpy_helper.to_array(t).copy()
        if a.ndim == 2:
            a[np.abs(a) < np.quantile(np.abs(a), zeros)] = 0
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    return proto
