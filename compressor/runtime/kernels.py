"""The kernels one sparse layer (y = x @ W.T + b) can run with, and their timing on this CPU:

- `dense`: onnxruntime's Gemm, with the weight made dense;
- `ort-sparse`: onnxruntime's com.microsoft SparseToDenseMatMul, the CSR weight fed as a
  run-time input (onnxruntime accepts sparse tensors only as inputs); single-threaded;
- `scipy`: scipy's CSR x dense product, between two onnxruntime sessions; single-threaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import scipy.sparse
from onnx import TensorProto, helper, numpy_helper

from .session import session
from .timing import time_ms

KERNELS = ("dense", "ort-sparse", "scipy")
MS_DOMAIN = "com.microsoft"


@dataclass
class SparseLayer:
    """A sparse layer found in the graph."""

    node: onnx.NodeProto
    name: str
    x: str  # input tensor
    y: str  # output tensor
    weight: scipy.sparse.csr_matrix  # [out, in]
    bias: np.ndarray | None  # [out]


class OrtStage:
    """Part of the graph, from one tensor to another, in one onnxruntime session."""

    def __init__(self, proto: onnx.ModelProto, start: str, end: str,
                 feeds: dict[str, ort.OrtValue], threads: int) -> None:
        self.session = session(proto.SerializeToString(), threads=threads)
        names = {i.name for i in self.session.get_inputs()}
        self.feeds = {k: v for k, v in feeds.items() if k in names}
        self.start, self.end = start, end

    def __call__(self, values: dict) -> None:
        if self.feeds:
            inputs = dict(self.feeds, **{self.start: ort.OrtValue.ortvalue_from_numpy(
                values[self.start])})
            values[self.end] = self.session.run_with_ort_values([self.end], inputs)[0].numpy()
        else:
            values[self.end] = self.session.run([self.end], {self.start: values[self.start]})[0]


class ScipyStage:
    """One layer as a scipy CSR x dense product: y = (W @ x.T).T + b."""

    def __init__(self, layer: SparseLayer) -> None:
        self.weight, self.bias, self.x, self.y = layer.weight, layer.bias, layer.x, layer.y

    def __call__(self, values: dict) -> None:
        product = (self.weight @ values[self.x].T).T
        values[self.y] = np.add(product, self.bias, order="C", dtype=np.float32) \
            if self.bias is not None else np.ascontiguousarray(product, dtype=np.float32)


def ort_csr(w: scipy.sparse.csr_matrix) -> ort.OrtValue:
    """`w` as an onnxruntime CSR sparse tensor (what SparseToDenseMatMul is fed)."""
    tensor = ort.SparseTensor.sparse_csr_from_numpy(
        np.array(w.shape, dtype=np.int64), w.data.astype(np.float32),
        w.indices.astype(np.int64), w.indptr.astype(np.int64), ort.OrtDevice.make("cpu", 0))
    return ort.OrtValue.ort_value_from_sparse_tensor(tensor)


def sparse_matmul_nodes(layer: SparseLayer, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """y = x @ W.T + b as SparseToDenseMatMul(W, x, transB=1) -> [out, N], Transpose, Add."""
    tag = layer.node.name or layer.y
    yt = f"{tag}/sparse_yt"
    nodes = [helper.make_node("SparseToDenseMatMul", [layer.name, layer.x], [yt],
                              name=f"{tag}/sparse", domain=MS_DOMAIN, transB=1)]
    if layer.bias is None:
        return nodes + [helper.make_node("Transpose", [yt], [layer.y], perm=[1, 0])]
    bias = f"{tag}/sparse_bias"
    graph.initializer.append(numpy_helper.from_array(layer.bias, bias))
    return nodes + [helper.make_node("Transpose", [yt], [f"{tag}/sparse_y"], perm=[1, 0]),
                    helper.make_node("Add", [f"{tag}/sparse_y", bias], [layer.y])]


def time_kernels(weight: scipy.sparse.csr_matrix | np.ndarray, bias: np.ndarray | None, *,
                 batch: int, threads: int = 1, seconds: float = 0.05,
                 ir_version: int = 10) -> dict[str, float]:
    """Median ms of y = x @ weight.T + bias for each kernel, on this layer alone and random
    inputs of `batch` rows. The scipy kernel is charged one extra onnxruntime call, since the
    graph is cut around it.

    Args:
        weight: [out, in] float32 matrix.
        bias: [out] or None.
        batch, threads: the setting to measure (the sparse kernels use one thread).
        seconds: measuring time per kernel.
    """
    weight = scipy.sparse.csr_matrix(weight, dtype=np.float32)
    layer = SparseLayer(onnx.NodeProto(), "W", "x", "y", weight, bias)
    x = np.random.default_rng(0).standard_normal((batch, weight.shape[1]), dtype=np.float32)
    times = {}
    for kernel in ("dense", "ort-sparse"):
        g = helper.make_graph([], "layer", [helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, ["N", weight.shape[1]])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        if kernel == "dense":
            g.initializer.append(numpy_helper.from_array(weight.toarray(), "W"))
            if bias is not None:
                g.initializer.append(numpy_helper.from_array(bias, "b"))
            g.node.append(helper.make_node("Gemm", ["x", "W"] + (["b"] if bias is not None
                                                                 else []), ["y"], transB=1))
        else:
            g.node.extend(sparse_matmul_nodes(layer, g))
            g.input.append(helper.make_sparse_tensor_value_info("W", TensorProto.FLOAT, None))
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18),
                                                helper.make_opsetid(MS_DOMAIN, 1)],
                              ir_version=ir_version)
        feeds = {"W": ort_csr(weight)} if kernel == "ort-sparse" else {}
        stage = OrtStage(m, "x", "y", feeds, threads)
        times[kernel] = time_ms(lambda stage=stage: stage({"x": x}), seconds)
    call = OrtStage(_identity(ir_version), "x", "y", {}, threads)
    scipy_stage = ScipyStage(layer)
    times["scipy"] = time_ms(lambda: scipy_stage({"x": x}), seconds) + \
        time_ms(lambda: call({"x": x[:1, :1]}), seconds / 2)
    return {k: round(v, 5) for k, v in times.items()}


def _identity(ir_version: int) -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "call",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)],
                             ir_version=ir_version)


