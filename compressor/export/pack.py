"""Pack the verified float32 export in the chosen storage format (`pack_onnx`): dense, CSR or
int8, or per layer whichever is fastest on this machine (auto)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
import onnx

from ..runtime import SparseModel, example_input, session, set_kernels, time_ms
from . import formats


class Format(str, Enum):
    """How the pruned model's weights are stored and run (see compressor.export.formats)."""

    DENSE = "dense"  # plain Gemm, zeros kept
    CSR = "csr"  # sparse initializers; compressor.runtime runs sparse layers as CSR
    INT8 = "int8"  # dynamic (Gemm, MatMul) and static (Conv) int8, sparse storage where smaller
    AUTO = "auto"  # per layer, whichever of dense, CSR and int8 is fastest here at --batch
    LOWRANK = "lowrank"  # layers as two thinner ones (truncated SVD) where smaller and faster



@dataclass(frozen=True)
class KernelRow:
    """How one weight matrix of the written file is stored and run, and why."""

    name: str
    shape: tuple[int, int]
    sparsity: float  # share of zero entries
    storage: str  # "dense" or "sparse" (sparse initializer)
    kernel: str  # dense, int8, scipy or ort-sparse
    times_ms: dict[str, float]  # measured per candidate at the chosen batch (auto, csr)
    why: str
    rank: int | None = None  # lowrank: the factors' rank (the layer runs as two)


@dataclass(frozen=True)
class Packed:
    """The written file, how each weight is stored and run, and whether it needs the runtime
    (some layer runs with a sparse kernel of `compressor.runtime`) to reach its speed."""

    data: bytes
    layers: tuple[KernelRow, ...]
    runtime: bool
    note: str  # the whole-model choice (auto), or ""


ENERGY = 0.99  # default share of a layer's squared singular values --format lowrank keeps


def pack_onnx(model: bytes, fmt: Format, *, batch: int = 1, threads: int = 1,
              seconds: float = 0.05, calibration: np.ndarray | None = None,
              energy: float = ENERGY) -> Packed:
    """Store the verified float32 export `model` in format `fmt` (see `compressor.formats`):

    - dense: as it is (zeros kept);
    - csr: weights as sparse initializers where smaller; the sparse kernels are measured
      per layer at `batch`, and the file records the choice for `compressor.runtime`;
    - int8: dynamic quantization of Gemm and MatMul (and, with `calibration` inputs, static
      quantization of Conv), then sparse storage where smaller;
    - auto: per layer, whichever of dense, int8 and the sparse kernels is fastest at `batch`
      with `threads`, then the whole mix is timed against all-dense and all-int8, and the
      fastest of the three is kept (with sparse storage wherever it is smaller: onnxruntime
      densifies it at load, so it costs no speed);
    - lowrank: each Gemm, MatMul and ungrouped Conv whose truncated SVD keeping `energy` of the
      squared singular values has fewer weights, replaced by its two factors where the pair
      is also faster than the layer at `batch` with `threads` (timed alone); approximate.
    """
    proto = onnx.load_from_string(model)
    if fmt is Format.DENSE:
        shapes = formats.sparsity(proto)
        return Packed(model, tuple(KernelRow(n, s, z, "dense", "dense", {}, "--format dense")
                                   for n, (s, z) in shapes.items()), False, "")
    if fmt is Format.INT8:
        return _int8(proto, "--format int8", calibration=calibration)
    if fmt is Format.LOWRANK:
        return _lowrank(proto, energy=energy, batch=batch, threads=threads, seconds=seconds)
    stored = formats.store_sparse(proto)
    if fmt is Format.CSR:
        runtime = SparseModel.load(stored, batch=batch, threads=threads, seconds=seconds)
        return _csr(stored, runtime, note="--format csr")
    return _auto(proto, stored, batch=batch, threads=threads, seconds=seconds)


def _int8(proto: onnx.ModelProto, why: str, nodes: list[str] | None = None, *,
          calibration: np.ndarray | None = None) -> Packed:
    quantized = formats.store_sparse(formats.quantize(proto, nodes=nodes,
                                                      calibration=calibration))
    sparse = {s.values.name for s in quantized.graph.sparse_initializer}
    rows = tuple(KernelRow(n, s, z, "sparse" if n in sparse else "dense",
                           "int8" if n.endswith("_quantized") else "dense", {}, why)
                 for n, (s, z) in formats.sparsity(quantized).items())
    return Packed(quantized.SerializeToString(), rows, False, "")


def _lowrank(proto: onnx.ModelProto, *, energy: float, batch: int, threads: int,
             seconds: float) -> Packed:
    """Each layer whose factors are smaller, factored where that is faster here, timed alone."""
    shapes = _input_shapes(proto, batch)
    dense = formats.densify(proto)
    sparsity = formats.sparsity(dense)
    chosen, rows = [], []
    for f in formats.factors(dense, energy=energy):
        full, factored = f.weights
        zeros = sparsity.get(f.weight, (f.shape, 0.0))[1]
        about = f"rank {f.rank} of {min(f.shape)} keeps {f.energy:.2%} of the energy"
        if factored >= full:
            rows.append(KernelRow(f.weight, f.shape, zeros, "dense", "dense", {},
                                  f"{about}: the factors would have {factored:,} weights, "
                                  f"not fewer than {full:,}"))
            continue
        single = _single(dense, f.node, shapes)
        x = np.random.default_rng(0).random(shapes[single.graph.input[0].name],
                                            dtype=np.float32)
        times = {"dense": _whole_ms(single.SerializeToString(), x, threads, seconds),
                 "lowrank": _whole_ms(formats.factorize(single, [f]).SerializeToString(), x,
                                      threads, seconds)}
        faster = times["lowrank"] < times["dense"]
        chosen += [f] if faster else []
        rows.append(KernelRow(f.weight, f.shape, zeros, "dense",
                              f"lowrank r={f.rank}" if faster else "dense", times,
                              f"{about}, {factored:,} weights instead of {full:,}" +
                              ("" if faster else "; not faster here: kept"),
                              f.rank if faster else None))
    note = f"{len(chosen)} of {len(rows)} layers factored, each keeping {energy:.0%} " \
        "of its squared singular values"
    return Packed(formats.factorize(dense, chosen).SerializeToString(), tuple(rows), False, note)


def _input_shapes(proto: onnx.ModelProto, batch: int) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape by shape inference, the batch axis (and any symbolic one) set."""
    inferred = onnx.shape_inference.infer_shapes(formats.densify(proto))
    shapes = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else
                                   batch if i == 0 else 1 for i, d in enumerate(dims))
    return shapes


def _single(proto: onnx.ModelProto, name: str,
            shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """The node `name` of the densified `proto` alone, as a model reading its first input."""
    node = next(n for n in proto.graph.node if n.name == name)
    arrays = {t.name: t for t in proto.graph.initializer}
    x = node.input[0]
    return onnx.helper.make_model(onnx.helper.make_graph(
        [node], name,
        [onnx.helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, list(shapes[x]))],
        [onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None)],
        [arrays[i] for i in node.input[1:] if i in arrays]),
        opset_imports=list(proto.opset_import), ir_version=proto.ir_version)


def _csr(stored: onnx.ModelProto, runtime: SparseModel, *, note: str) -> Packed:
    plan = {layer.name: layer.kernel for layer in runtime.layers}
    set_kernels(stored, plan)
    sparse = {s.values.name for s in stored.graph.sparse_initializer}
    rows = []
    for name, (shape, zeros) in formats.sparsity(stored).items():
        layer = next((la for la in runtime.layers if la.name == name), None)
        rows.append(KernelRow(name, shape, zeros, "sparse" if name in sparse else "dense",
                              layer.kernel if layer else "dense",
                              dict(layer.times_ms) if layer else {},
                              layer.why if layer else "dense storage is smaller: plain Gemm"))
    return Packed(stored.SerializeToString(), tuple(rows),
                  any(la.kernel != "dense" for la in runtime.layers), note)


def _auto(proto: onnx.ModelProto, stored: onnx.ModelProto, *, batch: int, threads: int,
          seconds: float) -> Packed:
    """Per layer the fastest of dense, int8 and the sparse kernels at `batch`; then the mix
    against all-dense and all-int8 on the whole model."""
    mix_runtime = SparseModel.load(stored, batch=batch, threads=threads, seconds=seconds,
                                   fallback=False)
    int8_ms = _int8_layer_times(proto, batch=batch, threads=threads, seconds=seconds)
    by_layer = {la.name: la for la in mix_runtime.layers}
    nodes, sparse_kernels = [], {}
    for node in proto.graph.node:
        if node.op_type != "Gemm" or node.input[1] not in int8_ms:
            continue
        name = node.input[1]
        times = dict(by_layer[name].times_ms) if name in by_layer else \
            {"dense": int8_ms[name][1]}
        times["int8"] = int8_ms[name][0]
        best = min(times, key=times.get)
        if best == "int8":
            nodes.append(node.name)
        elif best in ("scipy", "ort-sparse"):
            sparse_kernels[name] = best
    candidates: dict[str, tuple[Packed, object]] = {}
    dense_packed = Packed(stored.SerializeToString(), (), False, "")  # storage costs no speed
    candidates["all dense"] = (dense_packed, dense_packed.data)
    int8_packed = _int8(proto, "auto: all int8")
    candidates["all int8"] = (int8_packed, int8_packed.data)
    if nodes or sparse_kernels:
        mixed = formats.quantize(proto, nodes=nodes) if nodes else proto
        mixed = formats.store_sparse(mixed, names=[n for n in formats.weight_names(mixed)
                                                   if n in sparse_kernels or
                                                   n.endswith("_quantized")])
        runner = SparseModel.load(mixed, batch=batch, threads=threads,
                                  kernels={n: k for n, k in sparse_kernels.items()})
        candidates["per-layer mix"] = (_csr(mixed, runner, note=""), runner)
    x = example_input(proto, batch)
    whole = {name: _whole_ms(run, x, threads, seconds * 10) for name, (_, run) in
             candidates.items()}
    chosen = min(whole, key=whole.get)
    note = f"auto at batch {batch}, {threads} thread{'s' * (threads > 1)}: chose {chosen} (" + \
        ", ".join(f"{k} {v:.4f} ms" for k, v in whole.items()) + ")"
    packed = candidates[chosen][0]
    if chosen == "all dense":
        sparse = {s.values.name for s in stored.graph.sparse_initializer}
        packed = Packed(packed.data, tuple(
            KernelRow(n, s, z, "sparse" if n in sparse else "dense", "dense", {},
                      "auto: all dense") for n, (s, z) in formats.sparsity(stored).items()),
            False, "")
    times = {la.name: dict(la.times_ms) for la in mix_runtime.layers}
    for name, (ms, dense_ms) in int8_ms.items():
        times.setdefault(name, {"dense": dense_ms})["int8"] = ms
    rows = []
    for row in packed.layers:
        key = row.name.removesuffix("_quantized")
        t = times.get(key, {})
        rows.append(KernelRow(row.name, row.shape, row.sparsity, row.storage, row.kernel, t,
                              ", ".join(f"{k} {v:.4f} ms" for k, v in t.items()) or row.why))
    return Packed(packed.data, tuple(rows), packed.runtime, note)


def _int8_layer_times(proto: onnx.ModelProto, *, batch: int, threads: int,
                      seconds: float) -> dict[str, tuple[float, float]]:
    """Per Gemm weight: ms of the layer alone quantized, and as float32 Gemm."""
    dense = formats.densify(proto)
    weights = {t.name: t for t in dense.graph.initializer}
    out = {}
    for node in dense.graph.node:
        if node.op_type != "Gemm" or node.input[1] not in weights:
            continue
        w = weights[node.input[1]]
        single = onnx.helper.make_model(onnx.helper.make_graph(
            [onnx.helper.make_node("Gemm", ["x", "W"] + (["b"] if len(node.input) > 2 else []),
                                   ["y"], name="layer", transB=1)], "layer",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                ["N", int(w.dims[1])])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
            [_renamed(w, "W")] + ([_renamed(weights[node.input[2]], "b")]
                                  if len(node.input) > 2 else [])),
            opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
        x = np.random.default_rng(0).random((batch, int(w.dims[1])), dtype=np.float32)
        quantized = formats.quantize(single).SerializeToString()
        out[node.input[1]] = (_whole_ms(quantized, x, threads, seconds),
                              _whole_ms(single.SerializeToString(), x, threads, seconds))
    return out


def _renamed(tensor: onnx.TensorProto, name: str) -> onnx.TensorProto:
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.name = name
    return copy


def _whole_ms(run: bytes | SparseModel, x: np.ndarray, threads: int, seconds: float) -> float:
    if isinstance(run, bytes):
        sess = session(run, threads=threads)
        name = sess.get_inputs()[0].name
        return time_ms(lambda: sess.run(None, {name: x}), seconds)
    return time_ms(lambda: run.run(x), seconds)
