"""`compress` on a GELU MLP: pruned end to end (auto criterion: energy when fine-tuned, the
least-squares error in one shot), verified in onnxruntime; merging refused where it is not
exact."""

from __future__ import annotations

import json

import torch

from tests.nets import tiny_gelu

FAST = ("--no-latency", "--quiet")


def test_a_gelu_mlp_is_ranked_by_energy_when_fine_tuned_and_by_error_in_one_shot(run_cli, tiny_files):
    model = tiny_files["dir"] / "gelu.pt"
    torch.save(tiny_gelu().state_dict(), model)
    out = tiny_files["dir"] / "gelu.onnx"
    result = run_cli(model, "--arch", "tests.nets:tiny_gelu", "--target", "0.5", "--data",
                     tiny_files["data"], "--cycles", "2", "--epochs", "1", "-o", out, *FAST)
    assert result.code == 0, result.err
    report = json.loads(out.with_suffix(".json").read_text())
    choices = report["plan"]["choices"]
    assert (choices["criterion"]["value"], choices["compensate"]["value"]) == ("energy", "lsq")
    assert report["plan"]["choices"]["criterion"]["reason"].startswith("fine-tuned")
    assert 0.5 <= report["size"]["reduction"] < 0.52 and report["parity"]["max_abs_diff"] <= 1e-4
    assert [row["note"] for row in report["layers"]].count("pruned") == 3
    one_shot = tiny_files["dir"] / "gelu-one-shot.onnx"
    result = run_cli(model, "--arch", "tests.nets:tiny_gelu", "--target", "0.5", "--data",
                     tiny_files["data"], "--epochs", "0", "-o", one_shot, "--no-latency")
    assert result.code == 0, result.err
    choices = json.loads(one_shot.with_suffix(".json").read_text())["plan"]["choices"]
    assert choices["criterion"]["value"] == "error"
    assert "one shot (epochs 0), every pruned layer read by one Linear" in result.out


def test_data_free_gelu_is_not_merged_and_explicit_merge_is_refused(run_cli, tiny_files):
    model = tiny_files["dir"] / "gelu.pt"
    torch.save(tiny_gelu().state_dict(), model)
    out = tiny_files["dir"] / "free.onnx"
    result = run_cli(model, "--arch", "tests.nets:tiny_gelu", "--target", "0.4", "-o", out,
                     *FAST)
    assert result.code == 0, result.err
    choices = json.loads(out.with_suffix(".json").read_text())["plan"]["choices"]
    assert choices["compensate"]["value"] == "none"
    refused = tiny_files["dir"] / "merge.onnx"
    result = run_cli(model, "--arch", "tests.nets:tiny_gelu", "--target", "0.4",
                     "--compensate", "merge", "-o", refused, *FAST)
    assert result.code == 2 and "merge is exact only for units read through ReLU" in result.err
    assert len(result.err.strip().splitlines()) == 1 and not refused.exists()
