from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from compressor.export.to_onnx import to_onnx
from compressor.export.verify import run_onnx
from compressor.runtime import session
from tests.conftest import assert_refused, labelled
from tests.helpers import graph_of
from tests.nets import tiny


@pytest.fixture(scope="module")
def exported() -> dict[str, bytes]:
    """The tiny model in ONNX, and a second model whose output biases differ."""
    x = torch.randn(2, 20)
    other = tiny()
    with torch.no_grad():
        other[6].bias += torch.tensor([0.0, 0.3, 0.0, -0.3])
    return {"tiny.onnx": to_onnx(graph_of(tiny(), x), x),
            "other.onnx": to_onnx(graph_of(other, x), x)}


@pytest.fixture
def files(tiny_files, exported) -> dict[str, Path]:
    """tiny_files plus `exported` written beside them."""
    d = tiny_files["dir"]
    for name, data in exported.items():
        (d / name).write_bytes(data)
    return {**tiny_files, "onnx": d / "tiny.onnx", "other": d / "other.onnx"}


def test_check_passes_and_exits_0_when_every_budget_holds(run_cli, files):
    size = files["onnx"].stat().st_size
    result = run_cli("check", files["onnx"], "--max-size", f"{size}B", "--max-params", "2000",
                     "--max-flops", "3712", "--min-accuracy", "0%", "--data", files["data"])
    assert result.code == 0, result.err
    assert "all 4 budgets hold" in result.out and result.err == ""


def test_a_broken_budget_exits_1_and_names_it_on_stderr(run_cli, files):
    result = run_cli("check", files["onnx"], "--max-size", "1KB", "--max-flops", "3711")
    assert result.code == 1
    assert result.err.strip().splitlines() == [
        f"Budget broken: size {files['onnx'].stat().st_size:,} B > 1,000 B; "
        "flops 3,712 > 3,711"]
    assert result.out.count("FAIL") == 2


def test_accuracy_is_top1_of_the_onnx_model_on_every_sample_of_the_file(run_cli, files):
    x, y = labelled()
    expected = float((run_onnx(session(files["onnx"].read_bytes()), torch.from_numpy(x))
                      .argmax(1).numpy() == y).mean())
    result = run_cli("check", files["onnx"], "--min-accuracy", "0.01", "--data", files["data"],
                     "--json")
    assert result.code == 0, result.err
    row = json.loads(result.out)["budgets"][0]
    assert row["name"] == "accuracy" and row["value"] == pytest.approx(expected, abs=1e-12)
    assert "600 samples" in row["detail"]


@pytest.mark.parametrize("reference", ["onnx", "state_dict", "other"])
def test_agreement_with_onnx_and_pytorch_references(run_cli, files, reference):
    ref = {"onnx": files["onnx"], "state_dict": files["model"], "other": files["other"]}[reference]
    arch = ("--arch", "tests.nets:tiny") if reference == "state_dict" else ()
    result = run_cli("check", files["onnx"], "--min-agreement", "1.0", "--reference", ref, *arch,
                     "--data", files["data"], "--json")
    row = json.loads(result.out)["budgets"][0]
    if reference == "other":  # the shifted biases change some predictions, not all
        x = torch.from_numpy(labelled()[0])
        a, b = (run_onnx(session(p.read_bytes()), x).argmax(1) for p in (files["onnx"], ref))
        expected = float((a == b).double().mean())
        assert result.code == 1 and 0 < expected < 1
        assert row["value"] == pytest.approx(expected, abs=1e-12)
    else:
        assert result.code == 0 and row["value"] == 1.0, result.err


def test_latency_budgets_are_measured_against_the_baseline_and_written_as_junit(
        run_cli, files, fixed_latency):
    fixed_latency(3.0, 2.0)  # the model 3 ms, the baseline 2 ms
    junit = files["dir"] / "reports" / "check.xml"
    junit.parent.mkdir()
    result = run_cli("check", files["onnx"], "--max-latency", "3.5", "--max-latency-ratio", "1.4",
                     "--baseline", files["other"], "--batch", "32", "--junit", junit, "--json")
    assert result.code == 1, result.err
    rows = {r["name"]: r for r in json.loads(result.out)["budgets"]}
    assert (rows["latency"]["value"], rows["latency"]["passed"]) == (3.0, True)
    assert (rows["latency_ratio"]["value"], rows["latency_ratio"]["passed"]) == (1.5, False)
    assert "batch 32" in rows["latency"]["detail"] and "random inputs" in rows["latency"]["detail"]
    cases = ET.parse(junit).getroot().find("testsuite").findall("testcase")
    assert [(c.get("name"), c.find("failure") is None) for c in cases] == [
        ("latency", True), ("latency_ratio", False)]


def test_compress_checks_its_budgets_after_writing_its_output(run_cli, files, fixed_latency):
    fixed_latency(4.0, 1.0)  # the dense export 4 ms, the written file 1 ms
    out = files["dir"] / "c.onnx"
    result = run_cli(files["model"], "--arch", "tests.nets:tiny", "--target", "0.5", "--data",
                     files["data"], "--epochs", "0", "-o", out, "--max-size", "100",
                     "--min-accuracy", "0.01", "--min-agreement", "0.01", "--max-latency-ratio",
                     "100", "--batch", "8", "--quiet")
    assert result.code == 1 and out.exists()
    assert result.err.strip().splitlines()[-1].startswith("Budget broken: size ")
    budgets = json.loads(out.with_suffix(".json").read_text())["budgets"]
    assert [(b["name"], b["passed"]) for b in budgets] == [
        ("size", False), ("accuracy", True), ("agreement", True), ("latency_ratio", True)]
    assert budgets[0]["value"] == out.stat().st_size and budgets[3]["value"] == 0.25
    # `compress check` measures the written file the same way
    again = run_cli("check", out, "--max-size", "100", "--json")
    assert json.loads(again.out)["budgets"][0]["value"] == budgets[0]["value"]


def check_case(name: str, f: dict[str, Path]) -> list[object]:
    model, tmp = f["onnx"], f["dir"]
    if name == "no budget":
        return ["check", model]
    options = {"size 12XB": ["--max-size", "12XB"], "size -5": ["--max-size", "-5"],
               "accuracy 1.5": ["--min-accuracy", "1.5"], "accuracy 88": ["--min-accuracy", "88"],
               "latency nan": ["--max-latency", "nan"], "latency 0": ["--max-latency", "0"],
               "batch 0": ["--max-latency", "1", "--batch", "0"],
               "accuracy without data": ["--min-accuracy", "0.5"],
               "agreement without reference": ["--min-agreement", "0.5", "--data", f["data"]],
               "reference without agreement": ["--max-size", "1MB", "--reference", model],
               "ratio without baseline": ["--max-latency-ratio", "2"],
               "arch without reference": ["--max-size", "1MB", "--arch", "tests.nets:tiny"],
               "baseline missing": ["--max-latency-ratio", "2", "--baseline", tmp / "no.onnx"],
               "junit is the model": ["--max-size", "1MB", "--junit", model],
               "junit dir missing": ["--max-size", "1MB", "--junit", tmp / "no" / "j.xml"],
               "state_dict reference without arch": ["--min-agreement", "0.5", "--reference",
                                                     f["model"], "--data", f["data"]],
               "unknown data extension": ["--min-accuracy", "0.5", "--data", tmp / "d.csv"]}
    if name in options:
        if name == "unknown data extension":
            (tmp / "d.csv").write_text("1,2,3\n")
        return ["check", model, *options[name]]
    if name in ("missing model", "random-byte model", "empty model", "truncated model",
                "pytorch model", "directory model"):
        bad = {"missing model": tmp / "none.onnx", "pytorch model": f["model"],
               "directory model": tmp}.get(name, tmp / "bad.onnx")
        content = {"random-byte model": np.random.default_rng(1).bytes(2000), "empty model": b"",
                   "truncated model": model.read_bytes()[:900]}
        if name in content:
            bad.write_bytes(content[name])
        return ["check", bad, "--max-size", "1MB"]
    x, y = labelled()
    if name == "unlabelled data":
        np.save(tmp / "x.npy", x)
        return ["check", model, "--min-accuracy", "0.5", "--data", tmp / "x.npy"]
    if name == "wrong features":
        x = x[:, :7]
    elif name == "nan in data":
        x[0, 0] = np.inf
    elif name == "labels out of range":
        y[3] = 4
    np.savez(tmp / "bad.npz", x=x, y=y)
    return ["check", model, "--min-accuracy", "0.5", "--data", tmp / "bad.npz"]


CHECK_BAD = ["no budget", "size 12XB", "size -5", "accuracy 1.5", "accuracy 88", "latency nan",
             "latency 0", "batch 0", "accuracy without data", "agreement without reference",
             "reference without agreement", "ratio without baseline", "arch without reference",
             "baseline missing", "junit is the model", "junit dir missing",
             "state_dict reference without arch", "unknown data extension", "missing model",
             "random-byte model", "empty model", "truncated model", "pytorch model",
             "directory model", "unlabelled data", "wrong features", "nan in data",
             "labels out of range"]


@pytest.mark.parametrize("name", CHECK_BAD)
def test_bad_check_input_gives_one_line_exit_2_and_writes_nothing(run_cli, files, name):
    assert_refused(run_cli, check_case(name, files), files["dir"])
