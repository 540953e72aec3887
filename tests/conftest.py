from __future__ import annotations

import atexit
import hashlib
import json
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

from compressor import cli
from compressor.runtime import timing
from tests.helpers import sparse_onnx
from tests.nets import tiny

# Property and fuzz tests: the same examples on every run (CI must not flake), nothing
# written into the working directory (hypothesis keeps its files in a temporary directory
# removed at exit), no per-example deadline (exports take ~0.3 s).
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="compressor-hypothesis-")
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, ignore_errors=True)
set_hypothesis_home_dir(_HYPOTHESIS_HOME)
settings.register_profile("compressor", derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                 HealthCheck.too_slow])
settings.load_profile("compressor")


_CACHE_HOME = tempfile.mkdtemp(prefix="compressor-cache-")
atexit.register(shutil.rmtree, _CACHE_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def _channel_multiple_known(monkeypatch):
    """`--align auto` reads this machine's multiples from a cache that says 8 for conv
    channels and exact widths for Linear layers, so that no test times kernels and every
    machine prunes the same widths."""
    from compressor.measure.widths import machine_key

    cache = Path(_CACHE_HOME) / "compressor" / "widths.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({f"conv on {machine_key()}": 8,
                                 f"gemm out on {machine_key()}": 1}))
    monkeypatch.setenv("XDG_CACHE_HOME", _CACHE_HOME)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state: torch, numpy and random."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys):
    """Run `compress ARGS...` in-process; return exit code, stdout, stderr."""

    def run(*args: object) -> CliResult:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(exit_info.value.code, captured.out, captured.err)

    return run


@pytest.fixture
def fixed_latency(monkeypatch):
    """`fixed_latency(ms0, ms1, ...)`: every latency measurement calls each of its runs once
    and reports run i as taking ms_i (cycling), so latency budgets in tests hold or break by
    design, never because the machine is slow or busy."""

    def install(*ms: float) -> None:
        def timings(runs, *, seconds, rounds=5, min_calls=10, warmup=5):
            for run in runs:
                run()
            return [[[ms[i % len(ms)] / 1e3]] for i in range(len(runs))]

        monkeypatch.setattr(timing, "timings", timings)

    return install


def labelled(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs for `tiny` with labels from a fixed random linear rule (learnable, 4 classes)."""
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, 20)).astype(np.float32)
    rule = np.random.default_rng(123).normal(size=(20, 4))
    return x, (x @ rule).argmax(axis=1)


@pytest.fixture
def tiny_files(tmp_path: Path) -> dict[str, Path]:
    """The tiny model as a state_dict and labelled data as .npz."""
    model = tmp_path / "tiny.pt"
    torch.save(tiny().state_dict(), model)
    data = tmp_path / "data.npz"
    x, y = labelled()
    np.savez(data, x=x, y=y)
    return {"model": model, "data": data, "dir": tmp_path}


def digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` and its hash: equal before and after = nothing written."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_refused(run_cli, args: list[object], folder: Path) -> None:
    """`compress ARGS` fails as bad input must: exit 2, one line, no traceback, no stdout,
    nothing written or changed in `folder`."""
    before = digest(folder)
    result = run_cli(*args)
    assert result.code == 2, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.err
    assert "Traceback" not in result.err and result.out == ""
    assert digest(folder) == before


@pytest.fixture(scope="session")
def sparse_model() -> bytes:
    """The tiny MLP exported with 90% of every weight matrix zero (smallest |w|)."""
    return sparse_onnx(tiny(), torch.from_numpy(labelled()[0])).SerializeToString()
