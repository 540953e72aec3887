"""`torchrun --nproc-per-node 2 -m compressor ...`: two processes (gloo on the CPU) calibrate
with their statistics summed, select exactly the units one process selects on the same data,
fine-tune under DistributedDataParallel, and rank 0 alone writes the file and the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compressor.errors import OptionError
from compressor.io import ranks
from tests.conftest import digest

ONE_SHOT = ["--target", "0.5", "--cycles", "2", "--epochs", "0", "--no-latency", "--quiet"]


def _run(tmp: Path, files: dict, out: str, processes: int, *extra: str,
         data: Path | None = None) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={processes}"] if processes > 1 else [sys.executable]
    cmd = [*launcher, "-m", "compressor", str(files["model"]), "--arch", "tests.nets:tiny",
           "--data", str(data or files["data"]), "-o", str(tmp / out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False,
                          cwd=Path(__file__).resolve().parents[2])


def _report(tmp: Path, out: str) -> dict:
    return json.loads((tmp / out).with_suffix(".json").read_text())


def test_two_processes_select_the_units_one_process_selects(tiny_files):
    tmp = tiny_files["dir"]
    one = _run(tmp, tiny_files, "one.onnx", 1, *ONE_SHOT)
    two = _run(tmp, tiny_files, "two.onnx", 2, *ONE_SHOT)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert _report(tmp, "two.onnx")["kept"] == _report(tmp, "one.onnx")["kept"]
    assert _report(tmp, "two.onnx")["threads"]["processes"] == 2
    assert two.stdout.count("parity") == one.stdout.count("parity") == 1  # rank 0 reports
    assert sorted(p.name for p in tmp.glob("two*")) == ["two.json", "two.onnx"]


def test_two_processes_fine_tune_together_and_rank_0_writes(tiny_files):
    tmp = tiny_files["dir"]
    tuned = ["--target", "0.5", "--cycles", "2", "--epochs", "2", "--no-latency"]
    one = _run(tmp, tiny_files, "one.onnx", 1, *tuned)
    two = _run(tmp, tiny_files, "two.onnx", 2, *tuned)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    alone, shared = _report(tmp, "one.onnx"), _report(tmp, "two.onnx")
    assert shared["threads"]["processes"] == 2
    assert [c["epochs"] for c in shared["cycles"]] == [c["epochs"] for c in alone["cycles"]]
    # the same global batch, shuffled otherwise: as close as another seed would be
    assert abs(shared["accuracy"]["after"] - alone["accuracy"]["after"]) <= 0.1
    assert two.stderr.count("epoch 1/") == len(shared["cycles"])  # logged by rank 0 alone


def test_an_error_on_the_ranks_is_one_line_each_and_nothing_is_written(tiny_files):
    tmp = tiny_files["dir"]
    before = digest(tmp)
    failed = _run(tmp, tiny_files, "bad.onnx", 2, "--target", "0.5", "--quiet",
                  data=tmp / "missing.npz")
    assert failed.returncode != 0
    errors = [line for line in failed.stderr.splitlines() if line.startswith("Error")]
    assert errors and all("missing.npz does not exist" in line and "(rank " in line
                          for line in errors)
    assert digest(tmp) == before


_LEAVES = """
import os
import torch
from compressor.io import ranks
ranks.join("cpu")
torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),))  # what capture runs
ranks.leave()
threads = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
with open(os.path.join(os.path.dirname(__file__), f"rank{os.environ['RANK']}"), "w") as f:
    f.write(" ".join(sorted(t for t in threads if "gloo" in t)))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="lists threads through /proc")
def test_leaving_the_group_stops_its_threads_though_torch_export_ran(tmp_path):
    script = tmp_path / "leaves.py"
    script.write_text(_LEAVES)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", str(script)], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    left = {f.name: f.read_text() for f in tmp_path.glob("rank*")}
    assert left == {"rank0": "", "rank1": ""}  # no gloo thread left running to abort at exit


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_group_on_cuda_without_a_gpu_is_refused_before_it_starts(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(OptionError, match="no CUDA device is available here"):
        ranks.join("cuda")
    assert not torch.distributed.is_initialized()
