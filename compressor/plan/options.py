"""The options of one `compress` run as the user gave them: None (or "auto") leaves a value to
the plan; each given value is checked here, alone. The command line and the Python API build
the same `Options`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from types import MappingProxyType

from ..errors import OptionError
from ..export.pack import Format
from ..measure.budgets import Budgets
from ..prune.config import Compensation, Criterion, Method, Of, Scope, Score

# What an option is when it is not given and no fact about the model or the machine decides it.
DEFAULTS = MappingProxyType({
    "of": Of.WEIGHTS, "score": Score.NEURONS, "merge_threshold": 0.45, "ridge": 1e-3,
    "calibration_samples": 10_000, "patience": 3, "lr": 1e-3, "distill": 0.5,
    "temperature": 4.0, "batch_size": 128, "format": Format.DENSE, "rank_energy": 0.99,
    "seed": 0, "threads": 1, "latency": True, "batch": 1, "trace_spectra": False,
    "prune_stream": 0.0,
})
ENUMS = {"of": Of, "score": Score, "method": Method, "criterion": Criterion,
         "compensate": Compensation, "scope": Scope, "format": Format}


@dataclass(frozen=True)
class Options:
    """What the user asked for. Every field but `target` may be None: not given.

    `criterion`, `compensate`, `scope`, `method`, `align`, `factor`, `cycles`, `epochs`,
    `final_epochs`, `average` and `device` are decided by `compressor.plan.plan` from the
    model, the data and the machine when not given ("auto" means the same); the others have
    a plain default (`DEFAULTS`). Names and meanings are those of the command's options
    (docs/cli.md); `factor` also takes "off", `align` a width multiple."""

    target: float
    of: Of | None = None
    score: Score | None = None
    method: Method | None = None
    criterion: Criterion | None = None
    compensate: Compensation | None = None
    scope: Scope | None = None
    align: int | None = None
    factor: int | None = None  # 0: off
    merge_threshold: float | None = None
    ridge: float | None = None
    calibration_samples: int | None = None
    cycles: int | None = None
    epochs: int | None = None
    final_epochs: int | None = None
    recover: float | None = None
    patience: int | None = None
    lr: float | None = None
    distill: float | None = None
    temperature: float | None = None
    average: float | None = None
    batch_size: int | None = None
    format: Format | None = None
    rank_energy: float | None = None
    input_shape: tuple[int, ...] | None = None
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    device: str | None = None
    seed: int | None = None
    threads: int | None = None
    latency: bool | None = None
    batch: int | None = None
    trace_spectra: bool | None = None
    prune_stream: float | None = None
    budgets: Budgets = field(default_factory=Budgets)

    def __post_init__(self) -> None:
        _check_target(self.target)
        for name, enum in ENUMS.items():
            object.__setattr__(self, name, _enum(name, getattr(self, name), enum))
        object.__setattr__(self, "align", _word_or_int("align", self.align, {}))
        object.__setattr__(self, "factor", _word_or_int("factor", self.factor, {"off": 0}))
        object.__setattr__(self, "device", _device(self.device))
        for name in ("cycles", "patience", "calibration_samples", "batch_size", "threads",
                     "batch"):
            _whole(name, getattr(self, name), least=1)
        for name in ("epochs", "final_epochs", "seed"):
            _whole(name, getattr(self, name), least=0 if name != "seed" else None)
        for name in ("ridge", "lr", "temperature", "rank_energy"):
            _number(name, getattr(self, name), low=0, open_low=True)
        _number("rank_energy", self.rank_energy, high=1)
        for name in ("merge_threshold", "distill"):
            _number(name, getattr(self, name), low=0, high=1)
        _number("recover", self.recover, low=0, high=100, open_high=True)
        _number("prune_stream", self.prune_stream, low=0, high=1, open_high=True)
        _number("average", self.average, low=0, high=1000, open_high=True)
        if self.input_shape is not None:
            shape = tuple(self.input_shape)
            if not shape or not all(isinstance(d, int) and d >= 1 for d in shape):
                raise OptionError(f"`input_shape` must be positive sizes, got {self.input_shape}")
            object.__setattr__(self, "input_shape", shape)
        if not isinstance(self.budgets, Budgets):
            raise OptionError(f"`budgets` must be a Budgets, got {type(self.budgets).__name__}")

    def value(self, name: str):
        """The option as given, else its plain default (None for what the plan decides)."""
        given = getattr(self, name)
        return DEFAULTS.get(name) if given is None else given

    def given(self, name: str) -> bool:
        return getattr(self, name) is not None

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def _check_target(target: object) -> None:
    if isinstance(target, bool) or not isinstance(target, (int, float)) or \
            not math.isfinite(target) or not 0 < target < 1:
        raise OptionError(f"`target` must be a fraction strictly between 0 and 1 (0.85 = 85% "
                          f"fewer), got {target!r}")


def _device(name: object) -> str | None:
    if name is None or (isinstance(name, str) and name.strip().lower() == "auto"):
        return None
    if name == "cpu" or name == "cuda" or (isinstance(name, str) and name.startswith("cuda:")
                                           and name[5:].isdigit()):
        return name
    raise OptionError(f"`device` must be auto, cpu, cuda or cuda:N, got {name!r}")


def _enum(name: str, value: object, enum: type) -> object:
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"
                         and name != "format"):
        return None
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(e.value for e in enum)
        raise OptionError(f"`{name}` must be one of {choices} (or auto), got {value!r}") from None


def _word_or_int(name: str, value: object, words: dict[str, int]) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        word = value.strip().lower()
        if word == "auto":
            return None
        if word in words:
            return words[word]
        try:
            value = int(word)
        except ValueError:
            value = None
    least = 0 if words else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        also = "".join(f", {w}" for w in words)
        raise OptionError(f"`{name}` must be auto{also} or a whole number of at least 1, got "
                          f"{value!r}")
    return value


def _whole(name: str, value: object, *, least: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or \
            (least is not None and value < least):
        raise OptionError(f"`{name}` must be a whole number"
                          f"{f' of at least {least}' if least is not None else ''}, got {value!r}")


def _number(name: str, value: object, *, low: float | None = None, high: float | None = None,
            open_low: bool = False, open_high: bool = False) -> None:
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if open_low else value >= low
    if ok and high is not None:
        ok = value < high if open_high else value <= high
    if not ok:
        left, right = "(" if open_low else "[", ")" if open_high else "]"
        where = f" in {left}{low:g}, {high:g}{right}" if low is not None and high is not None \
            else " above 0" if open_low else ""
        raise OptionError(f"`{name}` must be a number{where}, got {value!r}")
