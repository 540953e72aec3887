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
    assert diff < (0.1 if int8 else 1e-5)
    assert (fmt is Format.INT8) <= int8
    if fmt is Format.AUTO:
        assert packed.note.startswith("auto at batch 4") and "all dense" in packed.note
    if fmt is not Format.DENSE:
        assert len(packed.data) < len(sparse_model)
