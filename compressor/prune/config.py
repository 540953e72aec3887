"""What to remove and how: the pruning methods (str enums) and their frozen, validated configs."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum

import torch


class Scope(str, Enum):
    """How neurons are ranked for removal (paper Algorithms 3 and 6)."""

    GLOBAL = "global"  # one ranking across all hidden layers
    LOCAL = "local"  # the same fraction of every hidden layer
    AUTO = "auto"  # global for neurons, local when convolution channels are pruned

    def resolve(self, *, channels: bool) -> Scope:
        """The concrete scope: AUTO becomes LOCAL when convolution channels are pruned (firing
        rates of channels at different depths and resolutions do not rank against each other:
        one global ranking of the example ResNet at 2x fewer FLOPs kept 8 of 48 channels in one
        stage and lost 8.2 points one-shot, against 2.6 with local), GLOBAL otherwise."""
        if self is Scope.AUTO:
            return Scope.LOCAL if channels else Scope.GLOBAL
        return self


class Compensation(str, Enum):
    """How the next layer makes up for removed neurons (exact constants are always folded)."""

    NONE = "none"  # plain removal
    MEAN = "mean"  # fold the removed neuron's mean calibration activation into the next bias
    MERGE = "merge"  # neuron merging (Kim et al. 2020): data-free
    LSQ = "lsq"  # refit the next layer by least squares on calibration data
    AUTO = "auto"  # lsq with calibration data, merge without (where exact, else none)

    def resolve(self, *, has_data: bool, homogeneous: bool = True) -> Compensation:
        """The concrete method: AUTO becomes LSQ with data; without, MERGE for units read
        through a positively homogeneous activation (ReLU, LeakyReLU), for which merging is
        exact, and NONE for the others."""
        if self is Compensation.AUTO:
            if has_data:
                return Compensation.LSQ
            return Compensation.MERGE if homogeneous else Compensation.NONE
        return self

    @property
    def needs_data(self) -> bool:
        return self in (Compensation.MEAN, Compensation.LSQ)


class Criterion(str, Enum):
    """How neurons are ranked: the lowest are removed first."""

    AUTO = "auto"  # activation for ReLU units, energy for any other activation
    ACTIVATION = "activation"  # on how many calibration samples the neuron fires (the paper's)
    ENERGY = "energy"  # RMS output x the norm of the unit's columns in the next layers
    L1 = "l1"  # l1 norm of the neuron's [weights | bias] row (the merging paper's)
    L2 = "l2"  # l2 norm of that row
    ERROR = "error"  # output error left after greedy removal with least-squares refits
    RANDOM = "random"  # a random order: the sanity floor every criterion must beat

    @property
    def needs_data(self) -> bool:
        return self in (Criterion.AUTO, Criterion.ACTIVATION, Criterion.ENERGY, Criterion.ERROR)

    def resolve(self, *, relu: bool) -> Criterion:
        """The concrete criterion: AUTO becomes ACTIVATION when every unit is read through a
        ReLU (a count of non-zero outputs is the paper's criterion, and a zero count means
        removal is exact), ENERGY otherwise (GELU, SiLU, Tanh... are never exactly zero, and
        how often a unit is near zero says less than how much it sends on)."""
        if self is Criterion.AUTO:
            return Criterion.ACTIVATION if relu else Criterion.ENERGY
        return self


class Of(str, Enum):
    """What `--target` reduces."""

    WEIGHTS = "weights"  # weight entries of every Linear and Conv layer
    FLOPS = "flops"  # FLOPs per sample (a conv weight counts once per output position)


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
        return {Method.ACTIVATION: Criterion.AUTO, Method.MAGNITUDE: Criterion.L1,
                Method.RANDOM: Criterion.RANDOM}[self]


def resolve_device(name: str) -> str:
    """`auto` -> cuda when torch sees a GPU, else cpu; cuda is refused when it sees none."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {name} asked for, but torch sees no CUDA GPU here: use "
                         "--device cpu (or auto)")
    return name


MLP_SCHEDULE = (5, 6)  # (cycles, most epochs per cycle): the paper's schedule for neurons
CNN_SCHEDULE = (1, 5)  # for conv channels and token features, where an epoch costs 20-50x an
#                         MLP's (see docs)


@dataclass(frozen=True)
class PruneConfig:
    """How much to remove and how.

    Args:
        target: fraction of the original weight entries (or FLOPs, see `of`) to remove,
            0 < target < 1.
        scope: global or local ranking (auto: local for conv channels, else global).
        cycles: pruning cycles when the model is fine-tuned (one shot otherwise); None: by
            model, `MLP_SCHEDULE`, or `CNN_SCHEDULE` for conv channels and tokens (see
            `resolved`).
        compensate: how the next layer makes up for removed neurons.
        criterion: how neurons are ranked (auto: by activation count for ReLU units, by
            energy for others; see `resolved`).
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
        align: every layer keeps a multiple of this many neurons (score NEURONS; 1 = any;
            0 = auto: multiples of 8 for conv channels, exact widths for Linear neurons).
        of: what `target` reduces: weights, or FLOPs per sample (score NEURONS).
        device: where counting, refits and fine-tuning run: cpu, cuda, cuda:N, or auto (cuda
            when available, else cpu); the model and every result come back to the CPU.
    """

    target: float
    scope: Scope = Scope.AUTO
    cycles: int | None = None
    compensate: Compensation = Compensation.AUTO
    criterion: Criterion = Criterion.AUTO
    merge_threshold: float = 0.45
    ridge: float = 1e-3
    calibration_samples: int = 10_000
    batch_size: int = 1_000
    score: Score = Score.NEURONS
    method: Method = Method.ACTIVATION
    seed: int = 0
    align: int = 0
    of: Of = Of.WEIGHTS
    device: str = "auto"

    def __post_init__(self) -> None:
        if not (isinstance(self.target, (int, float)) and math.isfinite(self.target)):
            raise ValueError(f"target must be a number between 0 and 1, got {self.target!r}")
        if not 0.0 < self.target < 1.0:
            raise ValueError(f"target must be strictly between 0 and 1, got {self.target}")
        if self.cycles is not None and self.cycles < 1:
            raise ValueError(f"cycles must be at least 1, got {self.cycles}")
        if self.align < 0:
            raise ValueError(f"align must be 0 (auto) or at least 1, got {self.align}")
        if self.calibration_samples < 1 or self.batch_size < 1:
            raise ValueError("calibration_samples and batch_size must be positive")
        if not 0 <= self.merge_threshold <= 1:
            raise ValueError(f"merge threshold must be between 0 and 1, got {self.merge_threshold}")
        if not (self.ridge > 0 and math.isfinite(self.ridge)):
            raise ValueError(f"ridge must be a positive number, got {self.ridge}")
        object.__setattr__(self, "device", resolve_device(self.device))
        object.__setattr__(self, "scope", Scope(self.scope))
        object.__setattr__(self, "compensate", Compensation(self.compensate))
        object.__setattr__(self, "criterion", Criterion(self.criterion))
        object.__setattr__(self, "score", Score(self.score))
        object.__setattr__(self, "method", Method(self.method))
        object.__setattr__(self, "of", Of(self.of))
        if self.score is Score.WEIGHTS and self.of is Of.FLOPS:
            raise ValueError("--of flops counts whole neurons and channels; single weights "
                             "(--score neurons-weights) are counted as weights: drop --of flops")
        if self.score is Score.WEIGHTS and self.compensate not in (Compensation.AUTO,
                                                                   Compensation.NONE):
            raise ValueError(f"--compensate {self.compensate.value} compensates whole neurons; "
                             "with --score neurons-weights the remaining weights are fine-tuned "
                             "instead: drop --compensate")

    def resolved(self, *, channels: bool, relu: bool = True, tokens: bool = False) -> PruneConfig:
        """The concrete config for a model that does (or does not) prune conv channels or
        features of tokens, and whose units are (or are not) all read through ReLUs: scope,
        cycles and criterion chosen by model where they are left to it."""
        cycles = self.cycles or (CNN_SCHEDULE if channels or tokens else MLP_SCHEDULE)[0]
        return replace(self, scope=self.scope.resolve(channels=channels), cycles=cycles,
                       criterion=self.criterion.resolve(relu=relu))

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
        max_epochs: most epochs per cycle; 0 turns fine-tuning off; None: by model (see
            `resolved`).
        patience: epochs without a new best validation accuracy before stopping early.
        lr: Adam learning rate at the start of each cycle (cosine decay to 0 over max_epochs).
        batch_size: training batch size.
        distill: weight of distillation from the dense model's logits (0 = labels only).
        temperature: softening temperature of the distillation.
    """

    max_epochs: int | None = None
    patience: int = 3
    lr: float = 1e-3
    batch_size: int = 128
    distill: float = 0.5
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if self.max_epochs is not None and self.max_epochs < 0:
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

    def resolved(self, *, channels: bool, tokens: bool = False) -> FinetuneConfig:
        """The concrete config: epochs chosen by model (conv channels or tokens, or neither)
        where they are left to it."""
        if self.max_epochs is not None:
            return self
        schedule = CNN_SCHEDULE if channels or tokens else MLP_SCHEDULE
        return replace(self, max_epochs=schedule[1])
