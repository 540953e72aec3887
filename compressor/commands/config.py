"""What `compress` does besides the paths: pruning, fine-tuning, latency, budgets, format."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..export.pack import ENERGY, Format
from ..measure.budgets import Budgets
from ..measure.latency import BenchConfig
from ..prune.config import FinetuneConfig, PruneConfig


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
    rank_energy: float = ENERGY  # --format lowrank: share of squared singular values kept
    input_shape: tuple[int, ...] | None = None  # one sample's: the data's and the export's
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # per-channel mean, std

    def __post_init__(self) -> None:
        object.__setattr__(self, "format", Format(self.format))
        if self.input_shape is not None and (not self.input_shape or
                                             min(self.input_shape) < 1):
            raise ValueError(f"input shape must be positive sizes, got {self.input_shape}")
        if not 0 < self.rank_energy <= 1:
            raise ValueError(f"--rank-energy must be in (0, 1], got {self.rank_energy}")
        if not self.parity_tolerance > 0:
            raise ValueError(f"parity_tolerance must be positive, got {self.parity_tolerance}")
        if self.budgets.needs_latency and (self.bench is None or
                                           self.budget_batch not in self.bench.batches):
            raise ValueError("a latency budget needs the latency measurement at its batch size:"
                             " drop --no-latency")

    @property
    def threads(self) -> int:
        """onnxruntime threads kernels are chosen and latency is timed with."""
        return self.bench.threads if self.bench else 1
