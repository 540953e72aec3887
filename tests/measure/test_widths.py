"""The conv channel multiple: the step found in timings, measured once and cached."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from compressor.measure.widths import (WIDTHS, WidthMultiple, Kernel, agreed, choose_multiple,
                                       machine_key, preferred_multiple)

CONV = Kernel.CONV


def _staircase(step: int, noise: float = 0.0, seed: int = 0) -> list[float]:
    """Times of a conv whose cost is that of its width rounded up to `step`."""
    g = np.random.default_rng(seed)
    return [0.1 + 1e-4 * (math.ceil(w / step) * step) ** 2 * (1 + noise * g.standard_normal())
            for w in WIDTHS]


@pytest.mark.parametrize("step", [8, 16, 32])
def test_the_step_of_a_staircase_is_found(step):
    assert choose_multiple(WIDTHS, _staircase(step)) == step


def test_a_step_is_found_through_a_few_percent_of_noise():
    assert choose_multiple(WIDTHS, _staircase(16, noise=0.03)) == 16
    assert choose_multiple(WIDTHS, _staircase(8, noise=0.01)) == 8


def test_the_step_of_a_real_avx512_machine_is_16():
    """probe_conv on an AVX-512 Xeon (2 cores, onnxruntime 1.32, another job running)."""
    times = [0.334, 0.353, 0.346, 0.337, 0.571, 0.58, 0.575, 0.583, 1.041, 1.022, 0.999, 1.001,
             1.451, 1.344, 1.371, 1.447, 1.79]
    assert choose_multiple(WIDTHS, times) == 16


def test_times_without_steps_say_exact_widths_and_pure_noise_decides_nothing():
    smooth = [0.1 + 1e-4 * w * w for w in WIDTHS]
    assert choose_multiple(WIDTHS, smooth) == 1
    noise = list(np.random.default_rng(1).random(len(WIDTHS)))
    assert choose_multiple(WIDTHS, noise) is None


def test_a_real_gemm_runs_in_steps_of_16_output_columns():
    """probe_gemm (512 -> w at batch 256) on the same AVX-512 Xeon, idle: 36 to 48 columns
    took the same 0.070 ms, 52 to 64 0.087 ms."""
    times = [0.07, 0.07, 0.07, 0.07, 0.087, 0.087, 0.088, 0.088, 0.111, 0.112, 0.111, 0.111,
             0.13, 0.128, 0.129, 0.128, 0.139]
    assert choose_multiple(WIDTHS, times, power=1) == 16


def test_a_gemm_pair_hides_the_output_steps_under_the_inner_slope():
    """The probe of earlier versions, Gemm 256 -> w -> 256 on the same machine: the second
    Gemm's inner dimension grows smoothly and drowned the first one's steps (so widths were
    left exact, and the shipped example ran at 0.78 of its FLOP ratio)."""
    times = [0.088, 0.0893, 0.0961, 0.0964, 0.1101, 0.1093, 0.1167, 0.1247, 0.1405, 0.1439,
             0.1451, 0.1462, 0.1599, 0.1604, 0.1643, 0.1669, 0.1828]
    assert choose_multiple(WIDTHS, times, power=1) == 1


def test_a_decisive_measurement_is_cached_and_read_back_without_timing(tmp_path):
    cache = tmp_path / "widths.json"
    calls = []

    def probe(widths):
        calls.append(tuple(widths))
        return _staircase(16)

    assert preferred_multiple(CONV, cache=cache, probe=probe) == WidthMultiple(16, "measured")
    assert json.loads(cache.read_text()) == {f"conv on {machine_key()}": 16}
    assert preferred_multiple(CONV, cache=cache, probe=probe) == WidthMultiple(16, "cached")
    assert calls == [WIDTHS, WIDTHS]  # two probes that agree, then never again


def test_an_undecided_measurement_says_so_and_caches_nothing(tmp_path):
    cache = tmp_path / "widths.json"
    noise = list(np.random.default_rng(3).random(len(WIDTHS)))
    flat = preferred_multiple(CONV, cache=cache, probe=lambda widths: noise)
    assert flat == WidthMultiple(None, "undecided") and not cache.exists()
    assert "conv channels in multiples of 8 (timing" in flat.describe(8)


def test_a_broken_cache_file_is_measured_over(tmp_path):
    cache = tmp_path / "widths.json"
    cache.write_text("{not json")
    assert preferred_multiple(CONV, cache=cache, probe=lambda w: _staircase(8)).how == "measured"
    assert json.loads(cache.read_text()) == {f"conv on {machine_key()}": 8}


def test_the_gemm_step_is_found_on_a_linear_staircase_and_kept_apart_from_the_conv_one(
        tmp_path):
    times = [0.05 + 1e-3 * math.ceil(w / 16) * 16 for w in WIDTHS]
    assert choose_multiple(WIDTHS, times, power=1) == 16
    cache = tmp_path / "widths.json"
    gemm = preferred_multiple(Kernel.GEMM, cache=cache, probe=lambda w: times)
    conv = preferred_multiple(CONV, cache=cache, probe=lambda w: _staircase(8))
    assert (gemm.multiple, conv.multiple) == (16, 8)
    assert preferred_multiple(Kernel.GEMM, cache=cache, probe=None).how == "cached"
    assert gemm.describe().startswith("wide Linear layers in multiples of 16")


def test_undecided_gemm_timing_keeps_linear_widths_exact_and_caches_nothing(tmp_path):
    cache = tmp_path / "w.json"
    noise = list(np.random.default_rng(2).random(len(WIDTHS)))
    flat = preferred_multiple(Kernel.GEMM, cache=cache, probe=lambda w: noise)
    assert flat == WidthMultiple(None, "undecided", Kernel.GEMM) and not cache.exists()
    assert "wide Linear layers exact (timing" in flat.describe()


def test_a_gemm_without_steps_is_cached_as_exact_widths(tmp_path):
    cache = tmp_path / "w.json"
    smooth = [0.05 + 1e-3 * w for w in WIDTHS]
    found = preferred_multiple(Kernel.GEMM, cache=cache, probe=lambda w: smooth)
    assert found == WidthMultiple(1, "measured", Kernel.GEMM)
    assert json.loads(cache.read_text()) == {f"gemm out on {machine_key()}": 1}
    assert "shows no steps" in found.describe()


def test_an_answer_counts_once_it_repeats_and_no_more_answers_are_read_than_needed():
    read = []

    def answers(*found):
        for answer in found:
            read.append(answer)
            yield answer

    assert agreed(answers(8, 8, 16)) == 8 and read == [8, 8]
    assert agreed(answers(16, 8, 8)) == 8
    assert agreed(answers(None, None, 8)) is None
    assert agreed(answers(8, 16, 1)) is None


def test_a_probe_that_disagrees_is_outvoted_and_only_the_agreed_step_is_cached(tmp_path):
    """One probe of three slowed at a few widths (as on the AMD EPYC: one width 5-8% off
    turned 8 into 16) does not decide the step kept for good."""
    cache = tmp_path / "widths.json"
    probes = iter([_staircase(16), _staircase(8), _staircase(8)])
    found = preferred_multiple(CONV, cache=cache, probe=lambda widths: next(probes))
    assert found == WidthMultiple(8, "measured")
    assert json.loads(cache.read_text()) == {f"conv on {machine_key()}": 8}


def test_three_probes_that_all_differ_decide_nothing_and_cache_nothing(tmp_path):
    cache = tmp_path / "widths.json"
    probes = iter([_staircase(16), _staircase(8), _staircase(32)])
    found = preferred_multiple(Kernel.GEMM, cache=cache, probe=lambda widths: next(probes))
    assert found == WidthMultiple(None, "undecided", Kernel.GEMM) and not cache.exists()
