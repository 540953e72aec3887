"""The Python API: docs/api.md's example runs; every form of data works; the input model is
never changed; bad options are refused with the valid ones named; `python -m compressor`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import compressor
from compressor.errors import UsageError
from tests.nets import SmallCNN, tiny

REPO = Path(__file__).resolve().parents[1]


def test_the_documented_example_runs(tmp_path, monkeypatch):
    code = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "api.md").read_text(), re.S)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "docs/api.md", "exec"), namespace)
    result = namespace["result"]
    assert result.report.reduction >= 0.8 and (tmp_path / "small.onnx").exists()
    assert result.report.accuracy.after is not None and namespace["check"].rows
    assert namespace["model"][0].out_features == 64  # the input model is not pruned


def _labelled(n: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 20)
    return x, (x[:, :10].sum(1) > x[:, 10:].sum(1)).long() * 3


@pytest.mark.parametrize("form", ["tuple", "dataset", "loader"])
def test_tensors_datasets_and_loaders_are_the_same_data(form):
    x, y = _labelled()
    data = {"tuple": (x, y), "dataset": torch.utils.data.TensorDataset(x, y),
            "loader": torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                                  batch_size=64)}[form]
    result = compressor.compress(tiny(), 0.5, data=data, epochs=0, latency=False)
    reference = compressor.compress(tiny(), 0.5, data=(x, y), epochs=0, latency=False)
    assert result.onnx == reference.onnx and result.report.accuracy.after is not None
    assert isinstance(result.model, nn.Module)
    with torch.no_grad():
        assert result.model(x[:5]).shape == (5, 4)


def test_unlabelled_tensors_prune_in_one_shot_and_the_pruned_model_is_returned():
    x, _ = _labelled()
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = compressor.compress(model, 0.5, data=x, latency=False)
    assert result.report.accuracy is None and len(result.report.cycles) == 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sum(p.numel() for p in result.model.parameters()) < \
        sum(p.numel() for p in model.parameters())


def test_a_data_free_cnn_takes_its_input_shape(tmp_path):
    result = compressor.compress(SmallCNN(), 0.3, input_shape=(1, 12, 12), latency=False)
    assert result.report.source.input.shape == ("batch", 1, 12, 12)
    assert result.save_onnx(tmp_path / "c.onnx").read_bytes() == result.onnx
    assert '"target": 0.3' in result.save_report(tmp_path / "c.json").read_text()


def test_unknown_options_and_budgets_name_the_valid_ones(tmp_path):
    with pytest.raises(UsageError, match="unknown option max_epochs.*epochs"):
        compressor.compress(tiny(), 0.5, max_epochs=1)
    with pytest.raises(UsageError, match="unknown budget max_bytes.*max_size"):
        compressor.check(tmp_path / "m.onnx", max_bytes=10)


def test_check_measures_budgets_as_the_command_does(tmp_path):
    x, y = _labelled()
    path = compressor.compress(tiny(), 0.5, data=(x, y), epochs=0,
                               latency=False).save_onnx(tmp_path / "m.onnx")
    assert compressor.check(path, max_params=10**6).passed
    assert not compressor.check(path, max_params=10).passed


def test_python_m_compressor_is_the_command():
    done = subprocess.run([sys.executable, "-m", "compressor", "--help"], capture_output=True,
                          text=True, cwd=REPO)
    assert done.returncode == 0 and "Usage: compress" in done.stdout


def test_importing_the_package_loads_no_torch_until_the_api_is_used():
    code = "import sys, compressor; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, check=True)
    assert done.stdout.strip() == "False"


def test_the_api_and_the_command_make_the_same_file(run_cli, tiny_files):
    out = tiny_files["dir"] / "cli.onnx"
    assert run_cli(tiny_files["model"], "--arch", "tests.nets:tiny", "--target", "0.5",
                   "--data", tiny_files["data"], "--cycles", "2", "--epochs", "1", "-o", out,
                   "--no-latency", "--quiet").code == 0
    data = np.load(tiny_files["data"])
    result = compressor.compress(tiny(), 0.5, data=(torch.from_numpy(data["x"]),
                                                    torch.from_numpy(data["y"])),
                                 cycles=2, epochs=1, latency=False)
    assert result.onnx == out.read_bytes()


def test_an_exported_program_is_taken_in_its_own_input_shape():
    from compressor.graph.capture import export_program

    x, y = _labelled()
    program = export_program(tiny().eval(), x[:2])
    before = {k: v.clone() for k, v in program.state_dict.items()}
    result = compressor.compress(program, 0.5, data=(x, y), epochs=0, latency=False)
    assert result.report.source.input.shape == ("batch", 20)
    assert result.report.accuracy.after is not None
    # the caller's program is not changed: it compresses again, to the same file
    assert program.state_dict.keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in program.state_dict.items())
    again = compressor.compress(program, 0.5, data=(x, y), epochs=0, latency=False)
    assert again.onnx == result.onnx


def test_a_bad_option_names_the_keyword_and_the_command_names_the_flag(run_cli, tiny_files):
    with pytest.raises(UsageError, match="`factor` must be auto, off"):
        compressor.compress(tiny(), 0.5, factor="half")
    with pytest.raises(UsageError, match="give `method` or `criterion`"):
        compressor.compress(tiny(), 0.5, method="magnitude", criterion="l1")
    args = [tiny_files["model"], "--arch", "tests.nets:tiny", "--target", "0.5",
            "--method", "magnitude", "--criterion", "l1"]
    assert "give --method or --criterion" in run_cli(*args).err
