"""`compress` on CNNs from the command line: channels pruned, every Conv and Linear counted,
FLOPs that `compress check` agrees with, --of flops, data-free runs with --input-shape."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from compressor.measure.onnx_file import flops_per_sample
from tests.helpers import save_model
from tests.nets import DenseBlock, Inception, PreActDense, SmallCNN, small_resnet

FAST = ("--no-latency", "--quiet")


@pytest.fixture
def cnn_files(tmp_path: Path) -> dict[str, Path]:
    """SmallCNN and small_resnet as state_dicts, and labelled 12 x 12 images (a learnable
    rule: which quadrant is brightest)."""
    g = np.random.default_rng(0)
    x = g.random((400, 1, 12, 12), dtype=np.float32)
    quadrants = x.reshape(400, 2, 6, 2, 6).sum(axis=(2, 4)).reshape(400, 4)
    np.savez(tmp_path / "images.npz", x=x, y=quadrants.argmax(1))
    nets = {"cnn": SmallCNN(), "resnet": small_resnet(), "inception": Inception(),
            "dense": DenseBlock(), "preact": PreActDense()}
    for name, net in nets.items():
        save_model(net, tmp_path / f"{name}.pt", "sd", torch.from_numpy(x[:2]))
    return {"dir": tmp_path, "data": tmp_path / "images.npz",
            **{name: tmp_path / f"{name}.pt" for name in nets}}


@pytest.mark.parametrize("name, arch", [("cnn", "tests.nets:SmallCNN"),
                                        ("resnet", "tests.nets:small_resnet"),
                                        ("inception", "tests.nets:Inception"),
                                        ("dense", "tests.nets:DenseBlock"),
                                        ("preact", "tests.nets:PreActDense")])
def test_conv_channels_are_pruned_counted_and_checked(run_cli, cnn_files, name, arch):
    out = cnn_files["dir"] / f"{name}.onnx"
    result = run_cli(cnn_files[name], "--arch", arch, "--target", "0.5", "--data",
                     cnn_files["data"], "--cycles", "2", "--epochs", "1", "--align", "1", "-o",
                     out, *FAST)
    assert result.code == 0, result.err
    report = json.loads(out.with_suffix(".json").read_text())
    # one channel of a model this small is ~1.5% of its weights (the concatenating ones: up
    # to 9% and 16%, a channel of DenseBlock's being read by every later layer)
    assert 0.5 <= report["size"]["reduction"] <= (0.6 if name in ("preact", "dense") else 0.55)
    proto = onnx.load(out)
    norms = sum(n.op_type == "BatchNormalization" for n in proto.graph.node)
    assert norms == (3 if name == "preact" else 0)  # folded where a layer precedes it alone
    conv_rows = [row for row in report["layers"] if row["note"] == "pruned"]
    assert conv_rows and any(row["out_after"] < row["out_before"] for row in conv_rows)
    # the report's FLOPs are what compress check measures on the file it wrote
    assert report["size"]["flops_after"] == flops_per_sample(proto)[0]
    check = run_cli("check", out, "--max-flops", report["size"]["flops_after"], "--json")
    assert check.code == 0 and json.loads(check.out)["budgets"][0]["value"] == \
        report["size"]["flops_after"]
    assert report["parity"]["max_abs_diff"] <= 1e-4 and report["accuracy"]["after"] is not None


def test_of_flops_reduces_flops_by_the_target(run_cli, cnn_files):
    out = cnn_files["dir"] / "flops.onnx"
    result = run_cli(cnn_files["cnn"], "--arch", "tests.nets:SmallCNN", "--target", "0.6",
                     "--of", "flops", "--data", cnn_files["data"], "--epochs", "0", "--align",
                     "1", "-o", out, *FAST)
    assert result.code == 0, result.err
    report = json.loads(out.with_suffix(".json").read_text())
    reached = 1 - report["size"]["flops_after"] / report["size"]["flops_before"]
    assert 0.6 <= reached <= 0.62, reached
    assert report["cycles"][-1]["reduction"] == pytest.approx(reached, abs=1e-6)
    result = run_cli(cnn_files["cnn"], "--arch", "tests.nets:SmallCNN", "--target", "0.6",
                     "--of", "flops", "--data", cnn_files["data"], "--epochs", "0", "--align",
                     "1", "-o", out, "--no-latency")
    flops_row = next(line for line in result.out.splitlines() if line.startswith("FLOPs"))
    assert f"-{100 * reached:.2f}% (target 60.00%)" in flops_row


def test_a_data_free_cnn_run_needs_and_takes_an_input_shape(run_cli, cnn_files):
    args = [cnn_files["cnn"], "--arch", "tests.nets:SmallCNN", "--target", "0.3", *FAST]
    refused = run_cli(*args)
    assert refused.code == 2 and "--input-shape" in refused.err
    out = cnn_files["dir"] / "free.onnx"
    result = run_cli(*args, "--input-shape", "1,12,12", "-o", out)
    assert result.code == 0, result.err
    dims = [d.dim_value for d in onnx.load(out).graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == [1, 12, 12]


@pytest.mark.parametrize("options", [
    ("--score", "neurons-weights", "--cycles", "2", "--epochs", "1"),
    ("--scope", "local", "--align", "4", "--epochs", "0"),
    ("--compensate", "merge", "--criterion", "l2", "--epochs", "0"),
    ("--format", "int8", "--epochs", "0")])
@pytest.mark.parametrize("name, arch", [("resnet", "tests.nets:small_resnet"),
                                        ("dense", "tests.nets:DenseBlock")])
def test_every_pruning_mode_works_on_residual_and_concatenated_channels(run_cli, cnn_files,
                                                                        options, name, arch):
    out = cnn_files["dir"] / "mode.onnx"
    result = run_cli(cnn_files[name], "--arch", arch, "--target", "0.4",
                     "--data", cnn_files["data"], "-o", out, *options, *FAST)
    assert result.code == 0, result.err
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["size"]["reduction"] >= 0.4 and report["parity"]["max_abs_diff"] <= 1e-4


def test_the_error_criterion_says_which_layers_it_cannot_rank(run_cli, cnn_files):
    result = run_cli(cnn_files["cnn"], "--arch", "tests.nets:SmallCNN", "--target", "0.4",
                     "--data", cnn_files["data"], "--criterion", "error", "--epochs", "0",
                     "-o", cnn_files["dir"] / "e.onnx", *FAST)
    assert result.code == 2 and "--criterion error cannot rank the units of features.0" in \
        result.err and not (cnn_files["dir"] / "e.onnx").exists()


def test_by_default_conv_channels_are_kept_in_multiples_of_8(run_cli, cnn_files):
    out = cnn_files["dir"] / "aligned.onnx"
    result = run_cli(cnn_files["resnet"], "--arch", "tests.nets:small_resnet", "--target", "0.2",
                     "--data", cnn_files["data"], "--epochs", "0", "-o", out, *FAST)
    assert result.code == 0, result.err
    report = json.loads(out.with_suffix(".json").read_text())
    widths = {row["name"]: (row["out_before"], row["out_after"]) for row in report["layers"]}
    assert widths["4.conv1"] == (12, 8) and widths["0"] == (8, 8)
    # a multiple of 8, or the whole width (12 channels need not drop to 8)
    assert all(after % 8 == 0 or after == before
               for name, (before, after) in widths.items() if name != "7")
    notes = {row["name"]: row["note"] for row in report["layers"]}
    assert notes["3.conv2"] == "pruned with 0 (same channels)" and notes["0"] == "pruned"
    # 8 is what the test cache says this machine's convolutions step in (conftest)
    assert set(report["plan"]["config"]["prune"]["steps"].values()) == {8}
    assert report["plan"]["choices"]["align"]["reason"].startswith(
        "conv channels in multiples of 8 (onnxruntime's")


def test_align_auto_rounds_conv_channels_to_the_measured_step(run_cli, cnn_files, monkeypatch,
                                                              tmp_path):
    from compressor.measure.widths import machine_key

    cache = tmp_path / "cache" / "compressor" / "widths.json"
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({f"conv on {machine_key()}": 4}))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = cnn_files["dir"] / "four.onnx"
    result = run_cli(cnn_files["resnet"], "--arch", "tests.nets:small_resnet", "--target", "0.3",
                     "--data", cnn_files["data"], "--epochs", "0", "-o", out, "--no-latency")
    assert result.code == 0, result.err
    report = json.loads(out.with_suffix(".json").read_text())
    widths = [row["out_after"] for row in report["layers"] if row["name"] != "7"]
    assert all(w % 4 == 0 for w in widths) and any(w % 8 for w in widths), widths
    align = next(line for line in result.out.splitlines() if line.startswith("  align"))
    assert "conv channels in multiples of 4 (onnxruntime" in align


def test_channels_are_removed_per_layer_unless_told_otherwise(run_cli, cnn_files):
    args = [cnn_files["resnet"], "--arch", "tests.nets:small_resnet", "--target", "0.4",
            "--data", cnn_files["data"], "--epochs", "0", *FAST]
    scopes = {}
    for given in ((), ("--scope", "global")):
        out = cnn_files["dir"] / f"scope{len(given)}.onnx"
        assert run_cli(*args, *given, "-o", out).code == 0
        report = json.loads(out.with_suffix(".json").read_text())
        scopes[given] = report["plan"]["choices"]["scope"]["value"]
    assert scopes == {(): "local", ("--scope", "global"): "global"}


def test_int8_quantizes_convolutions_statically_on_the_calibration_data(run_cli, cnn_files):
    out = cnn_files["dir"] / "int8.onnx"
    result = run_cli(cnn_files["resnet"], "--arch", "tests.nets:small_resnet", "--target",
                     "0.4", "--data", cnn_files["data"], "--epochs", "0", "--format", "int8",
                     "-o", out, *FAST)
    assert result.code == 0, result.err
    proto = onnx.load(out)
    producer = {o: n for n in proto.graph.node for o in n.output}
    raw = {i.name for i in proto.graph.input}  # the conv on the raw pixels stays float32
    convs = [n for n in proto.graph.node if n.op_type == "Conv" and n.input[0] not in raw]
    assert convs and all(producer[n.input[1]].op_type == "DequantizeLinear" for n in convs)
    assert all(producer[n.input[0]].op_type == "DequantizeLinear" for n in convs)  # QDQ input
    report = json.loads(out.with_suffix(".json").read_text())
    kernels = {row["name"]: row["kernel"] for row in report["storage"]["kernels"]}
    assert sum(k == "int8" for k in kernels.values()) >= len(convs)
    assert report["parity"]["int8_max_abs_diff"] is not None
    assert report["accuracy"]["after"] is not None
