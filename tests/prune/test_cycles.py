from __future__ import annotations

import pytest
import torch

from compressor.graph.trace import trace
from compressor.io.data import DataSplits, Dataset
from compressor.prune.config import FinetuneConfig, PruneConfig
from compressor.prune.cycles import prune, schedule
from tests.conftest import labelled
from tests.helpers import graph_of
from tests.nets import tiny


def test_schedule_reproduces_the_papers_five_cycles_at_80_percent():
    cumulative = schedule(0.8, 5)
    per_cycle = [b - a for a, b in zip([0.0] + cumulative, cumulative)]
    assert [round(100 * p, 2) for p in per_cycle] == [23.80, 19.04, 15.23, 12.18, 9.75]
    assert cumulative[-1] == 0.8


@pytest.mark.parametrize("cycles", [1, 3, 10])
def test_schedule_is_increasing_and_ends_at_the_target(cycles):
    cumulative = schedule(0.85, cycles)
    assert len(cumulative) == cycles and cumulative[-1] == 0.85
    assert all(a < b for a, b in zip(cumulative, cumulative[1:]))


def _tuned_epochs(**tuning) -> list[int]:
    """Epochs each cycle of a 3-cycle run on the tiny model fine-tuned (patience never hit)."""
    x, y = (torch.from_numpy(a) for a in labelled(600))
    gm = graph_of(tiny(), x[:2])
    splits = DataSplits("labelled", Dataset(x[:500], y[:500]), Dataset(x[500:], y[500:]), None)
    result = prune(gm, trace(gm), splits, PruneConfig(0.4, cycles=3),
                   FinetuneConfig(max_epochs=1, patience=100, **tuning))
    return [row.epochs for row in result.cycles]


def test_the_last_of_several_cycles_fine_tunes_final_epochs():
    assert _tuned_epochs(final_epochs=3) == [1, 1, 3]
    assert _tuned_epochs() == [1, 1, 1]


def test_fine_tuning_without_labels_is_refused():
    x = torch.from_numpy(labelled(100)[0])
    gm = graph_of(tiny(), x[:2])
    splits = DataSplits("unlabelled", Dataset(x[:80]), Dataset(x[80:]), None)
    with pytest.raises(ValueError, match="labelled"):
        prune(gm, trace(gm), splits, PruneConfig(0.4), FinetuneConfig(max_epochs=1))


def test_an_unreachable_flop_target_says_the_most_in_flops_and_what_keeps_the_rest_dense():
    """A conv stem whose output reaches a softmax (dense) holds most FLOPs: 90% fewer FLOPs
    cannot be reached, and the refusal says by how much, in FLOPs, with the reason."""
    from torch import nn

    from compressor.errors import NothingToPruneError
    from compressor.prune.config import Of

    class Stem(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.mid, self.head = nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x):
            h = torch.softmax(self.stem(x), dim=1).mean((2, 3))
            return self.head(torch.relu(self.mid(h)))

    gm = graph_of(Stem(), torch.rand(2, 3, 16, 16))
    with pytest.raises(NothingToPruneError) as refused:
        prune(gm, trace(gm), None, PruneConfig(0.9, of=Of.FLOPS), FinetuneConfig())
    message = str(refused.value)
    assert "cannot remove 90.0% of the FLOPs" in message and "is the most" in message
    assert "in stem: " in message and "softmax" in message


def test_a_model_with_nothing_to_prune_names_the_reasons_by_their_share_of_the_weights():
    """Every layer dense: the refusal ranks the reasons by the weights they keep, two layers
    each, instead of listing every layer."""
    from torch import nn

    import compressor
    from compressor.errors import NothingToPruneError

    class Coupled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 16)
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            h = torch.softmax(self.a(x), dim=1)
            h = torch.softmax(self.b(h), dim=1)
            return self.head(torch.softmax(self.c(h), dim=1))

    with pytest.raises(NothingToPruneError) as refused:
        compressor.compress(Coupled(), 0.5, data=torch.rand(32, 8), latency=False)
    message = str(refused.value)
    assert message.startswith("nothing to prune in ")
    assert ("(by share of the weights: 91% in a, b and more: not followed by an elementwise "
            "activation (found softmax); 9% in head: output layer (never pruned))") in message


def test_a_shared_layer_is_priced_once_in_the_reasons_it_stays_dense():
    """A Linear applied twice holds its weights once: its share is of them, its name given
    once (ALBERT's shared blocks read 167% before)."""
    import compressor
    from compressor.errors import NothingToPruneError
    from tests.nets import Tied

    with pytest.raises(NothingToPruneError) as refused:
        compressor.compress(Tied(), 0.5, data=torch.rand(32, 20), latency=False)
    assert ("(by share of the weights: 83% in a: its weights are shared with another layer; "
            "17% in b: output layer (never pruned))") in str(refused.value)
