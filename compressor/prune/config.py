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
    """How neurons are ranked: the lowest are removed first (dead units always go first)."""

    AUTO = "auto"  # one shot: error where one Linear reads each layer; else activation/energy
    ACTIVATION = "activation"  # on how many calibration samples the neuron fires (the paper's)
    ENERGY = "energy"  # RMS output x the norm of the unit's columns in the next layers
    L1 = "l1"  # l1 norm of the neuron's [weights | bias] row (the merging paper's)
    L2 = "l2"  # l2 norm of that row
    ERROR = "error"  # output error left after greedy removal with least-squares refits
    RANDOM = "random"  # a random order: the sanity floor every criterion must beat

    @property
    def needs_data(self) -> bool:
        return self in (Criterion.AUTO, Criterion.ACTIVATION, Criterion.ENERGY, Criterion.ERROR)

    def resolve(self, *, relu: bool, linear: bool = False, tuned: bool = False) -> Criterion:
        """The concrete criterion. AUTO becomes ERROR in one shot (not `tuned`) when every
        group's units are read by one Linear layer directly (`linear`; what the error ranking
        needs): after the units that never fire (removed first, exactly, by every criterion),
        the output error a greedy least-squares removal leaves ranked best one-shot on every
        model measured (benchmarks/one_shot.md, transformer.md). Fine-tuned, such layers behind
        ReLUs are ranked by L2 (each row's norm over its layer's mean): on the paper MLP at
        0.85, seeds 0-5, it ended 88.91% against the firing rate's 88.63% (both without
        compensation; see `PruneConfig.resolved`), and level at 0.95 (86.40 vs 86.38). Where
        the error ranking does not apply (conv channels, Flatten, residual joins), AUTO is
        ACTIVATION when every unit is read through a ReLU, ENERGY otherwise (GELU, SiLU, Tanh
        are never exactly zero, and how often a unit is near zero says less than how much it
        sends on)."""
        if self is not Criterion.AUTO:
            return self
        if linear and not tuned:
            return Criterion.ERROR
        if linear and relu:
            return Criterion.L2
        return Criterion.ACTIVATION if relu else Criterion.ENERGY

    @staticmethod
    def auto_reason(resolved: Criterion, *, tuned: bool) -> str:
        """Why AUTO chose `resolved`, for the report."""
        if resolved is Criterion.ERROR:
            return ("one shot, every pruned layer read by one Linear: dead units first, then the "
                    "least output error after a least-squares refit")
        if resolved is Criterion.L2:
            return ("fine-tuned, every pruned layer behind ReLUs and read by one Linear: dead "
                    "units first, then each neuron's weight norm over its layer's mean")
        why = "fine-tuned" if tuned else \
            "not every pruned layer is read by one Linear alone (conv, Flatten or a join)"
        return f"{why}: firing rate" if resolved is Criterion.ACTIVATION else \
            f"{why}: RMS output x consumer norm, as the units are not behind ReLUs"


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
        return {Method.ACTIVATION: Criterion.ACTIVATION, Method.MAGNITUDE: Criterion.L1,
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


FINAL_EPOCHS = 3  # the last of several cycles fine-tunes this many times longer: the paper
#                  MLP at 0.85 kept 88.50% instead of 88.11% (seeds 0-2, benchmarks/results.md)
LONGER_ABOVE = 0.85  # past this target the last cycle trains longer still, in proportion to how
#                      much less is left (x (1 - 0.85) / (1 - target)), at most LONGER_MAX times:
LONGER_MAX = 3  # the paper MLP at 0.95, seeds 0-2: 18 epochs 87.56%, 36 87.79%, 54 87.90%
AVERAGE_EPOCHS = 1.2  # how many epochs the weight average of MLP fine-tuning spans (see below)
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
        criterion: how neurons are ranked (auto: one shot by output error where every layer
            is read by one Linear, else by activation count or energy; see
            `Criterion.resolve`).
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
            0 = auto: the machine's step, `channel_multiple` for conv channels and
            `linear_multiple` for Linear neurons, in layers at least 4 steps wide; narrower
            conv layers multiples of 8, narrower Linear layers exact widths).
        channel_multiple: what auto `align` rounds conv channels to; None: what `compress`
            measures for the machine (`compressor.measure.widths`), 8 where nothing measured.
        linear_multiple: what auto `align` rounds wide Linear layers to; None: what
            `compress` measures, exact widths where nothing measured.
        of: what `target` reduces: weights, or FLOPs per sample (score NEURONS).
        device: where counting, refits and fine-tuning run: cpu, cuda, cuda:N, or auto (cuda
            when available, else cpu); the model and every result come back to the CPU.
        trace_spectra: record every layer's singular values before pruning and after every
            cycle (the paper's §3.5 analysis; `Pruned.spectra`).
        factor: rank of the factoring of pruned Linear layers whose inputs are not pruned (an
            MLP's first layer) into `in -> factor -> out` before pruning (score NEURONS); 0 or
            "off": off; None or "auto": by `compressor.prune.factor.auto_rank` where a ReLU MLP
            is fine-tuned, else off.
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
    channel_multiple: int | None = None
    linear_multiple: int | None = None
    of: Of = Of.WEIGHTS
    device: str = "auto"
    trace_spectra: bool = False
    factor: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.target, (int, float)) and math.isfinite(self.target)):
            raise ValueError(f"target must be a number between 0 and 1, got {self.target!r}")
        if not 0.0 < self.target < 1.0:
            raise ValueError(f"target must be strictly between 0 and 1, got {self.target}")
        if self.cycles is not None and self.cycles < 1:
            raise ValueError(f"cycles must be at least 1, got {self.cycles}")
        factor = {"auto": None, "off": 0}.get(self.factor, self.factor) \
            if isinstance(self.factor, str) else self.factor
        if factor is not None and (isinstance(factor, bool) or not isinstance(factor, int)
                                   or factor < 0):
            raise ValueError(f"factor must be 'auto' (None), 'off' (0) or a rank of at least "
                             f"1, got {self.factor!r}")
        object.__setattr__(self, "factor", factor)
        if self.align < 0:
            raise ValueError(f"align must be 0 (auto) or at least 1, got {self.align}")
        for name in ("channel_multiple", "linear_multiple"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
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
        if self.score is Score.WEIGHTS and self.factor:
            raise ValueError("--factor splits layers before whole neurons are pruned; single "
                             "weights (--score neurons-weights) are pruned in place: drop "
                             "--factor")
        if self.score is Score.WEIGHTS and self.of is Of.FLOPS:
            raise ValueError("--of flops counts whole neurons and channels; single weights "
                             "(--score neurons-weights) are counted as weights: drop --of flops")
        if self.score is Score.WEIGHTS and self.compensate not in (Compensation.AUTO,
                                                                   Compensation.NONE):
            raise ValueError(f"--compensate {self.compensate.value} compensates whole neurons; "
                             "with --score neurons-weights the remaining weights are fine-tuned "
                             "instead: drop --compensate")

    def resolved(self, *, channels: bool, relu: bool = True, tokens: bool = False,
                 linear: bool = False, tuned: bool = False) -> PruneConfig:
        """The concrete config for a model that does (or does not) prune conv channels or
        features of tokens, whose units are (or are not) all read through ReLUs and each read
        by one Linear alone, pruned with fine-tuning (`tuned`) or in one shot: scope, cycles,
        criterion and compensation chosen by model where they are left to it. Compensation
        auto is none for fine-tuned ReLU layers each read by one Linear: on the paper MLP at
        0.85, seeds 0-5, the least-squares refit before each fine-tune cost 0.26 points with
        L2 (88.65 vs 88.91%) and 0.09 with the firing rate (88.54 vs 88.63)."""
        cycles = self.cycles or (CNN_SCHEDULE if channels or tokens else MLP_SCHEDULE)[0]
        mlp_tuned = tuned and linear and relu
        compensate = Compensation.NONE if mlp_tuned and self.compensate is Compensation.AUTO \
            else self.compensate
        return replace(self, scope=self.scope.resolve(channels=channels), cycles=cycles,
                       criterion=self.criterion.resolve(relu=relu, linear=linear, tuned=tuned),
                       compensate=compensate)

    @property
    def needs_data(self) -> bool:
        """Whether ranking needs calibration data."""
        if self.score is Score.WEIGHTS:
            return self.method is Method.ACTIVATION
        return self.criterion.needs_data


def final_epochs(epochs: int, target: float | None = None) -> int:
    """Most epochs of the last of several cycles by default: FINAL_EPOCHS x `epochs`, and
    past LONGER_ABOVE in proportion to how few weights `target` leaves (at most LONGER_MAX
    times more): a smaller network needs longer to recover what the cycles cost it."""
    scale = 1.0 if target is None else (1 - LONGER_ABOVE) / max(1 - target, 1e-9)
    return round(FINAL_EPOCHS * epochs * min(LONGER_MAX, max(1.0, scale)))


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
        final_epochs: most epochs of the last cycle's fine-tuning when there are several
            (its patience grows in proportion); None: FINAL_EPOCHS x `max_epochs`, longer at
            high targets (see `final_epochs`).
        recover: the paper's retrain-until-recovered rule: every cycle but the last trains
            until its validation accuracy is within `recover` points of the input model's
            (at most `final_epochs` epochs, early stopping as usual); None: `max_epochs`.
        average: epochs an exponential moving average of the weights spans (decay per step
            1 - 1 / (average x steps per epoch)); each epoch evaluates and may keep the
            average instead of the weights trained. 0: off; None: by model (see `resolved`;
            off where not resolved).
    """

    max_epochs: int | None = None
    patience: int = 3
    lr: float = 1e-3
    batch_size: int = 128
    distill: float = 0.5
    temperature: float = 4.0
    final_epochs: int | None = None
    recover: float | None = None
    average: float | None = None

    def __post_init__(self) -> None:
        if self.average is not None and not (0 <= self.average < 1000):
            raise ValueError(f"average must be epochs in [0, 1000), got {self.average}")
        if self.recover is not None and not (0 <= self.recover < 100):
            raise ValueError(f"recover must be points of accuracy in [0, 100), got {self.recover}")
        if self.max_epochs is not None and self.max_epochs < 0:
            raise ValueError(f"max_epochs must be >= 0, got {self.max_epochs}")
        if self.final_epochs is not None and self.final_epochs < 0:
            raise ValueError(f"final_epochs must be >= 0, got {self.final_epochs}")
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

    def resolved(self, *, channels: bool, tokens: bool = False,
                 target: float | None = None) -> FinetuneConfig:
        """The concrete config: epochs chosen by model (conv channels or tokens, or neither)
        and the last cycle's (`final_epochs` for `target`) where they are left to it; the
        weight average AVERAGE_EPOCHS for MLP neurons (measured there: paper MLP, seeds 0-2,
        0.95 +0.22 pt, 0.85 +0.10), off for conv channels and tokens (not measured)."""
        schedule = CNN_SCHEDULE if channels or tokens else MLP_SCHEDULE
        epochs = schedule[1] if self.max_epochs is None else self.max_epochs
        final = final_epochs(epochs, target) if self.final_epochs is None else self.final_epochs
        average = (0.0 if channels or tokens else AVERAGE_EPOCHS) if self.average is None \
            else self.average
        return replace(self, max_epochs=epochs, final_epochs=final, average=average)

    def last(self) -> FinetuneConfig:
        """The fine-tuning of the last of several cycles: `final_epochs` epochs (default
        FINAL_EPOCHS x `max_epochs`), patience scaled alike."""
        if not self.max_epochs:
            return self
        final = final_epochs(self.max_epochs) if self.final_epochs is None else self.final_epochs
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
