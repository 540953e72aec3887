"""`compress bench`: rows, speedups against the baseline, FLOPs, memory, bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from compressor.commands.bench import bench, labels
from compressor.export import formats
from compressor.export.formats import densify
from compressor.export.to_onnx import to_onnx
from compressor.measure.memory import peak_memory_mb
from tests.conftest import assert_refused, labelled
from tests.helpers import graph_of, sparse_onnx
from tests.nets import tiny


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """dense.onnx, and half.onnx: the same net with 90% of its weights zero, sparse-stored."""
    folder = tmp_path_factory.mktemp("bench")
    x = torch.from_numpy(labelled()[0])
    dense = to_onnx(graph_of(tiny(), x[:2]), x[:2])
    (folder / "dense.onnx").write_bytes(dense)
    proto = sparse_onnx(tiny(), x)
    (folder / "sparse.onnx").write_bytes(formats.store_sparse(proto).SerializeToString())
    return folder


def _nonzero_weights(path) -> int:
    proto = densify(onnx.load(path))
    return sum(int(np.count_nonzero(numpy_helper.to_array(t))) for t in proto.graph.initializer
               if len(t.dims) == 2)


def test_rows_speedups_and_ideal_speedups(files, fixed_latency):
    fixed_latency(2.0, 1.0, 0.5)  # dense, sparse in onnxruntime, sparse in the runtime
    result = bench([files / "sparse.onnx"], baseline=files / "dense.onnx", batches=(1, 16),
                   threads=(1, 2), seconds=0.05, memory=False)
    assert [(r.model, r.batch, r.threads) for r in result.rows] == [
        (m, b, t) for t in (1, 2) for b in (1, 16)
        for m in ("dense.onnx", "sparse.onnx", "sparse.onnx (runtime)")]
    dense_flops = 2 * (20 * 32 + 32 * 24 + 24 * 16 + 16 * 4)
    sparse_flops = 2 * _nonzero_weights(files / "sparse.onnx")
    assert sparse_flops < dense_flops / 5  # 90% of the weights are zero
    for r in result.rows:
        ms = {"dense.onnx": 2.0, "sparse.onnx": 1.0, "sparse.onnx (runtime)": 0.5}[r.model]
        ideal = 1.0 if r.model == "dense.onnx" else dense_flops / sparse_flops
        assert (r.p50_ms, r.p95_ms, r.speedup) == (ms, ms, 2.0 / ms)
        assert r.throughput == round(r.batch / ms * 1e3, 1)
        assert r.flops == (dense_flops if r.model == "dense.onnx" else sparse_flops)
        assert r.ideal == pytest.approx(ideal, abs=1e-3)
        assert r.efficiency == pytest.approx(2.0 / ms / ideal, abs=2e-3)
    assert json.loads(result.to_json())["baseline"] == "dense.onnx"


def test_without_baseline_there_are_no_speedups(files):
    result = bench([files / "dense.onnx"], batches=(4,), seconds=0.02, memory=False,
                   runtime=False)
    assert len(result.rows) == 1 and result.rows[0].speedup is None


def test_files_of_the_same_name_get_rows_named_by_their_folders(files, tmp_path, fixed_latency):
    fixed_latency(1.0)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "model.onnx").write_bytes((files / "dense.onnx").read_bytes())
    result = bench([tmp_path / "a" / "model.onnx", tmp_path / "b" / "model.onnx"],
                   baseline=files / "dense.onnx", batches=(1,), seconds=0.02, memory=False)
    assert [r.model for r in result.rows] == ["dense.onnx", "a/model.onnx", "b/model.onnx"]
    assert labels([tmp_path / "x" / "m.onnx", tmp_path / "y" / "x" / "m.onnx"]) == {
        tmp_path / "x" / "m.onnx": f"{tmp_path.name}/x/m.onnx",
        tmp_path / "y" / "x" / "m.onnx": "y/x/m.onnx"}


def test_peak_memory_is_measured_in_a_child_process(files):
    small = peak_memory_mb(files / "dense.onnx", batch=1)
    large = peak_memory_mb(files / "dense.onnx", batch=100_000)  # 29 MB of activations
    assert small is not None and large is not None
    assert large - small > 10
    assert peak_memory_mb(files / "missing.onnx", batch=1) is None


def test_cli_prints_one_table(run_cli, files):
    result = run_cli("bench", files / "sparse.onnx", "--baseline", files / "dense.onnx",
                     "--batch", "1,8", "--threads", "1", "--seconds", "0.02", "--no-memory")
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


def test_without_batches_a_batch_is_timed_only_where_a_run_is_affordable(files, fixed_latency,
                                                                         monkeypatch):
    """Left to the command, batches 1, 32 and 256; a batch over 1 at which one run of the
    costliest file would cost more than the bound is left out, and the log says so."""
    from compressor.measure import latency

    fixed_latency(1.0)
    dense_flops = 2 * (20 * 32 + 32 * 24 + 24 * 16 + 16 * 4)
    every = bench([files / "dense.onnx"], seconds=0.02, memory=False)
    assert [r.batch for r in every.rows] == [1, 32, 256]
    monkeypatch.setattr(latency, "RUN_FLOPS", 32 * dense_flops)
    from compressor.commands import bench as command
    monkeypatch.setattr(command, "RUN_FLOPS", 32 * dense_flops)
    lines = []
    some = bench([files / "sparse.onnx"], baseline=files / "dense.onnx", seconds=0.02,
                 memory=False, runtime=False, log=lines.append)
    assert sorted({r.batch for r in some.rows}) == [1, 32]
    assert lines[0].startswith("batch 256 left out: one run would cost over")
    given = bench([files / "dense.onnx"], batches=(256,), seconds=0.02, memory=False)
    assert [r.batch for r in given.rows] == [256]
