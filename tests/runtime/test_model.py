"""compressor.runtime: every kernel computes the dense model; the stored choice is read back."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from compressor.export import formats
from compressor.export.pack import Format, pack_onnx
from compressor.runtime import KERNELS, SparseModel, session, stored_kernels
from tests.conftest import labelled


def _run(model: bytes, x: np.ndarray) -> np.ndarray:
    sess = session(model)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


X = labelled(64, seed=1)[0]


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
