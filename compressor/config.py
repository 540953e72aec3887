"""Frozen, validated configuration for each pipeline step."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum


class Scope(str, Enum):
    """How neurons are ranked for removal (paper Algorithms 3 and 6)."""

    GLOBAL = "global"  # one ranking across all hidden layers
    LOCAL = "local"  # the same fraction of every hidden layer


class Compensation(str, Enum):
    """What is folded into the next layer when a neuron is removed."""

    NONE = "none"  # only exact constants (neurons with no incoming weights)
    MEAN = "mean"  # the removed neuron's mean calibration activation


@dataclass(frozen=True)
class PruneConfig:
    """How much to remove and how.

    Args:
        target: fraction of the original Linear weight entries to remove, 0 < target < 1.
        scope: global or local ranking.
        cycles: pruning cycles when labels exist (one shot otherwise).
        compensate: what to fold into the next layer's bias.
        calibration_samples: most samples used to count activations.
        batch_size: batch size for counting activations.
    """

    target: float
    scope: Scope = Scope.GLOBAL
    cycles: int = 5
    compensate: Compensation = Compensation.MEAN
    calibration_samples: int = 10_000
    batch_size: int = 1_000

    def __post_init__(self) -> None:
        if not (isinstance(self.target, (int, float)) and math.isfinite(self.target)):
            raise ValueError(f"target must be a number between 0 and 1, got {self.target!r}")
        if not 0.0 < self.target < 1.0:
            raise ValueError(f"target must be strictly between 0 and 1, got {self.target}")
        if self.cycles < 1:
            raise ValueError(f"cycles must be at least 1, got {self.cycles}")
        if self.calibration_samples < 1 or self.batch_size < 1:
            raise ValueError("calibration_samples and batch_size must be positive")
        object.__setattr__(self, "scope", Scope(self.scope))
        object.__setattr__(self, "compensate", Compensation(self.compensate))


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


@dataclass(frozen=True)
class CompressConfig:
    """Everything `compress` needs besides the paths."""

    prune: PruneConfig
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    bench: BenchConfig | None = field(default_factory=BenchConfig)
    seed: int = 0
    parity_tolerance: float = 1e-4

    def __post_init__(self) -> None:
        if not self.parity_tolerance > 0:
            raise ValueError(f"parity_tolerance must be positive, got {self.parity_tolerance}")
