"""What each pruning stage is told: the methods (str enums) and one small frozen config per
stage, every value concrete. Which values a run uses, and why, is decided once by
`compressor.plan`; the stages only carry them out."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import Enum
from types import MappingProxyType
from typing import Mapping


class Scope(str, Enum):
    """How units are ranked for removal (paper Algorithms 3 and 6)."""

    GLOBAL = "global"  # one ranking across all prunable layers
    LOCAL = "local"  # the same fraction of every prunable layer


class Compensation(str, Enum):
    """How the next layer makes up for removed units (exact constants are always folded)."""

    NONE = "none"  # plain removal
    MEAN = "mean"  # fold the removed unit's mean calibration activation into the next bias
    MERGE = "merge"  # neuron merging (Kim et al. 2020), data-free, where it is exact
    LSQ = "lsq"  # refit the next layer by least squares on calibration data

    @property
    def needs_data(self) -> bool:
        return self in (Compensation.MEAN, Compensation.LSQ)


class Criterion(str, Enum):
    """How units are ranked: the lowest are removed first (dead units always go first)."""

    ACTIVATION = "activation"  # on how many calibration samples the unit fires (the paper's)
    ENERGY = "energy"  # RMS output x the norm of the unit's columns in the next layers
    L1 = "l1"  # l1 norm of the unit's [weights | bias] row (the merging paper's)
    L2 = "l2"  # l2 norm of that row
    GROUP = "group"  # l2 norm of that row and the unit's columns in the consumers
    ERROR = "error"  # output error left after greedy removal with least-squares refits
    RANDOM = "random"  # a random order: the sanity floor every criterion must beat

    @property
    def needs_data(self) -> bool:
        return self in (Criterion.ACTIVATION, Criterion.ENERGY, Criterion.ERROR)


class Of(str, Enum):
    """What the target reduces."""

    WEIGHTS = "weights"  # weight entries of every Linear and Conv layer
    FLOPS = "flops"  # FLOPs per sample (a conv weight counts once per output position)


class Score(str, Enum):
    """What is removed (paper section 4.1)."""

    NEURONS = "neurons"  # whole units, ranked by the criterion; layers shrink
    WEIGHTS = "neurons-weights"  # single weights; units left without inputs are removed too


class Method(str, Enum):
    """What a single weight's score is built from (score WEIGHTS)."""

    ACTIVATION = "activation"  # activation count of the unit it feeds x |w| (the paper's n&w)
    MAGNITUDE = "magnitude"  # |w|: global magnitude pruning (Han et al.; Zhu & Gupta), gradual
    RANDOM = "random"  # random: the sanity floor

    @property
    def criterion(self) -> Criterion:
        """The unit criterion this method means for score NEURONS."""
        return {Method.ACTIVATION: Criterion.ACTIVATION, Method.MAGNITUDE: Criterion.L1,
                Method.RANDOM: Criterion.RANDOM}[self]


CALIBRATION_BATCH = 1_000  # samples per forward pass while counting and refitting


@dataclass(frozen=True)
class SelectConfig:
    """How units are ranked and chosen.

    Args:
        criterion: the ranking.
        scope: global, or the same fraction of every group.
        seed: seed of the random criterion.
        ridge: regularisation of the error criterion's least-squares refits.
        batch_size: samples per forward pass.
        device: where the error criterion computes.
    """

    criterion: Criterion = Criterion.L1
    scope: Scope = Scope.GLOBAL
    seed: int = 0
    ridge: float = 1e-3
    batch_size: int = CALIBRATION_BATCH
    device: str = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "criterion", Criterion(self.criterion))
        object.__setattr__(self, "scope", Scope(self.scope))
        _positive("ridge", self.ridge)


@dataclass(frozen=True)
class CompensateConfig:
    """How the next layers make up for removed units.

    Args:
        method: none, mean, merge (only in groups where merging is exact: read through ReLU
            or LeakyReLU, no BatchNorm on the way; the other groups' units are dropped) or
            lsq.
        merge_threshold: least cosine similarity of [w | b] rows at which merge folds a
            removed unit into a kept one.
        ridge: lsq regularisation towards the current weights, relative to the mean input
            variance.
        batch_size: samples per forward pass.
        device: where refits compute.
    """

    method: Compensation = Compensation.NONE
    merge_threshold: float = 0.45
    ridge: float = 1e-3
    batch_size: int = CALIBRATION_BATCH
    device: str = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", Compensation(self.method))
        if not 0 <= self.merge_threshold <= 1:
            raise ValueError(f"merge_threshold must be between 0 and 1, got "
                             f"{self.merge_threshold}")
        _positive("ridge", self.ridge)


@dataclass(frozen=True)
class PruneConfig:
    """The pruning cycles: how much to remove, in how many cycles, and each stage's config.

    Args:
        target: fraction of the weight entries (or FLOPs, see `of`) to remove, 0 < target < 1.
        select: ranking and selection.
        compensate: compensation of removed units.
        of: what `target` reduces.
        score: whole units, or single weights (then `method` scores them).
        method: how single weights are scored (score WEIGHTS).
        cycles: pruning cycles (each but the last fine-tuned when `FinetuneConfig.max_epochs`
            > 0; one shot otherwise).
        calibration_samples: most training samples counted on.
        batch_size: samples per forward pass while counting.
        device: where counting runs.
        align: per group, the multiple its width is rounded to in the last cycle (groups not
            listed: exact widths).
        steps: per group, the step its kernel runs in, for the time model that keeps rounded
            widths on the kernel's steps (empty: no time model).
        seed: seed of the random weight scores.
        trace_spectra: record every layer's singular values before pruning and after every
            cycle.
        stream: share of the residual stream's width to remove (groups with
            `PrunableGroup.stream`; 0: none), in step with the cycles' schedule.
    """

    target: float
    select: SelectConfig = field(default_factory=SelectConfig)
    compensate: CompensateConfig = field(default_factory=CompensateConfig)
    of: Of = Of.WEIGHTS
    score: Score = Score.NEURONS
    method: Method = Method.MAGNITUDE
    cycles: int = 1
    calibration_samples: int = 10_000
    batch_size: int = CALIBRATION_BATCH
    device: str = "cpu"
    align: Mapping[str, int] = field(default_factory=dict)
    steps: Mapping[str, int] = field(default_factory=dict)
    seed: int = 0
    trace_spectra: bool = False
    stream: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.target, (int, float)) and math.isfinite(self.target)
                and 0 < self.target < 1):
            raise ValueError(f"target must be strictly between 0 and 1, got {self.target!r}")
        if self.cycles < 1:
            raise ValueError(f"cycles must be at least 1, got {self.cycles}")
        if not 0 <= self.stream < 1:
            raise ValueError(f"stream must be in [0, 1), got {self.stream!r}")
        if self.calibration_samples < 1 or self.batch_size < 1:
            raise ValueError("calibration_samples and batch_size must be positive")
        object.__setattr__(self, "of", Of(self.of))
        object.__setattr__(self, "score", Score(self.score))
        object.__setattr__(self, "method", Method(self.method))
        object.__setattr__(self, "align", MappingProxyType(dict(self.align)))
        object.__setattr__(self, "steps", MappingProxyType(dict(self.steps)))

    @property
    def needs_data(self) -> bool:
        """Whether ranking needs calibration data."""
        if self.score is Score.WEIGHTS:
            return self.method is Method.ACTIVATION
        return self.select.criterion.needs_data


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning between pruning cycles.

    Args:
        max_epochs: most epochs per cycle; 0: no fine-tuning.
        patience: epochs without a new best validation accuracy before stopping early.
        lr: Adam learning rate at the start of each cycle (cosine decay to 0 over max_epochs).
        batch_size: training batch size.
        distill: weight of distillation from the dense model's logits (0 = labels only).
        temperature: softening temperature of the distillation.
        final_epochs: most epochs of the last of several cycles (its patience grows in
            proportion).
        recover: the paper's retrain-until-recovered rule: every cycle but the last trains
            until its validation accuracy is within `recover` points of the input model's
            (at most `final_epochs` epochs, early stopping as usual); None: `max_epochs`.
        average: epochs an exponential moving average of the weights spans (decay per step
            1 - 1 / (average x steps per epoch)); each epoch is judged, and may be kept, by
            the average instead of the weights trained. 0: off.
    """

    max_epochs: int = 0
    patience: int = 3
    lr: float = 1e-3
    batch_size: int = 128
    distill: float = 0.5
    temperature: float = 4.0
    final_epochs: int | None = None
    recover: float | None = None
    average: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.average < 1000:
            raise ValueError(f"average must be epochs in [0, 1000), got {self.average}")
        if self.recover is not None and not (0 <= self.recover < 100):
            raise ValueError(f"recover must be points of accuracy in [0, 100), got {self.recover}")
        if self.max_epochs < 0:
            raise ValueError(f"max_epochs must be >= 0, got {self.max_epochs}")
        if self.final_epochs is not None and self.final_epochs < 0:
            raise ValueError(f"final_epochs must be >= 0, got {self.final_epochs}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        _positive("lr", self.lr)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if not 0 <= self.distill <= 1:
            raise ValueError(f"distill must be between 0 and 1, got {self.distill}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")

    def last(self) -> FinetuneConfig:
        """The fine-tuning of the last of several cycles: `final_epochs` epochs (as many as
        the others where not set), patience scaled alike."""
        if not self.max_epochs or self.final_epochs is None:
            return self
        final = self.final_epochs
        patience = max(self.patience, math.ceil(self.patience * final / self.max_epochs))
        return replace(self, max_epochs=final, patience=patience)

    def cycle(self, n: int, cycles: int, dense_accuracy: float | None) -> tuple[FinetuneConfig,
                                                                                 float | None]:
        """Cycle n of `cycles`'s fine-tuning and the validation accuracy that ends it early
        (None: none): the last of several cycles trains `last()`; with `recover`, the others
        train until within `recover` points of `dense_accuracy`, for at most `final_epochs`."""
        if n == cycles > 1:
            return self.last(), None
        if self.recover is None or dense_accuracy is None or not self.max_epochs or cycles == 1:
            return self, None
        return replace(self.last(), patience=self.patience), dense_accuracy - self.recover / 100


def _positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number, got {value}")
