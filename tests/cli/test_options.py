"""Option types: sizes, fractions, targets, positive numbers; misspelt subcommands."""

from __future__ import annotations

import json
import re

import pytest
import torch

from compressor.cli.options import (parse_factor, parse_fraction, parse_positive, parse_size,
                                    parse_target)
from tests.conftest import assert_refused


@pytest.mark.parametrize("text, size", [("300000", 300_000), ("300KB", 300_000), ("200KiB", 204_800),
                                        ("1.5 MB", 1_500_000), ("2mib", 2 * 2**20), ("12B", 12)])
def test_sizes_take_decimal_and_binary_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "12XB", "-5", "KB", "1e3", "nan", "1 2 KB"])
def test_sizes_refuse_anything_else(text):
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize("text, value", [("0.88", 0.88), ("88%", 0.88), ("100%", 1.0), ("0", 0.0)])
def test_fractions_take_decimals_and_percentages(text, value):
    assert parse_fraction(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["88", "1.5", "-0.1", "nan", "abc", "%"])
def test_fractions_refuse_values_outside_0_1(text):
    with pytest.raises(ValueError, match="is not a fraction"):
        parse_fraction(text)


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "fast"])
def test_positive_numbers_refuse_zero_nan_and_text(text):
    with pytest.raises(ValueError, match="is not a positive number"):
        parse_positive(text)


@pytest.mark.parametrize("text, value", [("0.85", 0.85), ("85%", 0.85), ("0.5%", 0.005)])
def test_targets_take_fractions_and_percentages(text, value):
    assert parse_target(text) == pytest.approx(value)


@pytest.mark.parametrize("text, hint", [("85", "write 0.85 (or 85%)"), ("85.0", "write 0.85"),
                                        ("1.5", "outside (0, 1)"), ("0", "outside (0, 1)"),
                                        ("1", "outside (0, 1)"), ("nan", "outside (0, 1)"),
                                        ("abc", "not a number")])
def test_targets_outside_0_1_say_what_to_write(text, hint):
    with pytest.raises(ValueError, match=re.escape(hint)):
        parse_target(text)


def test_a_percentage_target_is_refused_by_the_cli_with_the_fraction_it_meant(run_cli, tmp_path):
    assert_refused(run_cli, [tmp_path / "m.pt", "--target", "85"], tmp_path)
    assert "write 0.85 (or 85%)" in run_cli(tmp_path / "m.pt", "--target", "85").err


@pytest.mark.parametrize("typo, meant", [("chek", "check"), ("bnech", "bench"),
                                         ("checks", "check")])
def test_a_misspelt_subcommand_is_named_not_taken_for_a_model(run_cli, tmp_path, typo, meant):
    result = run_cli(typo, tmp_path / "x.onnx")
    assert result.code == 2 and f"did you mean 'compress {meant}'" in result.err
    assert "--target" not in result.err


def test_a_model_file_named_like_a_subcommand_is_still_a_model(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "chek").write_bytes(b"not a model")
    result = run_cli("chek", "--target", "0.5")
    assert result.code == 2 and "did you mean" not in result.err


def test_top_level_help_names_every_subcommand(run_cli):
    out = run_cli("--help").out
    assert "compress check" in out and "compress bench" in out


def test_device_cpu_runs_and_a_missing_gpu_is_refused(run_cli, tiny_files):
    out = tiny_files["dir"] / "d.onnx"
    args = [tiny_files["model"], "--arch", "tests.nets:tiny", "--target", "0.5", "--data",
            tiny_files["data"], "--epochs", "1", "--cycles", "1", "--no-latency", "--quiet"]
    assert run_cli(*args, "--device", "cpu", "-o", out).code == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["plan"]["config"]["prune"]["device"] == "cpu"
    if not torch.cuda.is_available():
        assert_refused(run_cli, [*args, "--device", "cuda"], tiny_files["dir"])
        assert "no CUDA GPU" in run_cli(*args, "--device", "cuda").err
    assert "device must be" in run_cli(*args, "--device", "tpu").err


@pytest.mark.parametrize("text, value", [("auto", None), ("AUTO", None), ("off", 0), ("12", 12)])
def test_factor_takes_auto_off_or_a_rank(text, value):
    assert parse_factor(text) == value


@pytest.mark.parametrize("text", ["0", "-3", "1.5", "none", ""])
def test_factor_refuses_anything_else_with_what_to_write(text):
    with pytest.raises(ValueError, match="write auto, off or a number"):
        parse_factor(text)


def test_a_bad_factor_is_refused_in_one_line(run_cli, tiny_files):
    args = [tiny_files["model"], "--arch", "tests.nets:tiny", "--target", "0.5", "--data",
            tiny_files["data"], "--factor", "half"]
    assert_refused(run_cli, args, tiny_files["dir"])
    assert "--factor" in run_cli(*args).err


def test_a_factor_with_nothing_to_factor_is_refused_in_one_line(run_cli, tiny_files):
    args = [tiny_files["model"], "--arch", "tests.nets:tiny", "--target", "0.5", "--data",
            tiny_files["data"], "--epochs", "0", "--quiet"]  # found after loading: no progress
    assert_refused(run_cli, [*args, "--factor", "20"], tiny_files["dir"])  # 20 inputs: no gain
    assert "nothing to factor" in run_cli(*args, "--factor", "20").err
    assert_refused(run_cli, [*args, "--factor", "4", "--score", "neurons-weights"],
                   tiny_files["dir"])
