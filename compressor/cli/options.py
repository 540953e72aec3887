"""Option types and the option groups several commands share."""

from __future__ import annotations

import math
import re

import click

from ..measure.budgets import Budgets

_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9,
               "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(text: str) -> int:
    """Bytes from `300000`, `300KB`, `1.5 MB`, `200KiB` (KB = 1000 bytes, KiB = 1024)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size: write bytes, or a number with B, KB, MB, GB, "
                         "KiB, MiB or GiB, e.g. 300KB")
    return int(round(float(match.group(1)) * _SIZE_UNITS[unit]))


def parse_fraction(text: str) -> float:
    """A fraction in [0, 1] from `0.88` or `88%`."""
    raw = str(text).strip()
    percent = raw.endswith("%")
    try:
        value = float(raw[:-1] if percent else raw) / (100 if percent else 1)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:  # also refuses NaN
        raise ValueError(f"{text!r} is not a fraction: write 0.88 or 88%")
    return value


def parse_target(text: str) -> float:
    """A reduction strictly between 0 and 1 from `0.85` or `85%`; `85` is refused with the
    fraction it probably meant."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ValueError(f"{text!r} is not a number: write a fraction such as 0.85 (85% fewer)")
    if 1 < value < 100 and value == int(value):  # a percentage without its sign
        raise ValueError(f"{text} is not a fraction: write {value / 100:g} (or {value:g}%) "
                         f"to remove {value:g}%")
    if not 0 < value < 1:  # also refuses NaN
        raise ValueError(f"{text} is outside (0, 1): write a fraction such as 0.85 (85% fewer)")
    return value


def parse_normalize(text: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel means and standard deviations from `MEAN,STD` or `M1,M2,M3,S1,S2,S3`."""
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    half = len(values) // 2
    if not values or len(values) % 2 or not all(math.isfinite(v) for v in values) or \
            min(values[half:]) <= 0:
        raise ValueError(f"{text!r} is not MEAN,STD: write the means, then the standard "
                         "deviations (> 0), one per channel, e.g. 0.2860,0.3530")
    return tuple(values[:half]), tuple(values[half:])


def parse_positive(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{text!r} is not a positive number")
    return value


def parse_int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"expected comma-separated whole numbers like 1,32,256, got {text!r}")
    if not values or min(values) < 1:
        raise ValueError(f"expected numbers of at least 1, got {text!r}")
    return values





class _Parsed(click.ParamType):
    """A click type from a parse function that raises ValueError (sizes, fractions)."""

    def __init__(self, name: str, parse) -> None:
        self.name, self._parse = name, parse

    def convert(self, value, param, ctx):
        try:
            return self._parse(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


SIZE = _Parsed("size", parse_size)
FRACTION = _Parsed("fraction", parse_fraction)
TARGET = _Parsed("fraction", parse_target)
NORMALIZE = _Parsed("MEAN,STD", parse_normalize)
POSITIVE = _Parsed("number", parse_positive)
INT_LIST = _Parsed("list", parse_int_list)

BUDGET_OPTIONS = [
    click.option("--max-size", type=SIZE, metavar="SIZE",
                 help="Largest file: bytes, or 200KB, 1.5MB, 200KiB."),
    click.option("--max-params", type=click.IntRange(0), metavar="N",
                 help="Most stored parameters."),
    click.option("--max-flops", type=click.IntRange(0), metavar="N",
                 help="Most FLOPs per sample."),
    click.option("--min-accuracy", type=FRACTION, metavar="ACC",
                 help="Least top-1 accuracy (0.88 or 88%)."),
    click.option("--min-agreement", type=FRACTION, metavar="AGR",
                 help="Least share of top-1 answers equal to the reference's."),
    click.option("--max-latency", type=POSITIVE, metavar="MS",
                 help="Longest onnxruntime run() at --batch, in ms."),
    click.option("--max-latency-ratio", type=POSITIVE, metavar="R",
                 help="Longest latency over the baseline's at --batch."),
]


def budget_options(command):
    """Add the budget options (shared by `compress` and `compress check`)."""
    for option in reversed(BUDGET_OPTIONS):
        command = option(command)
    return command


def budgets_from(options: dict) -> Budgets:
    """The Budgets of the parsed budget options."""
    return Budgets(max_size=options["max_size"], max_params=options["max_params"],
                   max_flops=options["max_flops"], min_accuracy=options["min_accuracy"],
                   min_agreement=options["min_agreement"], max_latency_ms=options["max_latency"],
                   max_latency_ratio=options["max_latency_ratio"])




def _word_or_number(text: str, words: dict[str, int | None], most: int, what: str) -> int | None:
    """One of `words` (its value) or a whole number from 1 to `most`."""
    word = str(text).strip().lower()
    if word in words:
        return words[word]
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= most:
        choices = [*words, f"a number from 1 to {most}"]
        raise ValueError(f"{text!r} is not {what}: write {', '.join(choices[:-1])} or "
                         f"{choices[-1]}")
    return value


def parse_align(text: str) -> int | None:
    """`auto` (None) or a whole number >= 1."""
    return _word_or_number(text, {"auto": None}, 4096, "an alignment")


ALIGN = _Parsed("auto|N", parse_align)


def parse_factor(text: str) -> int | None:
    """`auto` (None), `off` (0) or a rank >= 1."""
    return _word_or_number(text, {"auto": None, "off": 0}, 65536, "a rank")


FACTOR = _Parsed("auto|off|R", parse_factor)
