"""`SparseModel`: an ONNX file whose sparse layers run with the kernel chosen for each; the graph
is cut into onnxruntime segments around layers that run in scipy."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import onnx
import onnxruntime as ort
import scipy.sparse
from onnx import TensorProto, helper, numpy_helper

from .kernels import (
    KERNELS,
    MS_DOMAIN,
    OrtStage,
    ScipyStage,
    SparseLayer,
    ort_csr,
    sparse_matmul_nodes,
    time_kernels,
)
from .storage import stored_kernels, to_dense
from .timing import latencies_ms


@dataclass(frozen=True)
class Layer:
    """One sparse layer: its weight's name, [out, in] shape, share of zeros, the kernel it
    runs with, and the measured time of each kernel in ms (empty when the kernel was given)."""

    name: str
    shape: tuple[int, int]
    sparsity: float
    kernel: str
    times_ms: Mapping[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def why(self) -> str:
        """One line: what was chosen over what, with the times."""
        if not self.times_ms:
            return self.note or f"{self.kernel} (given)"
        times = ", ".join(f"{k} {v:.4f} ms" for k, v in
                          sorted(self.times_ms.items(), key=lambda kv: kv[1]))
        return f"{self.note}; alone: {times}" if self.note else times


class SparseModel:
    """An ONNX model whose sparse layers run with the kernel chosen for each (see module doc)."""

    def __init__(self, stages: list[Callable[[dict], None]], input_name: str, output_name: str,
                 layers: tuple[Layer, ...], input_dtype: type = np.float32) -> None:
        self._stages, self.input_name, self.output_name = stages, input_name, output_name
        self.layers, self.input_dtype = layers, np.dtype(input_dtype)

    @classmethod
    def load(cls, model: str | Path | bytes | onnx.ModelProto, *, batch: int = 1,
             threads: int = 1, kernels: str | Mapping[str, str] = "measure",
             seconds: float = 0.05, fallback: bool = True) -> SparseModel:
        """Load `model` and choose a kernel per sparse layer.

        Args:
            model: ONNX file, bytes or ModelProto (one input, one output).
            batch: batch size to choose kernels for (kernels that win at 256 lose at 1).
            threads: onnxruntime intra-op threads (the sparse kernels use one).
            kernels: "measure" (time every kernel on this CPU on each layer alone and keep
                the fastest), "stored" (the choice `compress` measured and wrote into the
                file), one kernel name for every layer, or {weight name: kernel}.
            seconds: time spent measuring each kernel of each layer.
            fallback: with "measure", run all-dense if the whole model with the chosen
                kernels is not faster.
        """
        proto = _load(model)
        if kernels == "stored":
            kernels = stored_kernels(proto)
        if len(proto.graph.input) != 1 or len(proto.graph.output) != 1:
            raise ValueError("compressor.runtime runs models with one input and one output")
        found = _sparse_layers(proto)
        if kernels == "measure":
            layers = tuple(_measure(layer, proto, batch=batch, threads=threads, seconds=seconds)
                           for layer in found)
        else:
            given = {layer.name: kernels for layer in found} if isinstance(kernels, str) \
                else dict(kernels)
            unknown = set(given.values()) - set(KERNELS) or set(given) - {s.name for s in found}
            if unknown:
                raise ValueError(f"unknown kernels or layers {sorted(unknown)}: kernels are "
                                 f"{', '.join(KERNELS)}; layers {[s.name for s in found]}")
            layers = tuple(Layer(s.name, s.weight.shape, _sparsity(s.weight),
                                 given.get(s.name, "dense")) for s in found)
        built = cls._build(proto, found, layers, threads=threads)
        if kernels == "measure" and fallback and any(layer.kernel != "dense" for layer in layers):
            dense = cls._build(proto, found, tuple(_as_dense(layer, "") for layer in layers),
                               threads=threads)
            x = example_input(proto, batch)
            sparse_ms, dense_ms = latencies_ms([lambda: built.run(x), lambda: dense.run(x)],
                                               seconds=seconds * 8, rounds=4, min_calls=20,
                                               warmup=3)
            if sparse_ms >= dense_ms:
                note = (f"dense: the model with sparse kernels took {sparse_ms:.4f} ms, all-dense "
                        f"{dense_ms:.4f} ms at batch {batch}")
                return cls._build(proto, found, tuple(_as_dense(layer, note) for layer in layers),
                                  threads=threads)
        return built

    @classmethod
    def _build(cls, proto: onnx.ModelProto, found: list[SparseLayer], layers: tuple[Layer, ...], *,
               threads: int) -> SparseModel:
        graph = onnx.ModelProto()
        graph.CopyFrom(proto)
        kernel = {layer.name: layer.kernel for layer in layers}
        sparse_names = {s.name for s in found}
        feeds: dict[str, ort.OrtValue] = {}
        cuts: list[SparseLayer] = []
        nodes = []
        for node in graph.graph.node:
            layer = next((s for s in found if s.node == node), None)
            if layer is None or kernel[layer.name] == "dense":
                nodes.append(node)
            elif kernel[layer.name] == "ort-sparse":
                nodes += sparse_matmul_nodes(layer, graph.graph)
                feeds[layer.name] = ort_csr(layer.weight)
            else:
                cuts.append(layer)
        del graph.graph.node[:]
        graph.graph.node.extend(nodes)
        _densify(graph.graph, keep={n for n in sparse_names if kernel[n] == "ort-sparse"})
        for name in feeds:
            graph.graph.input.append(helper.make_sparse_tensor_value_info(
                name, TensorProto.FLOAT, None))  # no shape: its inference ignores transB
        if feeds:
            graph.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
        input_name, output_name = graph.graph.input[0].name, graph.graph.output[0].name
        stages: list[Callable[[dict], None]] = []
        start = input_name
        for cut in cuts + [None]:
            end = output_name if cut is None else cut.x
            if end != start:
                stages.append(OrtStage(_segment(graph, start, end, list(feeds)), start, end,
                                        feeds, threads))
            if cut is not None:
                stages.append(ScipyStage(cut))
                start = cut.y
        return cls(stages, input_name, output_name, layers, input_dtype(proto))

    def run(self, x: np.ndarray) -> np.ndarray:
        """The model's output for `x` (batch first; float32, or int64 token ids where the
        model's input is integer)."""
        values = {self.input_name: np.ascontiguousarray(x, dtype=self.input_dtype)}
        for stage in self._stages:
            stage(values)
        return values[self.output_name]


def _load(model: str | Path | bytes | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    return onnx.load(str(model))


def _sparse_layers(proto: onnx.ModelProto) -> list[SparseLayer]:
    """Gemm (alpha = beta = 1, no transA, 1-D bias) and MatMul nodes with a 2-D float sparse
    initializer as their weight, reading a 2-D input."""
    sparse = {s.values.name: s for s in proto.graph.sparse_initializer
              if len(s.dims) == 2 and s.values.data_type == TensorProto.FLOAT}
    dense = {t.name: t for t in proto.graph.initializer}
    found = []
    for node in proto.graph.node:
        if node.op_type not in ("Gemm", "MatMul") or len(node.input) < 2 or \
                node.input[1] not in sparse:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA"):
            continue
        w = to_dense(sparse[node.input[1]])
        if node.op_type == "MatMul" or not attrs.get("transB"):
            w = w.T  # stored [in, out]
        bias = None
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in dense:
                continue
            bias = numpy_helper.to_array(dense[node.input[2]]).astype(np.float32)
            if bias.shape != (w.shape[0],):
                continue
        found.append(SparseLayer(node, node.input[1], node.input[0], node.output[0],
                             scipy.sparse.csr_matrix(np.ascontiguousarray(w)), bias))
    return found


def _sparsity(w: scipy.sparse.csr_matrix) -> float:
    return 1 - w.nnz / (w.shape[0] * w.shape[1])


def _as_dense(layer: Layer, note: str) -> Layer:
    return Layer(layer.name, layer.shape, layer.sparsity, "dense", layer.times_ms, note)


def _densify(graph: onnx.GraphProto, *, keep: set[str]) -> None:
    """Sparse initializers not fed to a sparse kernel become dense; those fed become inputs."""
    for sparse in list(graph.sparse_initializer):
        if sparse.values.name not in keep:
            graph.initializer.append(numpy_helper.from_array(to_dense(sparse), sparse.values.name))
    del graph.sparse_initializer[:]


def _segment(proto: onnx.ModelProto, start: str, end: str, feeds: list[str]) -> onnx.ModelProto:
    """The nodes that compute `end` from `start` (and constants), as a model."""
    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    constants = {t.name for t in graph.initializer}
    needed, nodes, seen = [end], [], set()
    while needed:
        name = needed.pop()
        if name in seen or name == start or name in constants or name in feeds or not name:
            continue
        seen.add(name)
        node = producer.get(name)
        if node is None:
            raise ValueError(f"the graph cannot be cut between {start} and {end}: {name} is "
                             "needed and computed before the cut")
        if node not in nodes:
            nodes.append(node)
            needed += list(node.input)
    nodes.sort(key=lambda n: list(graph.node).index(n))
    used = {i for n in nodes for i in n.input}
    given = next((i for i in graph.input if i.name == start), None)  # the model's own input
    inputs = [given or helper.make_tensor_value_info(start, TensorProto.FLOAT, None)]
    inputs += [i for i in graph.input if i.name in feeds and i.name in used]
    sub = helper.make_graph(nodes, "segment", inputs,
                            [helper.make_tensor_value_info(end, TensorProto.FLOAT, None)],
                            [t for t in graph.initializer if t.name in used])
    return helper.make_model(sub, opset_imports=list(proto.opset_import),
                             ir_version=proto.ir_version)


def input_dtype(proto: onnx.ModelProto) -> np.dtype:
    """The numpy dtype of the model's (first) input."""
    return np.dtype(helper.tensor_dtype_to_np_dtype(proto.graph.input[0].type.tensor_type.elem_type))


def example_input(proto: onnx.ModelProto, batch: int, *, seed: int = 0) -> np.ndarray:
    """`batch` inputs to time or trace the model with, symbolic sizes as 1: uniform [0, 1) for
    a float input, zeros for an integer one (token ids: 0 is an id of every vocabulary)."""
    dims = [d.dim_value if d.HasField("dim_value") else 1
            for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]]
    dtype = input_dtype(proto)
    if np.issubdtype(dtype, np.integer):
        return np.zeros((batch, *dims), dtype=dtype)
    return np.random.default_rng(seed).random((batch, *dims), dtype=np.float32).astype(dtype)


def _measure(layer: SparseLayer, proto: onnx.ModelProto, *, batch: int, threads: int,
             seconds: float) -> Layer:
    times = time_kernels(layer.weight, layer.bias, batch=batch, threads=threads,
                         seconds=seconds, ir_version=proto.ir_version)
    return Layer(layer.name, layer.weight.shape, _sparsity(layer.weight),
                 min(times, key=times.get), times)


