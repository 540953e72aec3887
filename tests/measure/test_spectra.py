"""Ranks, energy ranks, zeros and PCA dimensions on matrices whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compressor.measure.spectra import energy_rank, pca_dims, weight_stats
from compressor.prune.lsq import Moments


def test_a_rank_3_matrix_with_a_zero_row_and_column():
    g = np.random.default_rng(0)
    w = (g.normal(size=(8, 3)) @ g.normal(size=(3, 6))).astype(np.float32)
    w[2] = 0
    w[:, 4] = 0
    stats = weight_stats(w)
    assert stats.shape == (8, 6) and stats.rank == 3
    assert stats.zero_rows == 1 and stats.zero_columns == 1
    assert stats.zero_fraction == pytest.approx((6 + 8 - 1) / 48, abs=1e-6)
    assert len(stats.singular_values) == 6 and stats.singular_values[3] < 1e-5
    assert stats.energy_ranks["99%"] <= 3


def test_effective_rank_of_equal_singular_values_is_their_count_and_energy_rank_counts():
    stats = weight_stats(np.diag([2.0, 2.0, 2.0, 2.0, 0.0]).astype(np.float32))
    assert stats.rank == 4 and stats.effective_rank == pytest.approx(4.0)
    assert energy_rank(np.array([81.0, 9.0, 9.0, 1.0]), 0.90) == 2
    assert energy_rank(np.array([81.0, 9.0, 9.0, 1.0]), 0.99) == 3
    assert energy_rank(np.zeros(3), 0.9) == 0


def test_a_conv_kernel_is_one_row_per_output_channel():
    w = torch.randn(4, 3, 3, 3)
    stats = weight_stats(w)
    assert stats.shape == (4, 27) and stats.rank == 4
    assert math.isclose(sum(s * s for s in stats.singular_values), float((w.double() ** 2).sum()),
                        rel_tol=1e-9)


def test_pca_dimension_of_activations_in_a_two_dimensional_subspace():
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(2, 10, generator=g)
    rows = torch.randn(5000, 2, generator=g) * torch.tensor([3.0, 1.0]) @ basis + 5.0
    m = Moments(10)
    for chunk in rows.split(1000):  # streamed as `compress analyze` streams batches
        m.add(chunk)
    assert pca_dims(m.mean_cov()[1]) == {"95%": 2, "99%": 2}
    one = Moments(10)
    one.add(torch.randn(3000, 1, generator=g) @ basis[:1])
    assert pca_dims(one.mean_cov()[1])["99%"] == 1
