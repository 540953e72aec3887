"""The PCA rank-reduction baseline: exact at full rank, the projection folded at lower ranks."""

from __future__ import annotations

import torch

from compressor.graph.capture import outputs_of, run_batched
from compressor.graph.trace import trace
from compressor.prune.pca import pca_projected
from tests.helpers import graph_of
from tests.nets import tiny


def test_full_rank_changes_nothing_and_rank_k_projects_the_hidden_layer():
    x = torch.randn(2000, 20)
    gm = graph_of(tiny(), x[:2])
    groups = trace(gm).groups
    full = pca_projected(gm, groups, x, {g.name: g.size for g in groups})
    assert torch.allclose(run_batched(full, x), run_batched(gm, x), atol=1e-4)

    first = groups[0]
    low = pca_projected(gm, groups[:1], x, {first.name: 3})
    reads = next(n for n in gm.graph.nodes if n.name == first.consumer_nodes[0]).args[0].name
    h = outputs_of(gm, [reads])(x)[0].double()
    mean = h.mean(0)
    u = torch.linalg.eigh(torch.cov((h - mean).T, correction=0)).eigenvectors[:, -3:]
    projected = mean + (h - mean) @ u @ u.T
    consumer = dict(gm.named_parameters())[first.consumers[0].param].double()
    expected = projected @ consumer.T
    got = outputs_of(low, [first.consumer_nodes[0]])(x)[0].double()
    bias = dict(gm.named_parameters())[first.consumer_biases[0]].double()
    assert torch.allclose(got, expected + bias, atol=1e-3)
    assert torch.linalg.matrix_rank(got - got.mean(0), atol=1e-3) == 3
