"""`compress bench`: rows, speedups against the baseline, FLOPs, memory, bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from compressor.commands.bench import bench
from compressor.export import formats
from compressor.export.to_onnx import to_onnx
from compressor.measure.memory import peak_memory_mb
from tests.conftest import assert_refused, graph_of, labelled
from tests.nets import tiny


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """dense.onnx, and half.onnx: the same net with 90% of its weights zero, sparse-stored."""
    folder = tmp_path_factory.mktemp("bench")
    x = torch.from_numpy(labelled()[0])
    dense = to_onnx(graph_of(tiny(), x[:2]), x[:2])
    (folder / "dense.onnx").write_bytes(dense)
    proto = onnx.load_from_string(dense)
    for t in proto.graph.initializer:
        a = numpy_helper.to_array(t).copy()
        if a.ndim == 2:
            a[np.abs(a) < np.quantile(np.abs(a), 0.9)] = 0
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    (folder / "sparse.onnx").write_bytes(formats.store_sparse(proto).SerializeToString())
    return folder


def test_rows_speedups_and_ideal_speedups(files):
    result = bench([files / "sparse.onnx"], baseline=files / "dense.onnx", batches=(1, 16),
                   threads=(1, 2), seconds=0.05, memory=False)
    assert [(r.model, r.batch, r.threads) for r in result.rows] == [
        (m, b, t) for t in (1, 2) for b in (1, 16)
        for m in ("dense.onnx", "sparse.onnx", "sparse.onnx (runtime)")]
    for r in result.rows:
        assert 0 < r.p50_ms <= r.p95_ms
        assert r.throughput == pytest.approx(r.batch / r.p50_ms * 1e3, rel=1e-3)
        assert r.efficiency == pytest.approx(r.speedup / r.ideal, abs=2e-3)
    base = [r for r in result.rows if r.model == "dense.onnx"]
    assert all(r.speedup == 1 and r.ideal == 1 for r in base)
    sparse = next(r for r in result.rows if r.model == "sparse.onnx")
    assert sparse.ideal == pytest.approx(base[0].flops / sparse.flops, abs=1e-3)
    assert sparse.flops < base[0].flops and sparse.size < base[0].size
    assert json.loads(result.to_json())["baseline"] == "dense.onnx"


def test_without_baseline_there_are_no_speedups(files):
    result = bench([files / "dense.onnx"], batches=(4,), seconds=0.02, memory=False,
                   runtime=False)
    assert len(result.rows) == 1 and result.rows[0].speedup is None


def test_peak_memory_is_measured_in_a_child_process(files):
    small = peak_memory_mb(files / "dense.onnx", batch=1)
    assert small is not None and small >= 0
    assert peak_memory_mb(files / "missing.onnx", batch=1) is None


def test_cli_prints_one_table(run_cli, files):
    result = run_cli("bench", files / "sparse.onnx", "--baseline", files / "dense.onnx",
                     "--batch", "1,8", "--threads", "1", "--seconds", "0.02")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split()[:4] == ["model", "batch", "threads", "p50"]
    assert sum(line.startswith("sparse.onnx (runtime)") for line in lines) == 2
    assert "efficiency = speedup / ideal" in result.out


@pytest.mark.parametrize("args", [["missing.onnx"], ["dense.onnx", "--batch", "0"],
                                  ["dense.onnx", "--batch", "1,x"],
                                  ["dense.onnx", "--threads", ""],
                                  ["dense.onnx", "--baseline", "missing.onnx"],
                                  ["dense.pt"]])
def test_bad_input_is_refused_in_one_line(run_cli, files, args):
    (files / "dense.pt").write_bytes(b"not onnx")
    args = [files / a if a.endswith((".onnx", ".pt")) else a for a in args]
    assert_refused(run_cli, ["bench", *args], files)
