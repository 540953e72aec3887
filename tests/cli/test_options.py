"""Option types: sizes, fractions, positive numbers."""

from __future__ import annotations

import pytest

from compressor.cli.options import parse_fraction, parse_positive, parse_size


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
