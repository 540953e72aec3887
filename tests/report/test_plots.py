"""`--plots DIR`: every PNG is written, is a real picture (not blank), and a missing matplotlib
is refused before any work, naming the extra to install."""

from __future__ import annotations

import json
import sys

import numpy as np
from matplotlib import image

from tests.conftest import assert_refused

FAST = ("--no-latency", "--quiet")


def _assert_picture(path) -> None:
    pixels = image.imread(path)
    assert pixels.shape[0] >= 300 and pixels.shape[1] >= 400, pixels.shape
    flat = pixels[..., :3].reshape(-1, 3)
    assert flat.std() > 0.05 and len(np.unique(flat, axis=0)) > 20  # drawn on, not blank


def test_compress_writes_widths_firing_rates_and_cycles(run_cli, tiny_files):
    plots = tiny_files["dir"] / "plots"
    result = run_cli(tiny_files["model"], "--arch", "tests.nets:tiny", "--target", "0.5",
                     "--data", tiny_files["data"], "--cycles", "2", "--epochs", "1",
                     "--plots", plots, *FAST)
    assert result.code == 0, result.err
    assert sorted(p.name for p in plots.iterdir()) == ["cycles.png", "firing_rates.png",
                                                       "widths.png"]
    for png in plots.iterdir():
        _assert_picture(png)


def test_traced_spectra_are_in_the_report_and_plotted(run_cli, tiny_files):
    plots = tiny_files["dir"] / "traced"
    out = tiny_files["dir"] / "traced.onnx"
    result = run_cli(tiny_files["model"], "--arch", "tests.nets:tiny", "--target", "0.5",
                     "--data", tiny_files["data"], "--cycles", "2", "--epochs", "1",
                     "--trace-spectra", "--plots", plots, "-o", out, *FAST)
    assert result.code == 0, result.err
    report = json.loads(out.with_suffix(".json").read_text())
    before, _, after = report["spectra"]  # before pruning, after cycle 1, after cycle 2
    first = report["layers"][0]
    assert len(before[first["name"]]) == min(first["out_before"], first["in_before"])
    assert len(after[first["name"]]) == min(first["out_after"], first["in_after"])
    assert after[first["name"]] == sorted(after[first["name"]], reverse=True)
    _assert_picture(plots / "spectra_cycles.png")
    assert report["plan"]["config"]["prune"]["trace_spectra"] is True


def test_analyze_writes_spectra_heatmaps_and_firing_rates(run_cli, tiny_files):
    out = tiny_files["dir"] / "analysis"
    result = run_cli("analyze", tiny_files["model"], "--arch", "tests.nets:tiny", "--data",
                     tiny_files["data"], "--out", out)
    assert result.code == 0, result.err
    for name in ("spectra.png", "weights_0.png", "firing_rates_0.png"):
        _assert_picture(out / name)


def test_bench_plots_latency_against_batch(run_cli, tiny_files, fixed_latency):
    fixed_latency(1.0, 2.0)
    out = tiny_files["dir"] / "m.onnx"
    assert run_cli(tiny_files["model"], "--arch", "tests.nets:tiny", "--target", "0.5",
                   "-o", out, *FAST).code == 0
    plots = tiny_files["dir"] / "bench-plots"
    result = run_cli("bench", out, "--batch", "1,8", "--seconds", "0.05", "--no-memory",
                     "--plots", plots)
    assert result.code == 0, result.err
    _assert_picture(plots / "latency_vs_batch.png")


def test_without_matplotlib_plots_are_refused_before_any_work(run_cli, tiny_files,
                                                               monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    args = [tiny_files["model"], "--arch", "tests.nets:tiny", "--target", "0.5", "--plots",
            tiny_files["dir"] / "plots", *FAST]
    assert_refused(run_cli, args, tiny_files["dir"])
    assert "pip install 'compressor[plots]'" in run_cli(*args).err
