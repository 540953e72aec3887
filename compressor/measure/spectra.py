"""What a weight matrix and a layer's activations look like: singular values, numerical and
effective rank, energy captured by the top singular values, zeros, and the PCA dimension of
the activations (the activation-based pruning paper's analysis, §3.4-3.5)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

EPS = float(np.finfo(np.float32).eps)  # weights are float32: rank tolerance is relative to it
ENERGIES = (0.90, 0.99)  # shares of the squared singular values (and of activation variance)
VARIANCES = (0.95, 0.99)  # shares of activation variance the PCA dimension keeps


@dataclass(frozen=True)
class WeightStats:
    """One weight matrix [outputs, inputs] (a conv's kernel taps flattened into inputs)."""

    shape: tuple[int, int]
    rank: int  # singular values above `tolerance`
    tolerance: float  # sigma_max x max(shape) x float32 eps (numpy's matrix_rank default)
    effective_rank: float  # exp of the entropy of sigma / sum(sigma) (Roy & Vetterli 2007)
    energy_ranks: dict[str, int]  # "90%" -> least k whose sigma_1..k hold 90% of sum sigma^2
    zero_fraction: float  # exact zeros among the entries
    zero_rows: int  # outputs with no non-zero weight
    zero_columns: int  # inputs no output reads
    singular_values: tuple[float, ...]  # descending


def weight_stats(w: torch.Tensor | np.ndarray) -> WeightStats:
    """The statistics of `w`, reshaped to [outputs, everything else]."""
    m = np.asarray(w, dtype=np.float64).reshape(len(w), -1)
    sigma = np.linalg.svd(m, compute_uv=False)
    top = float(sigma[0]) if sigma.size else 0.0
    tolerance = top * max(m.shape) * EPS
    total = float(sigma.sum())
    if total > 0:
        p = sigma[sigma > 0] / total
        effective = math.exp(float(-(p * np.log(p)).sum()))
    else:
        effective = 0.0
    zero = m == 0
    return WeightStats(
        shape=(int(m.shape[0]), int(m.shape[1])), rank=int((sigma > tolerance).sum()),
        tolerance=tolerance, effective_rank=round(effective, 3),
        energy_ranks={f"{round(100 * e)}%": energy_rank(sigma ** 2, e) for e in ENERGIES},
        zero_fraction=round(float(zero.mean()), 6), zero_rows=int(zero.all(axis=1).sum()),
        zero_columns=int(zero.all(axis=0).sum()),
        singular_values=tuple(float(s) for s in sigma))


def energy_rank(values: np.ndarray, share: float) -> int:
    """Least k such that the k largest of `values` (non-negative: squared singular values,
    or covariance eigenvalues) hold at least `share` of their sum; 0 when all are zero."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    total = ordered.sum()
    if total <= 0:
        return 0
    return int(np.searchsorted(np.cumsum(ordered) / total, share - 1e-12) + 1)


def pca_dims(cov: torch.Tensor) -> dict[str, int]:
    """Per share of VARIANCES, the number of principal components of a covariance that keep
    it."""
    eigen = torch.linalg.eigvalsh(cov).clamp(min=0).numpy()
    return {f"{round(100 * v)}%": energy_rank(eigen, v) for v in VARIANCES}
