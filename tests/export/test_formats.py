"""Storage formats and the CSR runtime: every pack has an exact unpack, every path computes
the same function."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from compressor.export import formats
from compressor.export.pack import Format, pack_onnx
from compressor.runtime import KERNELS, SparseModel, session, stored_kernels
from tests.conftest import labelled
from tests.helpers import sparse_onnx
from tests.nets import tiny


@pytest.fixture(scope="module")
def sparse_model() -> bytes:
    """The tiny MLP exported with 90% of every weight matrix zero (smallest |w|)."""
    return sparse_onnx(tiny(), torch.from_numpy(labelled()[0])).SerializeToString()


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


@pytest.mark.parametrize("kernel", KERNELS)
def test_every_runtime_kernel_computes_the_dense_model(sparse_model, kernel):
    stored = formats.store_sparse(onnx.load_from_string(sparse_model))
    model = SparseModel.load(stored, kernels=kernel)
    assert [layer.kernel for layer in model.layers] == [kernel] * len(model.layers)
    assert len(model.layers) == len(stored.graph.sparse_initializer)
    assert np.abs(model.run(X) - _run(sparse_model, X)).max() < 1e-5


def test_runtime_measures_per_layer_and_reads_the_stored_choice(sparse_model):
    packed = pack_onnx(sparse_model, Format.CSR, batch=8, seconds=0.01)
    proto = onnx.load_from_string(packed.data)
    plan = stored_kernels(proto)
    assert set(plan) == {s.values.name for s in proto.graph.sparse_initializer}
    measured = SparseModel.load(proto, batch=8, seconds=0.01, fallback=False)
    assert all(set(layer.times_ms) == set(KERNELS) for layer in measured.layers)
    assert all(layer.kernel == min(layer.times_ms, key=layer.times_ms.get)
               for layer in measured.layers)
    loaded = SparseModel.load(proto, kernels="stored")
    assert {layer.name: layer.kernel for layer in loaded.layers} == plan
    assert np.abs(loaded.run(X) - _run(sparse_model, X)).max() < 1e-5


def test_runtime_refuses_unknown_kernels(sparse_model):
    stored = formats.store_sparse(onnx.load_from_string(sparse_model))
    with pytest.raises(ValueError, match="unknown kernels"):
        SparseModel.load(stored, kernels="mkl")


@pytest.mark.parametrize("fmt", list(Format))
def test_every_format_packs_a_runnable_file(sparse_model, fmt):
    packed = pack_onnx(sparse_model, fmt, batch=4, seconds=0.01)
    proto = onnx.load_from_string(packed.data)
    onnx.checker.check_model(proto)
    diff = np.abs(_run(packed.data, X) - _run(sparse_model, X)).max()
    int8 = any(row.kernel == "int8" for row in packed.layers)
    assert diff < (0.1 if int8 else 1e-5)
    assert (fmt is Format.INT8) <= int8
    if fmt is Format.AUTO:
        assert packed.note.startswith("auto at batch 4") and "all dense" in packed.note
    if fmt is not Format.DENSE:
        assert len(packed.data) < len(sparse_model)


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


def test_flops_and_parameters_do_not_depend_on_storage(sparse_model):
    from compressor.measure.onnx_file import flops_per_sample

    for proto in (onnx.load_from_string(sparse_model),
                  formats.quantize(onnx.load_from_string(sparse_model))):
        stored = formats.store_sparse(proto)
        assert stored.graph.sparse_initializer
        assert flops_per_sample(stored) == flops_per_sample(proto)
        assert flops_per_sample(proto)[1] == ()
