"""Long steps are never silent: a log line per step and per fine-tuning epoch on stderr (what a
CI log shows), progress bars drawn by click on a terminal, nothing with --quiet."""

from __future__ import annotations

import re

from compressor.cli.compress import Bars


def test_every_step_and_epoch_gets_a_line_on_stderr(run_cli, tiny_files):
    out = tiny_files["dir"] / "m.onnx"
    result = run_cli(tiny_files["model"], "--arch", "tests.nets:tiny", "--target", "0.5",
                     "--data", tiny_files["data"], "--cycles", "2", "--epochs", "2", "-o", out,
                     "--no-latency")
    assert result.code == 0, result.err
    err = result.err
    assert "computing the input model's logits on" in err
    epochs = re.findall(r"cycle (\d)/2: fine-tuning epoch \d/(\d): train loss \d+\.\d{4}, "
                        r"val loss \d+\.\d{4}, val acc \d+\.\d\d%", err)
    assert ("1", "2") in epochs and ("2", "6") in epochs  # the last cycle: 3 x --epochs
    assert "exporting ONNX" in err and "measuring the result (accuracy on" in err
    quiet = run_cli(tiny_files["model"], "--arch", "tests.nets:tiny", "--target", "0.5",
                    "--data", tiny_files["data"], "--epochs", "1", "-o", out, "--no-latency",
                    "--quiet")
    assert quiet.code == 0 and quiet.err == ""


def test_bench_says_what_it_is_timing(run_cli, tiny_files, fixed_latency):
    fixed_latency(1.0)
    out = tiny_files["dir"] / "m.onnx"
    assert run_cli(tiny_files["model"], "--arch", "tests.nets:tiny", "--target", "0.5",
                   "-o", out, "--no-latency", "--quiet").code == 0
    result = run_cli("bench", out, "--batch", "1,4", "--seconds", "0.05", "--no-memory")
    assert result.code == 0
    assert "timing 1 model at batch 1, 1 thread" in result.err and "at batch 4" in result.err


def test_bars_off_a_terminal_print_each_stage_once(capsys):
    bars = Bars()
    for done in (100, 200, 300):
        bars("cycle 1/1: counting activations", done, 300)
    for done in (1, 2):
        bars("cycle 1/1: compensating", done, 4)
    bars.close()
    err = capsys.readouterr().err
    assert err.count("cycle 1/1: counting activations") == 1
    assert err.count("cycle 1/1: compensating") == 1
