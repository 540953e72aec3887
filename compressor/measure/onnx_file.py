"""Facts about an ONNX model file: size, stored parameters, FLOPs, and top-1 predictions on
data. `compress check` and the budgets of `compress` read them from here."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import sympy
import torch
from onnx import helper, numpy_helper

from ..errors import DataError, ModelError, first_line
from ..export.formats import densify
from ..export.verify import run_onnx
from ..io.stream import apply
from ..runtime import example_input, session

# Weights are input 1 of these ops ("positions" each weight is used at = output elements / N).
_MATMUL = {"MatMul", "MatMulInteger", "FusedMatMul"}
_CONV = {"Conv", "ConvInteger"}
_QLINEAR = {"QLinearMatMul": 3, "QLinearConv": 3}  # op -> index of its weight input
_NOT_PARAMETERS = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.BOOL,
                   onnx.TensorProto.STRING}


@dataclass(frozen=True)
class OnnxModel:
    """A loaded, checked ONNX file: its bytes, its graph, and its single input."""

    path: Path
    data: bytes
    proto: onnx.ModelProto
    input_name: str | None  # None unless the model has exactly one input and one output
    input_dims: tuple[int | None, ...]  # per sample (batch axis dropped); None = symbolic
    input_dtype: torch.dtype = torch.float32  # int64 for token ids

    def __len__(self) -> int:
        return len(self.data)

    def runnable(self) -> OnnxModel:
        """This model, if compressor can feed it data (one input, one output)."""
        if self.input_name is None:
            raise ModelError(f"{self.path} does not have one input and one output: accuracy, "
                             "agreement and latency are measured on such models only")
        return self


def load_onnx(path: Path, *, what: str = "model") -> OnnxModel:
    """Read and check an ONNX file (weights inside the one file).

    Args:
        path: the `.onnx` file.
        what: how errors name it (model, --baseline, --reference).
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{what} {path} does not exist: check the path")
    if path.is_dir():
        raise ModelError(f"{what} {path} is a directory: pass the .onnx file itself")
    data = path.read_bytes()
    if not data:
        raise ModelError(f"{what} {path} is empty: export the model again")
    try:
        proto = onnx.load_from_string(data)
        tensors = [*proto.graph.initializer, *(s.values for s in proto.graph.sparse_initializer)]
        external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors)
        if not external:
            onnx.checker.check_model(proto)
    except Exception as e:  # protobuf and the checker raise many types for damaged files
        if data[:2] == b"PK" or data[:1] == b"\x80":
            raise ModelError(f"{what} {path} is a PyTorch file, not ONNX: check the .onnx file "
                             "that compress wrote (or export the model to ONNX)") from e
        raise ModelError(f"{what} {path} is not a valid ONNX model ({first_line(e)}): export it "
                         "again, e.g. with torch.onnx.export") from e
    if external:
        raise ModelError(f"{what} {path} keeps its weights in external data files: save it as "
                         "one file (onnx.save(model, path, save_as_external_data=False))")
    weights = {t.name for t in proto.graph.initializer} | \
        {s.values.name for s in proto.graph.sparse_initializer}
    inputs = [i for i in proto.graph.input if i.name not in weights]
    if len(inputs) != 1 or len(proto.graph.output) != 1:
        return OnnxModel(path, data, proto, None, ())
    dims = tuple(d.dim_value if d.HasField("dim_value") else None
                 for d in inputs[0].type.tensor_type.shape.dim)
    elem = inputs[0].type.tensor_type.elem_type
    dtype = torch.from_numpy(np.zeros(0, helper.tensor_dtype_to_np_dtype(elem))).dtype
    return OnnxModel(path, data, proto, inputs[0].name if dims else None, dims[1:], dtype)


def parameter_count(proto: onnx.ModelProto) -> int:
    """Stored parameters: entries of floating-point and 8-bit initializers and Constant
    tensors (int32/int64 shape and index tensors are not parameters); a sparse
    initializer counts only its stored values."""
    tensors = list(proto.graph.initializer)
    tensors += [s.values for s in proto.graph.sparse_initializer]
    tensors += [a.t for n in proto.graph.node if n.op_type == "Constant"
                for a in n.attribute if a.name in ("value", "sparse_value")]
    return sum(math.prod(t.dims) for t in tensors if t.data_type not in _NOT_PARAMETERS)


def flops_per_sample(proto: onnx.ModelProto, *,
                     nonzero: bool = False) -> tuple[int, tuple[str, ...]]:
    """FLOPs of one sample: 2 x (weights x positions each is applied at) over the MatMul, Gemm
    and Conv nodes (and their int8 forms): what a dense kernel computes, zeros included (the
    count of `compress` reports); with `nonzero`, of the non-zero weights only (what a sparse
    kernel computes: the activation-based pruning paper's count). A MatMul of two
    activations (attention's q·kᵀ and probabilities times v) counts 2 x its multiply-adds, as
    does an Attention op.

    Returns:
        The FLOPs and the op types of nodes that could not be counted (output shapes unknown).
    """
    try:  # on a dense copy: shape inference rejects sparse initializers as op inputs
        inferred = onnx.shape_inference.infer_shapes(densify(proto), data_prop=True)
    except Exception:  # inference gives up on some valid models: use the shapes they state
        inferred = proto
    values = (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param or None
                       for d in v.type.tensor_type.shape.dim] for v in values}
    first = shapes.get(inferred.graph.input[0].name) if inferred.graph.input else None
    batch = first[0] if first else None  # the input's batch size, as a number or a name
    weights = _constants(proto)
    fixed = _input_free(proto.graph)
    total, uncounted = 0, []
    for node in proto.graph.node:
        if all(name in fixed for name in node.input if name):
            continue  # computed from the weights alone: once, when onnxruntime loads the file
        if node.op_type == "Attention":
            found = _attention(node, shapes, batch)
            total += found or 0
            uncounted += [] if found is not None else [node.op_type]
            continue
        weight = _weight_input(node)
        if weight is None:
            continue
        out = shapes.get(node.output[0])
        w = weights.get(weight)
        if w is None and node.op_type == "MatMul" and node.input[0] not in weights:
            a = shapes.get(node.input[0])
            rows = _per_sample(out, batch)
            rows = rows if rows is not None or not out else _past_first(out[1:])
            if rows is not None and a and isinstance(a[-1], int):
                total += 2 * rows * a[-1]  # of two activations: K multiply-adds per entry
                continue
        positions = _positions(node, out, batch)
        if w is None or positions is None:
            uncounted.append(node.op_type)
            continue
        total += 2 * (int(np.count_nonzero(w)) if nonzero else int(w.size)) * positions
    return total, tuple(sorted(set(uncounted)))


def _attention(node: onnx.NodeProto, shapes: dict[str, list],
               batch: int | str | None) -> int | None:
    """FLOPs of one sample of an Attention op: q·kᵀ and the probabilities times v, each key
    read by every query entry and every output entry, [batch, tokens, heads x size] or
    [batch, heads, tokens, size] alike."""
    q, k, out = (shapes.get(name) for name in (node.input[0], node.input[1], node.output[0]))
    if not k or len(k) not in (3, 4) or not isinstance(k[-2 if len(k) == 4 else 1], int):
        return None
    keys = k[-2 if len(k) == 4 else 1]
    reads = [_per_sample(q, batch), _per_sample(out, batch)]
    return None if None in reads else 2 * keys * sum(reads)


def _input_free(graph: onnx.GraphProto) -> set[str]:
    """The values computed without the graph's inputs: initializers, constants and what
    nodes compute from them alone (a position table projected by a layer, as DeBERTa's)."""
    fixed = {t.name for t in graph.initializer} | \
        {s.values.name for s in graph.sparse_initializer}
    for node in graph.node:  # in topological order, as onnx requires
        if all(name in fixed for name in node.input if name):
            fixed.update(name for name in node.output if name)
    return fixed


def _per_sample(dims: list | None, batch: int | str | None) -> int | None:
    """How many entries of a tensor of shape `dims` one sample makes, the input's first axis
    being `batch`: the batch may sit on any axis ([tokens, batch, F] after
    nn.MultiheadAttention) and be multiplied into it (Swin's windows: [9*batch, tokens, F]);
    None where a size is unknown or not a multiple of the batch."""
    if dims is None or batch is None or any(d is None for d in dims):
        return None
    try:  # sympy comes with torch; onnx writes derived sizes as expressions ("9*batch")
        ratio = math.prod(_expr(d) for d in dims) / _expr(batch)
    except (sympy.SympifyError, TypeError, ZeroDivisionError):
        return None
    return int(ratio) if ratio.is_Integer and ratio > 0 else None


def _expr(size: int | str) -> sympy.Expr:
    """An ONNX size as a sympy expression, its names as symbols ("N" too, which sympy would
    otherwise read as its own function)."""
    if isinstance(size, int):
        return sympy.Integer(size)
    names = {name: sympy.Symbol(name) for name in re.findall(r"[A-Za-z_]\w*", size)}
    return sympy.sympify(size, locals=names)


def _weight_input(node: onnx.NodeProto) -> str | None:
    if node.op_type in _MATMUL or node.op_type in _CONV:
        return node.input[1]
    if node.op_type == "Gemm":
        return node.input[1]
    if node.op_type in _QLINEAR:
        return node.input[_QLINEAR[node.op_type]]
    return None


def _positions(node: onnx.NodeProto, out: list | None, batch: int | str | None) -> int | None:
    """How often each weight is used for one sample: the output's entries per sample over its
    channels (the last axis of MatMul and Gemm, [N, T, out] -> T; axis 1 of Conv, the
    spatial positions)."""
    if out is None or len(out) < 2:
        return 1 if node.op_type == "Gemm" else None
    conv = node.op_type in _CONV or node.op_type == "QLinearConv"
    found = _per_sample([out[0], *out[2:]] if conv else out[:-1], batch)
    return found if found is not None else _past_first(out[2:] if conv else out[1:-1])


def _past_first(dims: list) -> int | None:
    """The product of `dims` (the axes after the first, which is taken for the batch) where
    the batch could not be placed (its size written under another name)."""
    return math.prod(dims) if all(isinstance(d, int) for d in dims) else None


def _constants(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    found = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for sparse in proto.graph.sparse_initializer:  # the dense tensor it stands for
        dense = np.zeros(tuple(sparse.dims), dtype=numpy_helper.to_array(sparse.values).dtype)
        indices = numpy_helper.to_array(sparse.indices)
        flat = indices if indices.ndim == 1 else np.ravel_multi_index(indices.T, dense.shape)
        dense.reshape(-1)[flat] = numpy_helper.to_array(sparse.values)
        found[sparse.values.name] = dense
    for node in proto.graph.node:
        for a in node.attribute:
            if node.op_type == "Constant" and a.name == "value":
                found[node.output[0]] = numpy_helper.to_array(a.t)
    return found


def fit_input(model: OnnxModel, x: torch.Tensor, *, source: str) -> torch.Tensor:
    """`x` in the model's input dtype and reshaped to its per-sample input shape (same number
    of values); token ids and floats are not converted into each other."""
    dims = model.runnable().input_dims
    x = apply(x, lambda t: _fit_dtype(t, model.input_dtype, f"{source} holds",
                                      f"{model.path} takes"))
    if list(x.shape[1:]) == list(dims) or (None in dims and len(dims) == x.ndim - 1):
        return x
    if None not in dims and math.prod(dims) == math.prod(x.shape[1:]):
        return apply(x, lambda t: t.reshape(t.shape[0], *dims))
    takes = ", ".join("?" if d is None else str(d) for d in dims)
    raise DataError(f"{source} has inputs of shape [N, {', '.join(map(str, x.shape[1:]))}] but "
                    f"{model.path} takes [N, {takes}]: give data in the model's input shape")


def random_input(model: OnnxModel, n: int, *, seed: int = 0) -> torch.Tensor:
    """`n` inputs in the model's input shape and dtype (for timing without data): uniform
    [0, 1) floats, or zeros as token ids."""
    if None in model.runnable().input_dims:
        raise DataError(f"{model.path} has a symbolic input shape "
                        f"{['?' if d is None else d for d in model.input_dims]}: pass --data so "
                        "latency is measured on real inputs")
    return torch.from_numpy(example_input(model.proto, n, seed=seed))


def _fit_dtype(x: torch.Tensor, takes: torch.dtype, holds: str, model: str) -> torch.Tensor:
    """`x` as `takes`: floats stay floats and integer ids integers; floats and ids are not
    converted into each other (one line naming both dtypes)."""
    if x.is_floating_point() == takes.is_floating_point:
        return x.to(takes)
    what = "token ids" if not takes.is_floating_point else "float inputs"
    fix = ("give x as integer token ids [N, T]" if not takes.is_floating_point else
           "give float32 inputs (integer token ids are for a model that starts with an "
           "Embedding)")
    raise DataError(f"{holds} {str(x.dtype).removeprefix('torch.')} inputs and {model} "
                    f"{what} ({str(takes).removeprefix('torch.')}): {fix}")


def predictions(model: OnnxModel, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Top-1 classes of `x` (already fitted) in onnxruntime, and the number of classes."""
    try:
        out = run_onnx(session(model.data), x)
    except Exception as e:  # onnxruntime raises its own types for wrong inputs
        raise DataError(f"onnxruntime cannot run {model.path} on the data ({first_line(e)}): "
                        "give data in the model's input shape and dtype") from e
    if out.ndim != 2:
        raise ModelError(f"{model.path} returns shape [N, {', '.join(map(str, out.shape[1:]))}]: "
                         "accuracy and agreement need logits [N, classes]")
    return out.argmax(1), int(out.shape[1])
