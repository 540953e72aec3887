"""Frozen, validated configuration for each pipeline step."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from enum import Enum


class Scope(str, Enum):
    """How neurons are ranked for removal (paper Algorithms 3 and 6)."""

    GLOBAL = "global"  # one ranking across all hidden layers
    LOCAL = "local"  # the same fraction of every hidden layer


class Compensation(str, Enum):
    """How the next layer makes up for removed neurons (exact constants are always folded)."""

    NONE = "none"  # plain removal
    MEAN = "mean"  # fold the removed neuron's mean calibration activation into the next bias
    MERGE = "merge"  # neuron merging (Kim et al. 2020): data-free
    LSQ = "lsq"  # refit the next layer by least squares on calibration data
    AUTO = "auto"  # lsq with calibration data, merge without

    def resolve(self, *, has_data: bool) -> Compensation:
        """The concrete method: AUTO becomes LSQ or MERGE."""
        if self is Compensation.AUTO:
            return Compensation.LSQ if has_data else Compensation.MERGE
        return self

    @property
    def needs_data(self) -> bool:
        return self in (Compensation.MEAN, Compensation.LSQ)


class Criterion(str, Enum):
    """How neurons are ranked: the lowest are removed first."""

    ACTIVATION = "activation"  # on how many calibration samples the neuron fires (the paper's)
    L1 = "l1"  # l1 norm of the neuron's [weights | bias] row (the merging paper's)
    L2 = "l2"  # l2 norm of that row
    ERROR = "error"  # output error left after greedy removal with least-squares refits
    RANDOM = "random"  # a random order: the sanity floor every criterion must beat

    @property
    def needs_data(self) -> bool:
        return self in (Criterion.ACTIVATION, Criterion.ERROR)


class Score(str, Enum):
    """What is removed (paper section 4.1)."""

    NEURONS = "neurons"  # whole neurons, ranked by the criterion; layers shrink
    WEIGHTS = "neurons-weights"  # single weights; neurons left without inputs are removed too


class Method(str, Enum):
    """What a weight's score is built from (for --score neurons-weights)."""

    ACTIVATION = "activation"  # activation count of the neuron it feeds x |w| (the paper's n&w)
    MAGNITUDE = "magnitude"  # |w|: global magnitude pruning (Han et al.; Zhu & Gupta), gradual
    RANDOM = "random"  # random: the sanity floor

    @property
    def criterion(self) -> Criterion:
        """The neuron criterion this method means for --score neurons."""
        return {Method.ACTIVATION: Criterion.ACTIVATION, Method.MAGNITUDE: Criterion.L1,
                Method.RANDOM: Criterion.RANDOM}[self]


class Format(str, Enum):
    """How the pruned model's weights are stored and run (see compressor.formats)."""

    DENSE = "dense"  # plain Gemm, zeros kept
    CSR = "csr"  # sparse initializers; compressor.runtime runs sparse layers as CSR
    INT8 = "int8"  # onnxruntime dynamic quantization (QInt8), sparse storage where smaller
    AUTO = "auto"  # per layer, whichever of dense, CSR and int8 is fastest here at --batch


@dataclass(frozen=True)
class PruneConfig:
    """How much to remove and how.

    Args:
        target: fraction of the original Linear weight entries to remove, 0 < target < 1.
        scope: global or local ranking.
        cycles: pruning cycles when the model is fine-tuned (one shot otherwise).
        compensate: how the next layer makes up for removed neurons.
        criterion: how neurons are ranked.
        merge_threshold: least cosine similarity at which `merge` folds a removed neuron into
            a kept one (the paper: 0.45 for LeNet-300-100).
        ridge: `lsq` regularisation towards the layer's current weights, relative to the mean
            variance of its inputs.
        calibration_samples: most samples used to count activations.
        batch_size: batch size for counting activations.
        score: remove whole neurons, or single weights (then `method` scores them and
            `criterion` and `compensate` do not apply).
        method: how single weights are scored (score WEIGHTS only).
        seed: seed of the random criterion and method.
        align: every layer keeps a multiple of this many neurons (score NEURONS; 1 = any).
    """

    target: float
    scope: Scope = Scope.GLOBAL
    cycles: int = 5
    compensate: Compensation = Compensation.AUTO
    criterion: Criterion = Criterion.ACTIVATION
    merge_threshold: float = 0.45
    ridge: float = 1e-3
    calibration_samples: int = 10_000
    batch_size: int = 1_000
    score: Score = Score.NEURONS
    method: Method = Method.ACTIVATION
    seed: int = 0
    align: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.target, (int, float)) and math.isfinite(self.target)):
            raise ValueError(f"target must be a number between 0 and 1, got {self.target!r}")
        if not 0.0 < self.target < 1.0:
            raise ValueError(f"target must be strictly between 0 and 1, got {self.target}")
        if self.cycles < 1:
            raise ValueError(f"cycles must be at least 1, got {self.cycles}")
        if self.align < 1:
            raise ValueError(f"align must be at least 1, got {self.align}")
        if self.calibration_samples < 1 or self.batch_size < 1:
            raise ValueError("calibration_samples and batch_size must be positive")
        if not 0 <= self.merge_threshold <= 1:
            raise ValueError(f"merge threshold must be between 0 and 1, got {self.merge_threshold}")
        if not (self.ridge > 0 and math.isfinite(self.ridge)):
            raise ValueError(f"ridge must be a positive number, got {self.ridge}")
        object.__setattr__(self, "scope", Scope(self.scope))
        object.__setattr__(self, "compensate", Compensation(self.compensate))
        object.__setattr__(self, "criterion", Criterion(self.criterion))
        object.__setattr__(self, "score", Score(self.score))
        object.__setattr__(self, "method", Method(self.method))
        if self.score is Score.WEIGHTS and self.compensate not in (Compensation.AUTO,
                                                                   Compensation.NONE):
            raise ValueError(f"--compensate {self.compensate.value} compensates whole neurons; "
                             "with --score neurons-weights the remaining weights are fine-tuned "
                             "instead: drop --compensate")

    @property
    def needs_data(self) -> bool:
        """Whether ranking needs calibration data."""
        if self.score is Score.WEIGHTS:
            return self.method is Method.ACTIVATION
        return self.criterion.needs_data


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning between pruning cycles (only when the data has labels).

    Args:
        max_epochs: most epochs per cycle; 0 turns fine-tuning off.
        patience: epochs without a new best validation accuracy before stopping early.
        lr: Adam learning rate at the start of each cycle (cosine decay to 0 over max_epochs).
        batch_size: training batch size.
        distill: weight of distillation from the dense model's logits (0 = labels only).
        temperature: softening temperature of the distillation.
    """

    max_epochs: int = 6
    patience: int = 3
    lr: float = 1e-3
    batch_size: int = 128
    distill: float = 0.5
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if self.max_epochs < 0:
            raise ValueError(f"max_epochs must be >= 0, got {self.max_epochs}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if not 0 <= self.distill <= 1:
            raise ValueError(f"distill must be between 0 and 1, got {self.distill}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


@dataclass(frozen=True)
class BenchConfig:
    """onnxruntime latency measurement: batches to time, threads, time per measurement."""

    batches: tuple[int, ...] = (1, 256)
    threads: int = 1
    seconds: float = 0.5

    def __post_init__(self) -> None:
        if not self.batches or min(self.batches) < 1:
            raise ValueError(f"batches must be positive, got {self.batches}")
        if self.threads < 1 or self.seconds <= 0:
            raise ValueError("threads must be >= 1 and seconds > 0")


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


def parse_positive(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{text!r} is not a positive number")
    return value


@dataclass(frozen=True)
class Budgets:
    """Limits a compressed model must meet (None = not checked).

    Args:
        max_size: file size in bytes.
        max_params: stored parameters (all floating-point and 8-bit initializer entries).
        max_flops: FLOPs per sample (2 x non-zero weights of MatMul/Gemm/Conv x positions).
        min_accuracy: top-1 accuracy on labelled data, 0..1.
        min_agreement: share of samples whose top-1 class equals the reference model's, 0..1.
        max_latency_ms: onnxruntime latency of one run() at the checked batch size.
        max_latency_ratio: that latency divided by the baseline model's.
    """

    max_size: int | None = None
    max_params: int | None = None
    max_flops: int | None = None
    min_accuracy: float | None = None
    min_agreement: float | None = None
    max_latency_ms: float | None = None
    max_latency_ratio: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_size", "max_params", "max_flops"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 0):
                raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
        for name in ("min_accuracy", "min_agreement"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        for name in ("max_latency_ms", "max_latency_ratio"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, got {value!r}")

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    @property
    def needs_latency(self) -> bool:
        return self.max_latency_ms is not None or self.max_latency_ratio is not None


@dataclass(frozen=True)
class CheckConfig:
    """What `compress check` measures: the budgets, and how latency is timed."""

    budgets: Budgets
    batch: int = 1
    threads: int = 1
    seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.batch < 1 or self.threads < 1 or not self.seconds > 0:
            raise ValueError("batch and threads must be >= 1 and seconds > 0")


@dataclass(frozen=True)
class CompressConfig:
    """Everything `compress` needs besides the paths."""

    prune: PruneConfig
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    bench: BenchConfig | None = field(default_factory=BenchConfig)
    seed: int = 0
    parity_tolerance: float = 1e-4
    budgets: Budgets = field(default_factory=Budgets)
    budget_batch: int = 1  # the batch size the latency budgets are checked at
    format: Format = Format.DENSE

    def __post_init__(self) -> None:
        object.__setattr__(self, "format", Format(self.format))
        if not self.parity_tolerance > 0:
            raise ValueError(f"parity_tolerance must be positive, got {self.parity_tolerance}")
        if self.budgets.needs_latency and (self.bench is None or
                                           self.budget_batch not in self.bench.batches):
            raise ValueError("a latency budget needs the latency measurement at its batch size:"
                             " drop --no-latency")
