"""Storage formats of a pruned ONNX model, each with its unpack:

- sparse storage (`store_sparse` / `densify`): weight matrices as ONNX sparse initializers
  (COO with linear int64 indices), only where that makes the file smaller: above 2/3 zeros
  for float32, 8/9 for int8. onnxruntime turns them back into dense tensors when it loads the
  file, so a plain session gets a smaller file and the same speed; `compressor.runtime` runs
  them with sparse kernels.
- int8 (`quantize` / `dequantize`): onnxruntime dynamic quantization of Gemm and MatMul,
  QInt8 weights with a per-tensor scale, activations quantized at run time; with calibration
  inputs, convolutions are quantized statically (QDQ: per-channel QInt8 weights, QUInt8
  activations whose ranges are measured on the calibration inputs), which onnxruntime runs
  as QLinearConv. `dequantize` unpacks the dynamic part only.
- low rank (`factors` / `factorize`): a Gemm, MatMul or ungrouped Conv as two thinner layers,
  the truncated SVD of its weight (a conv's first factor keeps the kernel, the second is 1x1).
  Approximate unless the rank is the matrix's; `pack` chooses where it pays.

The round trips are exact: densify(store_sparse(m)) has m's weights bit for bit, and
quantize(dequantize(q)) has q's int8 weights, scales and zero points.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ExportError, first_line
from ..io.quiet import quiet
from ..runtime.storage import to_dense

INDEX_BYTES = 8  # onnx.checker wants int64 indices
_WEIGHT_INPUT = {"Gemm": 1, "MatMul": 1, "MatMulInteger": 1}


def weight_names(proto: onnx.ModelProto) -> list[str]:
    """Names of the constant weight matrices of Gemm, MatMul and MatMulInteger nodes and of
    statically quantized convolutions (the int8 kernel their DequantizeLinear reads), in graph
    order (dense or sparse initializers)."""
    stored = {t.name for t in proto.graph.initializer} | \
        {s.values.name for s in proto.graph.sparse_initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    names = []
    for node in proto.graph.node:
        index = _WEIGHT_INPUT.get(node.op_type)
        if node.op_type == "Conv" and len(node.input) > 1:
            source = producer.get(node.input[1])
            if source is not None and source.op_type == "DequantizeLinear" and \
                    source.input[0] in stored and source.input[0] not in names:
                names.append(source.input[0])
        elif index is not None and len(node.input) > index and node.input[index] in stored \
                and node.input[index] not in names:
            names.append(node.input[index])
    return names


def sparse_pays(array: np.ndarray) -> bool:
    """Whether COO storage (value + int64 index per non-zero) is smaller than dense."""
    return np.count_nonzero(array) * (array.itemsize + INDEX_BYTES) < array.size * array.itemsize


def store_sparse(proto: onnx.ModelProto, *, names: list[str] | None = None) -> onnx.ModelProto:
    """A copy of `proto` with each weight matrix (of `names`, default all) stored as a sparse
    initializer where that is smaller. Call it last: tools that rewrite graphs (the exporter's
    optimizer, the quantizer) drop sparse initializers."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    chosen = set(weight_names(out) if names is None else names)
    for tensor in [t for t in graph.initializer if t.name in chosen]:
        array = numpy_helper.to_array(tensor)
        if array.ndim < 2 or not sparse_pays(array):
            continue
        flat = array.reshape(-1)
        index = np.flatnonzero(flat).astype(np.int64)
        values = numpy_helper.from_array(flat[index], tensor.name)
        sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(index, ""),
                                           list(array.shape))
        graph.initializer.remove(tensor)
        graph.sparse_initializer.append(sparse)
        for info in [v for v in graph.value_info if v.name == tensor.name]:
            graph.value_info.remove(info)
    return out


def densify(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `proto` with every sparse initializer stored densely (unpacks `store_sparse`)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for sparse in list(out.graph.sparse_initializer):
        out.graph.initializer.append(numpy_helper.from_array(to_dense(sparse), sparse.values.name))
    del out.graph.sparse_initializer[:]
    return out


def sparsity(proto: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...], float]]:
    """Per weight matrix: its shape and the fraction of its entries that are zero."""
    arrays = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    arrays |= {s.values.name: to_dense(s) for s in proto.graph.sparse_initializer}
    return {name: (arrays[name].shape, 1 - np.count_nonzero(arrays[name]) / arrays[name].size)
            for name in weight_names(proto)}


def quantize(proto: onnx.ModelProto, *, nodes: list[str] | None = None,
             calibration: np.ndarray | None = None) -> onnx.ModelProto:
    """onnxruntime dynamic quantization (QInt8 weights, per-tensor scale) of the MatMul and Gemm
    nodes named `nodes` (default all); with `calibration` inputs, static QDQ quantization of
    the Conv nodes first (per-channel QInt8 weights, QUInt8 activations, MinMax ranges on the
    calibration inputs), except a conv that reads the model's input: quantizing raw pixels
    costs accuracy (measured in docs/formats.md).
    Sparse initializers are densified first."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    with tempfile.TemporaryDirectory(prefix="compressor-int8-") as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        dense = densify(proto)
        weights = {t.name for t in dense.graph.initializer}
        for info in [v for v in dense.graph.value_info if v.name in weights]:
            dense.graph.value_info.remove(info)  # stale once the quantizer transposes weights
        onnx.save_model(dense, source)
        raw = {i.name for i in dense.graph.input}  # a conv reading them stays float32
        convs = [n.name for n in dense.graph.node if n.op_type == "Conv" and
                 n.input[0] not in raw and (nodes is None or n.name in nodes)]
        try:
            with quiet():
                if calibration is not None and convs:
                    static = Path(tmp) / "conv-int8.onnx"
                    quantize_static(source, static, _Calibration(dense, calibration),
                                    quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                                    nodes_to_quantize=convs, per_channel=True,
                                    activation_type=QuantType.QUInt8,
                                    weight_type=QuantType.QInt8)
                    source = static
                quantize_dynamic(source, target, weight_type=QuantType.QInt8,
                                 op_types_to_quantize=["MatMul", "Gemm"],
                                 nodes_to_quantize=nodes)
        except Exception as e:  # the quantizer raises many types
            raise ExportError(f"int8 quantization failed ({first_line(e)}); nothing was written"
                              ) from e
        return onnx.load_model(target)


class _Calibration:
    """onnxruntime's CalibrationDataReader over calibration inputs, in batches."""

    BATCH = 100

    def __init__(self, proto: onnx.ModelProto, x: np.ndarray) -> None:
        self._name = proto.graph.input[0].name
        self._batches = iter(np.ascontiguousarray(x[i:i + self.BATCH], dtype=np.float32)
                             for i in range(0, len(x), self.BATCH))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._name: batch}


def dequantize(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A float32 copy of a dynamically quantized model (unpacks `quantize`): each
    MatMulInteger with its scale chain becomes a MatMul with weight (q - zero_point) x scale,
    fed the float activations that DynamicQuantizeLinear read."""
    out = densify(proto)
    graph = out.graph
    init = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    drop, replace = [], {}
    for mmi in [n for n in graph.node if n.op_type == "MatMulInteger"]:
        dql = producer.get(mmi.input[0])
        (cast,) = readers[mmi.output[0]]
        (mul,) = readers[cast.output[0]]
        if dql is None or dql.op_type != "DynamicQuantizeLinear" or cast.op_type != "Cast" or \
                mul.op_type != "Mul":
            raise ExportError(f"cannot unpack {mmi.name}: not onnxruntime's dynamic "
                              "quantization pattern")
        scales = producer[mul.input[1]]
        q, zero = (numpy_helper.to_array(init[mmi.input[i]]) for i in (1, 3))
        w_scale = numpy_helper.to_array(init[scales.input[1]])
        weight = ((q.astype(np.float32) - zero.astype(np.float32)) * w_scale).astype(np.float32)
        name = mmi.input[1].removesuffix("_quantized")
        graph.initializer.append(numpy_helper.from_array(weight, name))
        replace[mmi.name] = helper.make_node("MatMul", [dql.input[0], name], [mul.output[0]],
                                             name=mmi.name)
        drop += [cast, mul, scales]
    kept = [replace.get(n.name, n) for n in graph.node if all(n is not d for d in drop)]
    used = {i for n in kept for i in n.input} | {o.name for o in graph.output}
    kept = [n for n in kept if n.op_type != "DynamicQuantizeLinear" or
            any(o in used for o in n.output)]
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in kept for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)
    for v in [v for v in graph.value_info if v.name not in used]:
        graph.value_info.remove(v)
    return out


@dataclass(frozen=True)
class Factor:
    """One weight matrix's truncated SVD: the layer computes x -> B(A x) with A [rank, inputs]
    and B [outputs, rank] instead of W [outputs, inputs] (a conv's inputs are its in-channels x
    kernel positions, and A becomes a conv with W's kernel, B a 1x1 conv)."""

    node: str  # the Gemm, MatMul or Conv node
    weight: str  # its weight initializer
    shape: tuple[int, int]  # W as a matrix: outputs x inputs
    rank: int  # the smallest rank keeping `energy` of the squared singular values
    energy: float  # share of the squared singular values the rank keeps

    @property
    def weights(self) -> tuple[int, int]:
        """Weights of W and of the two factors."""
        out, inp = self.shape
        return out * inp, self.rank * (out + inp)


def factors(proto: onnx.ModelProto, *, energy: float) -> list[Factor]:
    """Every Gemm (alpha = beta = 1, transA = 0), MatMul with a constant right-hand side and
    ungrouped 2-D Conv with a constant kernel, with the rank that keeps `energy` (0 < energy
    <= 1) of its squared singular values, in graph order."""
    arrays = _constants(proto)
    out = []
    for node in proto.graph.node:
        matrix = _as_matrix(node, arrays)
        if matrix is None:
            continue
        s = np.linalg.svd(matrix.astype(np.float64), compute_uv=False)
        total = float(np.sum(s ** 2))
        rank = 1 if total == 0 else \
            int(np.searchsorted(np.cumsum(s ** 2) / total, energy - 1e-12) + 1)
        rank = min(rank, len(s))
        kept = 1.0 if total == 0 else float(np.sum(s[:rank] ** 2) / total)
        out.append(Factor(node.name, node.input[1], matrix.shape, rank, kept))
    return out


def factorize(proto: onnx.ModelProto, chosen: list[Factor]) -> onnx.ModelProto:
    """A copy of `proto` with each layer of `chosen` replaced by its two factors (truncated SVD
    with the square root of the singular values on each side, computed in float64). Sparse
    initializers are densified first."""
    out = densify(proto)
    graph = out.graph
    arrays = _constants(out)
    by_node = {f.node: f for f in chosen}
    nodes = []
    for node in graph.node:
        factor = by_node.get(node.name)
        if factor is None:
            nodes.append(node)
            continue
        u, s, vt = np.linalg.svd(_as_matrix(node, arrays).astype(np.float64),
                                 full_matrices=False)
        root = np.sqrt(s[:factor.rank])
        a = (root[:, None] * vt[:factor.rank]).astype(np.float32)  # rank x inputs
        b = (u[:, :factor.rank] * root).astype(np.float32)  # outputs x rank
        nodes += _factor_nodes(node, arrays[node.input[1]], a, b, graph)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)
    for v in [v for v in graph.value_info if v.name not in used]:
        graph.value_info.remove(v)
    return out


def _constants(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    arrays = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    return arrays | {s.values.name: to_dense(s) for s in proto.graph.sparse_initializer}


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _as_matrix(node: onnx.NodeProto, arrays: dict[str, np.ndarray]) -> np.ndarray | None:
    """The node's weight as outputs x inputs, or None where it cannot be factored."""
    if len(node.input) < 2 or node.input[1] not in arrays:
        return None
    w, attrs = arrays[node.input[1]], _attrs(node)
    if node.op_type == "Gemm" and w.ndim == 2 and attrs.get("alpha", 1.0) == 1.0 and \
            attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0):
        return w if attrs.get("transB", 0) else w.T
    if node.op_type == "MatMul" and w.ndim == 2 and node.input[0] not in arrays:
        return w.T
    if node.op_type == "Conv" and w.ndim == 4 and attrs.get("group", 1) == 1:
        return w.reshape(w.shape[0], -1)
    return None


def _factor_nodes(node: onnx.NodeProto, w: np.ndarray, a: np.ndarray, b: np.ndarray,
                  graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The two nodes computing `node` with its weight replaced by b @ a; their weights are
    added to `graph` as `<weight>_lowrank_a` and `_b`."""
    name_a, name_b = f"{node.input[1]}_lowrank_a", f"{node.input[1]}_lowrank_b"
    middle = f"{node.output[0]}_lowrank"
    rest = list(node.input[2:])  # the bias
    if node.op_type == "Gemm":
        graph.initializer.extend([numpy_helper.from_array(a, name_a),
                                  numpy_helper.from_array(b, name_b)])
        return [helper.make_node("Gemm", [node.input[0], name_a], [middle],
                                 name=f"{node.name}_lowrank_a", transB=1),
                helper.make_node("Gemm", [middle, name_b, *rest], list(node.output),
                                 name=f"{node.name}_lowrank_b", transB=1)]
    if node.op_type == "MatMul":
        graph.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(a.T), name_a),
                                  numpy_helper.from_array(np.ascontiguousarray(b.T), name_b)])
        return [helper.make_node("MatMul", [node.input[0], name_a], [middle],
                                 name=f"{node.name}_lowrank_a"),
                helper.make_node("MatMul", [middle, name_b], list(node.output),
                                 name=f"{node.name}_lowrank_b")]
    graph.initializer.extend([numpy_helper.from_array(a.reshape(-1, *w.shape[1:]), name_a),
                              numpy_helper.from_array(b.reshape(*b.shape, 1, 1), name_b)])
    attrs = _attrs(node)
    return [helper.make_node("Conv", [node.input[0], name_a], [middle],
                             name=f"{node.name}_lowrank_a", **attrs),
            helper.make_node("Conv", [middle, name_b, *rest], list(node.output),
                             name=f"{node.name}_lowrank_b", kernel_shape=[1, 1])]
