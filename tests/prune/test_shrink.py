from __future__ import annotations

import torch

from compressor.graph.capture import get_tensor
from compressor.graph.trace import trace
from compressor.prune.shrink import shrink
from tests.helpers import graph_of, remove_units
from tests.nets import tiny, with_dead_and_disconnected


def remove_constant_units():
    x = torch.randn(256, 20)
    gm = graph_of(with_dead_and_disconnected(), x[:2])
    removed = {"0": torch.tensor([1, 5, 9]), "2": torch.tensor([0, 3]),
               "4": torch.tensor([], dtype=torch.int64)}
    return gm, remove_units(gm, removed)[0]


def test_shrink_removes_rows_and_the_next_layers_columns():
    gm, resized = remove_constant_units()
    assert get_tensor(gm, "p_0_weight").shape == (29, 20)
    assert get_tensor(gm, "p_2_weight").shape == (22, 29)
    assert get_tensor(gm, "p_4_weight").shape == (16, 22)
    assert get_tensor(gm, "p_6_weight").shape == (4, 16)
    assert [g.size for g in resized] == [29, 22, 16]


def test_shrinking_does_not_modify_the_input_model():
    net = tiny()
    original = {k: v.clone() for k, v in net.state_dict().items()}
    gm = graph_of(net, torch.randn(2, 20))
    groups = trace(gm).groups
    shrink(gm, groups, {g.name: torch.tensor([0, 1]) for g in groups})
    for key, value in net.state_dict().items():
        assert torch.equal(value, original[key])
