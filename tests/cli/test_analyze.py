"""`compress analyze`: a model and the file compress made from it, side by side; PNGs and JSON
with --out; one line and exit 2 for a model with nothing to analyse."""

from __future__ import annotations

import json

import torch

from tests.nets import no_layers

FAST = ("--no-latency", "--quiet")


def test_a_model_and_its_pruned_file_with_data(run_cli, tiny_files):
    pruned = tiny_files["dir"] / "pruned.onnx"
    made = run_cli(tiny_files["model"], "--arch", "tests.nets:tiny", "--target", "0.5",
                   "--data", tiny_files["data"], "--epochs", "0", "-o", pruned, *FAST)
    assert made.code == 0, made.err
    result = run_cli("analyze", tiny_files["model"], "--arch", "tests.nets:tiny", "--compare",
                     pruned, "--data", tiny_files["data"], "--json")
    assert result.code == 0, result.err
    dense, small = json.loads(result.out)["models"]
    assert [layer["weights"]["shape"] for layer in dense["layers"]] == \
        [[32, 20], [24, 32], [16, 24], [4, 16]]
    plan = json.loads(pruned.with_suffix(".json").read_text())["layers"]
    assert [layer["weights"]["shape"][0] for layer in small["layers"]] == \
        [row["out_after"] for row in plan]  # the ONNX Gemms, outputs first
    first = dense["layers"][0]
    assert first["weights"]["rank"] == 20 and len(first["weights"]["singular_values"]) == 20
    assert len(first["firing"]["rates"]) == 32 and 0 < first["firing"]["mean"] <= 1
    assert 1 <= first["pca"]["95%"] <= first["pca"]["99%"] <= 32
    assert dense["layers"][-1]["firing"] is None  # the output layer has no units to fire
    assert small["layers"][0]["firing"] is None  # ONNX files: weights only
    (baseline,) = json.loads(result.out)["pca_baseline"]
    assert list(baseline["ranks"].values()) == \
        [layer["weights"]["rank"] for layer in small["layers"][:3]]
    assert all(0 < baseline[k] <= 1 for k in ("accuracy_model", "accuracy_compared",
                                               "accuracy_pca"))
    table = run_cli("analyze", tiny_files["model"], "--arch", "tests.nets:tiny")
    assert table.code == 0 and "eff. rank" in table.out and "firing and PCA need --data" in \
        table.out


def test_out_writes_the_json_and_pngs(run_cli, tiny_files):
    out = tiny_files["dir"] / "analysis"
    result = run_cli("analyze", tiny_files["model"], "--arch", "tests.nets:tiny", "--data",
                     tiny_files["data"], "--out", out)
    assert result.code == 0, result.err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["analysis.json", "firing_rates_0.png", "spectra.png", "weights_0.png"]
    assert all((out / n).read_bytes()[:4] == b"\x89PNG" for n in names if n.endswith(".png"))


def test_nothing_to_analyse_is_one_line_and_exit_2(run_cli, tmp_path):
    model = tmp_path / "none.pt"
    torch.save(no_layers().state_dict(), model)
    result = run_cli("analyze", model, "--arch", "tests.nets:no_layers", "--input-shape", "20")
    assert result.code == 2 and "nothing to analyse" in result.err
    assert len(result.err.strip().splitlines()) == 1
