"""Export the working graph to one self-contained ONNX file (checked by onnx.checker)."""

from __future__ import annotations

import contextlib
import re
from typing import Iterator

import onnx
import torch
from torch import fx

from ..errors import ExportError, first_line
from ..io.quiet import quiet
from .attention import OPSET as ATTENTION_OPSET
from .attention import flatten_heads
from .fusable import SDPA, fusable
from .layout import fold_layout
from .prenorm import rms_streams

OPSET = 18
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def to_onnx(gm: fx.GraphModule, example: torch.Tensor) -> bytes:
    """ONNX bytes (opset 18, or 23 where an attention is left to be one Attention op,
    `fusable` and `attention.flatten_heads`; a dynamic batch axis, weights inside; layout ops
    that only reshape folded, `layout`), checked by onnx.checker."""
    batch = torch.export.Dim("batch")
    gm = fusable(rms_streams(gm), example)
    attends = any(n.target == SDPA for n in gm.graph.nodes)
    try:
        with quiet(), _registry_built_once():
            program = torch.onnx.export(gm, (example,), dynamo=True, external_data=False,
                                        dynamic_shapes=({0: batch},), verbose=False,
                                        opset_version=ATTENTION_OPSET if attends else OPSET)
        proto = program.model_proto
        del program
        flatten_heads(proto.graph)
        fold_layout(proto)
        _rename(proto.graph, proto.graph.input[0].name, INPUT_NAME)
        _rename(proto.graph, proto.graph.output[0].name, OUTPUT_NAME)
        for flat, original in gm.meta.get("original_names", {}).items():
            _rename(proto.graph, flat, original)
        _strip_debug_info(proto.graph)
        _drop_initializer_shapes(proto.graph)
        data = proto.SerializeToString()
        del proto  # checked as bytes: a large model's weights are not copied again
        onnx.checker.check_model(data, full_check=True)
    except Exception as e:  # the exporter raises many types
        raise ExportError(f"ONNX export failed ({_cause(e)}); nothing was written") from e
    return data


def _cause(e: BaseException) -> str:
    """The innermost exception torch.onnx chained (its own first line only says which of its
    steps failed), with the node it was translating if it says so."""
    chain = [e]
    while chain[-1].__cause__ is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__)
    root = first_line(chain[-1])
    text = root if len(chain) == 1 else f"{type(chain[-1]).__name__}: {root}"
    node = next((m.group(1) for c in chain
                 for m in [re.match(r"Error when translating node %(\S+)", str(c))] if m), None)
    return re.sub(r"\x1b\[[0-9;]*m", "", text + (f", writing {node}" if node else ""))


@contextlib.contextmanager
def _registry_built_once() -> Iterator[None]:
    """Build torch.onnx's operator registry once per process instead of on every export (where
    most of a small model's export time goes). An export only reads the registry unless a
    custom translation table is given, which compressor never does. This patches a private
    torch API for the duration of the export; where that API is missing, exports run as they
    always do."""
    try:
        from torch.onnx._internal.exporter._registration import ONNXRegistry
        build = ONNXRegistry.__dict__["from_torchlib"].__func__
    except (ImportError, KeyError, AttributeError):
        yield
        return

    def cached(cls, *args, **kwargs):
        key = (args, tuple(sorted(kwargs.items())))
        if key not in _REGISTRIES:
            _REGISTRIES[key] = build(cls, *args, **kwargs)
        return _REGISTRIES[key]

    ONNXRegistry.from_torchlib = classmethod(cached)
    try:
        yield
    finally:
        ONNXRegistry.from_torchlib = classmethod(build)


_REGISTRIES: dict[tuple, object] = {}


def _strip_debug_info(graph: onnx.GraphProto) -> None:
    """Drop the exporter's per-node stack traces and FX text: they are most of a small
    model's file and would ship the user's source paths."""
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


def _drop_initializer_shapes(graph: onnx.GraphProto) -> None:
    """Drop the exporter's value_info for weights: initializers carry their own shapes, and
    tools that rewrite weights (onnxruntime's quantize_dynamic transposes Gemm weights) fail
    shape inference on the stale copies."""
    weights = {t.name for t in graph.initializer}
    for info in [v for v in graph.value_info if v.name in weights]:
        graph.value_info.remove(info)


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    taken = {v for n in graph.node for v in (*n.input, *n.output)} | \
        {v.name for v in (*graph.input, *graph.output, *graph.initializer)}
    if old == new or new in taken:
        return
    for value in list(graph.input) + list(graph.output) + list(graph.value_info) + \
            list(graph.initializer):
        if value.name == old:
            value.name = new
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
