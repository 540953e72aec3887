"""The exported file takes the input the model was given: the layout chosen is printed and
recorded with the others the model would also take, `--input-shape` chooses one (with data
too), and float64 models are refused with the fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from tests.conftest import assert_refused
from tests.helpers import save_model

FAST = ("--no-latency", "--quiet")


def _flatten_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """An MLP with Flatten inside (it runs on [N, 1, 4, 5], [N, 20] and [N, 4, 5] alike),
    saved as a state_dict, and labelled [N, 1, 4, 5] data."""
    g = np.random.default_rng(0)
    x = g.random((300, 1, 4, 5), dtype=np.float32)
    y = x.reshape(300, 4, 5).sum(2).argmax(1)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    net = _flatten_mlp()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):  # learns the rule: the plain data scores far above chance
        loss = nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_model(net, tmp_path / "m.pt", "sd", torch.from_numpy(x[:2]))
    return {"dir": tmp_path, "model": tmp_path / "m.pt", "data": tmp_path / "data.npz"}


def _run(run_cli, files, *extra):
    out = files["dir"] / "out.onnx"
    result = run_cli(files["model"], "--arch", "tests.cli.test_inputs:_flatten_mlp",
                     "--target", "0.5", "--data", files["data"], "--epochs", "0", "-o", out,
                     "--no-latency", *extra)
    assert result.code == 0, result.err
    return result, json.loads(out.with_suffix(".json").read_text()), out


def test_the_report_names_the_input_and_the_other_shapes_the_model_takes(run_cli, files):
    result, report, _ = _run(run_cli, files)
    assert report["source"]["input"] == {"name": "input", "shape": ["batch", 1, 4, 5],
                                         "dtype": "float32",
                                         "also": "[batch, 20], [batch, 4, 5]"}
    assert ("input input: float32 [batch, 1, 4, 5] (the model also takes [batch, 20], "
            "[batch, 4, 5]; --input-shape chooses one)") in result.out


def test_input_shape_chooses_the_layout_with_data_and_the_file_takes_exactly_it(run_cli,
                                                                                 files):
    _, report, out = _run(run_cli, files, "--input-shape", "4,5", "--quiet")
    given = report["source"]["input"]
    assert given["shape"] == ["batch", 4, 5] and given["also"] == ""
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((3, 4, 5), dtype=np.float32)
    assert sess.run(None, {"input": x})[0].shape == (3, 4)
    assert report["accuracy"]["after"] is not None


def test_an_input_shape_with_another_number_of_values_is_refused(run_cli, files):
    args = [files["model"], "--arch", "tests.cli.test_inputs:_flatten_mlp", "--target", "0.5",
            "--data", files["data"], "--input-shape", "3,3", *FAST]
    assert_refused(run_cli, args, files["dir"])
    err = run_cli(*args).err
    assert "[N, 1, 4, 5] (20 values)" in err and "[N, 3, 3] has 9" in err


def test_data_free_runs_export_the_input_shape_given(run_cli, files):
    out = files["dir"] / "free.onnx"
    result = run_cli(files["model"], "--arch", "tests.cli.test_inputs:_flatten_mlp",
                     "--target", "0.5", "--input-shape", "4,5", "-o", out, *FAST)
    assert result.code == 0, result.err
    assert json.loads(out.with_suffix(".json").read_text())["source"]["input"]["shape"] == \
        ["batch", 4, 5]


def test_a_float64_model_is_refused_with_the_fix(run_cli, files):
    """(A float64 state_dict loads into the float32 module --arch builds, and runs.)"""
    double = save_model(_flatten_mlp().double(), files["dir"] / "double.pt", "ts",
                        torch.rand(2, 1, 4, 5, dtype=torch.float64))
    args = [double, "--target", "0.5", "--data", files["data"], *FAST]
    assert_refused(run_cli, args, files["dir"])
    assert "weights are float64" in run_cli(*args).err and "model.float()" in \
        run_cli(*args).err


class PerToken(nn.Module):
    """Logits for every position of the input ([batch, 4, classes]), as a language model's
    head writes them for every token."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(5, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.reshape(x.shape[0], 4, 5))))


def test_a_model_with_logits_per_position_is_refused_naming_its_output(run_cli, files):
    model = files["dir"] / "per_token.pt"
    torch.save(PerToken().state_dict(), model)
    args = [model, "--arch", "tests.cli.test_inputs:PerToken", "--target", "0.5", "--data",
            files["data"], *FAST]
    assert_refused(run_cli, args, files["dir"])
    err = run_cli(*args).err
    assert "returns [2, 4, 3]" in err and "[batch, classes]" in err and "data" not in err


class TwoHeads(nn.Module):
    """Returns (logits, features) or {"logits": ..., "features": ...}."""

    def __init__(self, as_dict: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(20, 16), nn.ReLU())
        self.head = nn.Linear(16, 4)
        self.as_dict = as_dict

    def forward(self, x):
        h = self.body(x)
        return {"logits": self.head(h), "features": h} if self.as_dict else (self.head(h), h)


def two_heads_dict() -> TwoHeads:
    return TwoHeads(as_dict=True)


@pytest.mark.parametrize("arch, logits", [("TwoHeads", "0"), ("two_heads_dict", "logits")])
def test_logits_picks_the_output_of_a_model_with_several(run_cli, files, arch, logits):
    model = files["dir"] / f"{arch}.pt"
    torch.save(globals()[arch]().state_dict(), model)
    args = [model, "--arch", f"tests.cli.test_inputs:{arch}", "--target", "0.5", "--data",
            files["data"], "--epochs", "0", *FAST]
    refused = run_cli(*args)
    assert refused.code == 2 and "pass --logits" in refused.err
    assert "(0 to 1)" in refused.err if logits == "0" else "logits, features" in refused.err
    out = files["dir"] / "picked.onnx"
    result = run_cli(*args, "--logits", logits, "-o", out)
    assert result.code == 0, result.err
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.shape for o in sess.get_outputs()] == [["batch", 4]] or \
        len(sess.get_outputs()) == 1
    wrong = run_cli(*args, "--logits", "7" if logits == "0" else "scores")
    assert wrong.code == 2 and "has no entry" in wrong.err


def test_normalize_changes_what_the_model_sees_and_is_recorded(run_cli, files):
    plain = _run(run_cli, files, "--quiet")[1]
    shifted = _run(run_cli, files, "--normalize", "0.5,0.25", "--quiet")[1]
    assert shifted["source"]["normalize"] == [[0.5], [0.25]]
    assert plain["source"]["normalize"] is None
    assert shifted["accuracy"]["before"] != plain["accuracy"]["before"]


def test_an_input_model_near_chance_gets_a_warning_naming_normalize(run_cli, files):
    result, report, _ = _run(run_cli, files, "--normalize", "100,0.001")
    assert report["accuracy"]["before"] < 0.5  # 4 classes: twice chance
    assert _run(run_cli, files, "--quiet")[1]["warnings"] == []  # the plain data scores well
    assert len(report["warnings"]) == 1 and "--normalize" in report["warnings"][0]
    assert "warning: the input model scores" in result.out


def test_normalize_with_the_wrong_number_of_channels_is_refused(run_cli, files):
    args = [files["model"], "--arch", "tests.cli.test_inputs:_flatten_mlp", "--target", "0.5",
            "--data", files["data"], "--normalize", "0.1,0.2,0.3,1,1,1", *FAST]
    assert_refused(run_cli, args, files["dir"])
    assert "3 channels" in run_cli(*args).err


def test_the_json_records_versions_every_option_units_and_absolute_paths(run_cli, files):
    _, report, _ = _run(run_cli, files, "--quiet", "--seed", "3")
    assert Path(report["source"]["model"]).is_absolute()
    assert Path(report["source"]["output"]).is_absolute()
    assert set(report["versions"]) == {"compressor", "python", "torch", "onnx", "onnxruntime"}
    options = report["plan"]["config"]
    assert options["seed"] == 3 and options["prune"]["select"]["scope"] == "global"
    assert options["prune"]["cycles"] == 1 and options["finetune"]["max_epochs"] == 0
    assert set(options["prune"]["align"].values()) == {1} and options["format"] == "dense"
    assert report["units"]["latency"].startswith("ms")
