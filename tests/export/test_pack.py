"""pack_onnx: every format writes a runnable file that computes the same function."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from compressor.export.pack import Format, pack_onnx
from compressor.runtime import session
from tests.conftest import labelled


def _run(model: bytes, x: np.ndarray) -> np.ndarray:
    sess = session(model)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


X = labelled(64, seed=1)[0]


@pytest.mark.parametrize("fmt", list(Format))
def test_every_format_packs_a_runnable_file(sparse_model, fmt):
    packed = pack_onnx(sparse_model, fmt, batch=4, seconds=0.01)
    proto = onnx.load_from_string(packed.data)
    onnx.checker.check_model(proto)
    diff = np.abs(_run(packed.data, X) - _run(sparse_model, X)).max()
    int8 = any(row.kernel == "int8" for row in packed.layers)
    factored = any(row.rank is not None for row in packed.layers)
    assert diff < (0.1 if int8 else 0.5 if factored else 1e-5)
    assert (fmt is Format.INT8) <= int8 and (fmt is Format.LOWRANK) >= factored
    if fmt is Format.AUTO:
        assert packed.note.startswith("auto at batch 4") and "all dense" in packed.note
    if fmt in (Format.CSR, Format.INT8):  # auto picks by measured speed, whatever the bytes
        assert len(packed.data) < len(sparse_model)
    if factored:  # fewer weights; on this tiny model the extra node can outweigh them in bytes
        assert _weights(packed.data) < _weights(sparse_model)


def _weights(model: bytes) -> int:
    return sum(int(np.prod(t.dims)) for t in onnx.load_from_string(model).graph.initializer
               if len(t.dims) == 2)


def _two_layer(rank: int, width: int = 512) -> bytes:
    """x [N, width] -> Gemm (rank `rank`) -> Relu -> Gemm (full rank, 10 x width)."""
    rng = np.random.default_rng(0)
    low = (rng.standard_normal((width, rank)) @ rng.standard_normal((rank, width))) / width
    head = rng.standard_normal((10, width)).astype(np.float32)
    h = onnx.helper
    graph = h.make_graph(
        [h.make_node("Gemm", ["x", "W1", "b1"], ["a"], name="first", transB=1),
         h.make_node("Relu", ["a"], ["r"]),
         h.make_node("Gemm", ["r", "W2"], ["y"], name="head", transB=1)], "g",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", width])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 10])],
        [onnx.numpy_helper.from_array(low.astype(np.float32), "W1"),
         onnx.numpy_helper.from_array(np.zeros(width, np.float32), "b1"),
         onnx.numpy_helper.from_array(head, "W2")])
    return h.make_model(graph, ir_version=10,
                        opset_imports=[h.make_opsetid("", 18)]).SerializeToString()


def test_lowrank_factors_a_low_rank_layer_and_says_why_it_keeps_the_other():
    model = _two_layer(rank=8)
    packed = pack_onnx(model, Format.LOWRANK, batch=64, seconds=0.05)
    first, head = packed.layers
    assert first.rank == 8 and first.kernel == "lowrank r=8"  # 64x fewer multiply-adds
    assert first.times_ms["lowrank"] < first.times_ms["dense"]
    assert head.rank is None and "not fewer than" in head.why  # 10 x 512: rank 10 saves nothing
    assert packed.note.startswith("1 of 2 layers factored")
    x = np.random.default_rng(1).random((32, 512), dtype=np.float32)
    assert np.abs(_run(packed.data, x) - _run(model, x)).max() < 1e-4  # rank 8 is exact
    assert len(packed.data) < len(model) / 4


def test_lowrank_energy_trades_rank_for_error():
    model = _two_layer(rank=64, width=256)
    x = np.random.default_rng(1).random((32, 256), dtype=np.float32)
    ranks, errors = [], []
    for energy in (0.5, 0.9, 1.0):
        packed = pack_onnx(model, Format.LOWRANK, batch=64, seconds=0.02, energy=energy)
        factors = [row for row in packed.layers if row.name == "W1"]
        ranks.append(factors[0].rank or 256)
        errors.append(float(np.abs(_run(packed.data, x) - _run(model, x)).max()))
    assert ranks[0] < ranks[1] <= 64 and errors[0] > errors[1] and errors[2] < 1e-3
