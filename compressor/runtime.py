"""Run an ONNX file with sparse weights on the CPU, with sparse kernels where they are faster.

`compress --format csr` stores weight matrices as ONNX sparse initializers. A plain onnxruntime
session turns those into dense tensors when it loads the file: the file is smaller, the
speed is the dense model's. This module loads such a file and runs each sparse layer
(a Gemm or MatMul whose weight is a sparse initializer) with whichever kernel is fastest on
this CPU, at the batch size and thread count you run it at:

- `dense`: onnxruntime's Gemm, with the weight made dense;
- `ort-sparse`: onnxruntime's com.microsoft SparseToDenseMatMul, the CSR weight fed as a
  run-time input (onnxruntime accepts sparse tensors only as inputs); single-threaded;
- `scipy`: scipy's CSR x dense product, between two onnxruntime sessions (the graph is cut
  at the layer); single-threaded.

Everything else runs in onnxruntime. It needs numpy, scipy, onnx and onnxruntime, not torch::

    from compressor.runtime import SparseModel
    model = SparseModel.load("model.compressed.onnx", batch=32, threads=1)
    logits = model.run(x)           # x: float32 array [N, ...]
    for layer in model.layers:      # what was chosen, and the times that chose it
        print(layer.name, layer.kernel, layer.times_ms)
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import onnx
import onnxruntime as ort
import scipy.sparse
from onnx import TensorProto, helper, numpy_helper

from .formats import to_dense

KERNELS = ("dense", "ort-sparse", "scipy")
MS_DOMAIN = "com.microsoft"
KERNELS_KEY = "compressor.kernels"  # metadata: {weight name: kernel} measured by compress


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


@dataclass
class _Sparse:
    """A sparse layer found in the graph."""

    node: onnx.NodeProto
    name: str
    x: str  # input tensor
    y: str  # output tensor
    weight: scipy.sparse.csr_matrix  # [out, in]
    bias: np.ndarray | None  # [out]


class SparseModel:
    """An ONNX model whose sparse layers run with the kernel chosen for each (see module doc)."""

    def __init__(self, stages: list[Callable[[dict], None]], input_name: str, output_name: str,
                 layers: tuple[Layer, ...]) -> None:
        self._stages, self.input_name, self.output_name = stages, input_name, output_name
        self.layers = layers

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
            x = _example(proto, batch)
            sparse_ms, dense_ms = _alternating([lambda: built.run(x), lambda: dense.run(x)],
                                               seconds * 8)
            if sparse_ms >= dense_ms:
                note = (f"dense: the model with sparse kernels took {sparse_ms:.4f} ms, all-dense "
                        f"{dense_ms:.4f} ms at batch {batch}")
                return cls._build(proto, found, tuple(_as_dense(layer, note) for layer in layers),
                                  threads=threads)
        return built

    @classmethod
    def _build(cls, proto: onnx.ModelProto, found: list[_Sparse], layers: tuple[Layer, ...], *,
               threads: int) -> SparseModel:
        graph = onnx.ModelProto()
        graph.CopyFrom(proto)
        kernel = {layer.name: layer.kernel for layer in layers}
        sparse_names = {s.name for s in found}
        feeds: dict[str, ort.OrtValue] = {}
        cuts: list[_Sparse] = []
        nodes = []
        for node in graph.graph.node:
            layer = next((s for s in found if s.node == node), None)
            if layer is None or kernel[layer.name] == "dense":
                nodes.append(node)
            elif kernel[layer.name] == "ort-sparse":
                nodes += _sparse_matmul_nodes(layer, graph.graph)
                feeds[layer.name] = _ort_csr(layer.weight)
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
                stages.append(_OrtStage(_segment(graph, start, end, list(feeds)), start, end,
                                        feeds, threads))
            if cut is not None:
                stages.append(_ScipyStage(cut))
                start = cut.y
        return cls(stages, input_name, output_name, layers)

    def run(self, x: np.ndarray) -> np.ndarray:
        """The model's output for `x` (float32, batch first)."""
        values = {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}
        for stage in self._stages:
            stage(values)
        return values[self.output_name]


class _OrtStage:
    """Part of the graph, from one tensor to another, in one onnxruntime session."""

    def __init__(self, proto: onnx.ModelProto, start: str, end: str,
                 feeds: dict[str, ort.OrtValue], threads: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(proto.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])
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


class _ScipyStage:
    """One layer as a scipy CSR x dense product: y = (W @ x.T).T + b."""

    def __init__(self, layer: _Sparse) -> None:
        self.weight, self.bias, self.x, self.y = layer.weight, layer.bias, layer.x, layer.y

    def __call__(self, values: dict) -> None:
        product = (self.weight @ values[self.x].T).T
        values[self.y] = np.add(product, self.bias, order="C", dtype=np.float32) \
            if self.bias is not None else np.ascontiguousarray(product, dtype=np.float32)


def stored_kernels(proto: onnx.ModelProto) -> dict[str, str]:
    """The kernel per layer `compress` chose and recorded in the file (empty if none)."""
    for prop in proto.metadata_props:
        if prop.key == KERNELS_KEY:
            return json.loads(prop.value)
    return {}


def _load(model: str | Path | bytes | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    return onnx.load(str(model))


def _sparse_layers(proto: onnx.ModelProto) -> list[_Sparse]:
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
        found.append(_Sparse(node, node.input[1], node.input[0], node.output[0],
                             scipy.sparse.csr_matrix(np.ascontiguousarray(w)), bias))
    return found


def _sparsity(w: scipy.sparse.csr_matrix) -> float:
    return 1 - w.nnz / (w.shape[0] * w.shape[1])


def _as_dense(layer: Layer, note: str) -> Layer:
    return Layer(layer.name, layer.shape, layer.sparsity, "dense", layer.times_ms, note)


def _ort_csr(w: scipy.sparse.csr_matrix) -> ort.OrtValue:
    tensor = ort.SparseTensor.sparse_csr_from_numpy(
        np.array(w.shape, dtype=np.int64), w.data.astype(np.float32),
        w.indices.astype(np.int64), w.indptr.astype(np.int64), ort.OrtDevice.make("cpu", 0))
    return ort.OrtValue.ort_value_from_sparse_tensor(tensor)


def _sparse_matmul_nodes(layer: _Sparse, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
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
    inputs = [helper.make_tensor_value_info(start, TensorProto.FLOAT, None)]
    inputs += [i for i in graph.input if i.name in feeds and i.name in used]
    sub = helper.make_graph(nodes, "segment", inputs,
                            [helper.make_tensor_value_info(end, TensorProto.FLOAT, None)],
                            [t for t in graph.initializer if t.name in used])
    return helper.make_model(sub, opset_imports=list(proto.opset_import),
                             ir_version=proto.ir_version)


def _example(proto: onnx.ModelProto, batch: int) -> np.ndarray:
    dims = [d.dim_value if d.HasField("dim_value") else 1
            for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]]
    return np.random.default_rng(0).random((batch, *dims), dtype=np.float32)


def _measure(layer: _Sparse, proto: onnx.ModelProto, *, batch: int, threads: int,
             seconds: float) -> Layer:
    times = time_kernels(layer.weight, layer.bias, batch=batch, threads=threads,
                         seconds=seconds, ir_version=proto.ir_version)
    return Layer(layer.name, layer.weight.shape, _sparsity(layer.weight),
                 min(times, key=times.get), times)


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
    layer = _Sparse(onnx.NodeProto(), "W", "x", "y", weight, bias)
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
            g.node.extend(_sparse_matmul_nodes(layer, g))
            g.input.append(helper.make_sparse_tensor_value_info("W", TensorProto.FLOAT, None))
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18),
                                                helper.make_opsetid(MS_DOMAIN, 1)],
                              ir_version=ir_version)
        feeds = {"W": _ort_csr(weight)} if kernel == "ort-sparse" else {}
        stage = _OrtStage(m, "x", "y", feeds, threads)
        times[kernel] = time_ms(lambda stage=stage: stage({"x": x}), seconds)
    call = _OrtStage(_identity(ir_version), "x", "y", {}, threads)
    scipy_stage = _ScipyStage(layer)
    times["scipy"] = time_ms(lambda: scipy_stage({"x": x}), seconds) + \
        time_ms(lambda: call({"x": x[:1, :1]}), seconds / 2)
    return {k: round(v, 5) for k, v in times.items()}


def _identity(ir_version: int) -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "call",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)],
                             ir_version=ir_version)


def _alternating(runs: list[Callable[[], object]], seconds: float,
                 rounds: int = 4) -> list[float]:
    """`time_ms` of each of `runs` in alternating rounds (a busy moment slows all alike): the
    best round's median for each."""
    best = [float("inf")] * len(runs)
    for _ in range(rounds):
        for i, run in enumerate(runs):
            best[i] = min(best[i], time_ms(run, seconds / rounds / len(runs)))
    return best


def time_ms(run: Callable[[], object], seconds: float) -> float:
    """Median ms of `run` over `seconds` (at least 20 runs, after 3 warm-up runs)."""
    for _ in range(3):
        run()
    times = []
    deadline = time.perf_counter() + seconds
    while len(times) < 20 or time.perf_counter() < deadline:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3
