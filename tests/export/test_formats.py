"""Storage formats: every pack has an exact unpack."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from compressor.export import formats
from compressor.export.to_onnx import to_onnx
from compressor.export.verify import run_onnx
from compressor.runtime import session
from tests.conftest import labelled
from tests.helpers import graph_of
from tests.nets import SmallCNN


def _weights(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def _run(model: bytes, x: np.ndarray) -> np.ndarray:
    sess = session(model)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


X = labelled(64, seed=1)[0]


def test_sparse_storage_round_trip_is_bit_exact_and_only_where_smaller(sparse_model):
    proto = onnx.load_from_string(sparse_model)
    stored = formats.store_sparse(proto)
    onnx.checker.check_model(stored)
    names = {s.values.name for s in stored.graph.sparse_initializer}
    assert names == {n for n, a in _weights(proto).items() if a.ndim == 2 and
                     formats.sparse_pays(a)} and names
    assert len(stored.SerializeToString()) < len(sparse_model)
    back = formats.densify(stored)
    assert not back.graph.sparse_initializer
    original, restored = _weights(proto), _weights(back)
    assert original.keys() == restored.keys()
    assert all(np.array_equal(original[k], restored[k]) and original[k].dtype == restored[k].dtype
               for k in original)
    assert np.array_equal(_run(stored.SerializeToString(), X), _run(sparse_model, X))


def test_dense_weights_stay_dense():
    a = np.ones((10, 10), np.float32)
    a[:6] = 0  # 60% zeros: 40 x 12 bytes > 100 x 4 bytes
    assert not formats.sparse_pays(a)
    a[:7] = 0  # 70%: 30 x 12 < 400
    assert formats.sparse_pays(a)


def test_int8_round_trip_is_exact(sparse_model):
    q = formats.quantize(onnx.load_from_string(sparse_model))
    deq = formats.dequantize(q)
    assert not any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in deq.graph.node)
    qw, dw = _weights(q), _weights(deq)
    for name in [n for n in qw if n.endswith("_quantized")]:
        base = name.removesuffix("_quantized")
        expected = (qw[name].astype(np.float32) - qw[f"{base}_zero_point"]) * qw[f"{base}_scale"]
        assert np.array_equal(dw[base], expected.astype(np.float32))
    again = _weights(formats.quantize(deq))
    assert qw.keys() == again.keys()
    assert all(np.array_equal(qw[k], again[k]) for k in qw)
    # the dequantized model computes what the int8 weights say, with float activations
    assert np.abs(_run(deq.SerializeToString(), X) - _run(sparse_model, X)).max() < 0.1


def test_int8_with_sparse_storage_runs_identically(sparse_model):
    q = formats.quantize(onnx.load_from_string(sparse_model))
    stored = formats.store_sparse(q)
    assert any(s.values.data_type == onnx.TensorProto.INT8 for s in stored.graph.sparse_initializer)
    onnx.checker.check_model(stored)
    assert np.array_equal(_run(stored.SerializeToString(), X), _run(q.SerializeToString(), X))


@settings(max_examples=30)
@given(rows=st.integers(1, 40), cols=st.integers(1, 40), zeros=st.floats(0, 1),
       dtype=st.sampled_from([np.float32, np.int8]), seed=st.integers(0, 2**16))
def test_sparse_storage_round_trip_property(rows, cols, zeros, dtype, seed):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * 50).astype(dtype)
    w[rng.random(w.shape) < zeros] = 0
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "W")])
    stored = formats.store_sparse(helper.make_model(graph))
    assert bool(stored.graph.sparse_initializer) == formats.sparse_pays(w)
    back = numpy_helper.to_array(formats.densify(stored).graph.initializer[0])
    assert back.dtype == w.dtype and np.array_equal(back, w)


def test_convolutions_are_quantized_statically_only_with_calibration_inputs_but_the_first():
    net = SmallCNN().eval()
    x = torch.rand(64, 1, 12, 12)
    proto = onnx.load_from_string(to_onnx(graph_of(net, x[:2]), x[:2]))
    plain = formats.quantize(proto)
    assert not any(n.op_type == "DequantizeLinear" for n in plain.graph.node)
    static = formats.quantize(proto, calibration=x.numpy())
    producer = {o: n for n in static.graph.node for o in n.output}
    raw = {i.name for i in static.graph.input}
    first = [n for n in static.graph.node if n.op_type == "Conv" and n.input[0] in raw]
    convs = [n for n in static.graph.node if n.op_type == "Conv" and n.input[0] not in raw]
    assert first and all(n.input[1] not in producer for n in first)  # raw pixels: float32
    assert convs and all(producer[n.input[1]].op_type == "DequantizeLinear" for n in convs)
    assert {name for name in formats.weight_names(static) if name.endswith("_quantized")}
    got = run_onnx(session(static.SerializeToString()), x)
    with torch.no_grad():
        expected = net(x)
    assert float((got - expected).abs().max()) < 0.1 * float(expected.abs().max())


def _stride_conv_net() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 12, 3, stride=2, padding=1, dilation=1),
                               torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(12 * 6 * 6, 20), torch.nn.ReLU(),
                               torch.nn.Linear(20, 5)).eval()


def test_factors_at_full_energy_compute_the_same_function():
    """Gemm, Conv (stride, padding) and their factors: the same outputs at energy 1."""
    net = _stride_conv_net()
    x = torch.rand(16, 2, 12, 12)
    proto = onnx.load_from_string(to_onnx(graph_of(net, x[:2]), x[:2]))
    found = formats.factors(proto, energy=1.0)
    assert [f.shape for f in found] == [(12, 18), (20, 432), (5, 20)]
    assert [f.rank for f in found] == [12, 20, 5]
    factored = formats.factorize(proto, found)
    onnx.checker.check_model(factored)
    ops = [n.op_type for n in factored.graph.node]
    assert ops.count("Conv") == 2 and ops.count("Gemm") == 4
    got = run_onnx(session(factored.SerializeToString()), x)
    with torch.no_grad():
        assert float((got - net(x)).abs().max()) < 1e-4


def test_the_rank_is_the_smallest_keeping_the_energy_and_matmul_factors_on_tokens():
    rng = np.random.default_rng(0)
    s = np.array([4.0, 2.0, 1.0, 0.5] + [0.0] * 28)  # energies 16, 4, 1, 0.25 of 21.25
    u, _ = np.linalg.qr(rng.standard_normal((32, 32)))
    v, _ = np.linalg.qr(rng.standard_normal((24, 24)))
    w = (u[:, :24] * s[:24]) @ v.T  # [in 32, out 24], as MatMul reads it
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 7, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w.astype(np.float32), "W")])
    proto = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 18)])
    ranks = {e: formats.factors(proto, energy=e)[0].rank for e in (0.75, 0.76, 0.95, 0.99, 1.0)}
    assert ranks == {0.75: 1, 0.76: 2, 0.95: 3, 0.99: 4, 1.0: 4}  # 16/21.25 = 0.753
    (f,) = formats.factors(proto, energy=1.0)
    assert f.weights == (24 * 32, 4 * (24 + 32))
    factored = formats.factorize(proto, [f])
    x = rng.standard_normal((3, 7, 32)).astype(np.float32)
    assert np.abs(_run(factored.SerializeToString(), x) - x @ w).max() < 1e-4
    # rank 1 keeps the top singular direction only: the error is the rest of the spectrum
    low = formats.factorize(proto, formats.factors(proto, energy=0.5))
    expected = x @ (u[:, :1] * s[:1]) @ v[:, :1].T
    assert np.abs(_run(low.SerializeToString(), x) - expected).max() < 1e-4
