from __future__ import annotations

import torch
from torch import nn

from compressor.calibrate import count_activations
from compressor.compensate import compensate
from compressor.config import Compensation
from compressor.graph import get_tensor, run_batched
from compressor.pack import shrink
from compressor.trace import trace
from tests.conftest import graph_of
from tests.nets import tiny


def with_dead_and_disconnected() -> nn.Sequential:
    """tiny() with dead units (no weights, bias < 0) and constant units (no weights, bias > 0)."""
    net = tiny()
    with torch.no_grad():
        net[0].weight[[1, 5, 9]] = 0
        net[0].bias[[1, 5]] = -0.5  # dead: relu(-0.5) = 0
        net[0].bias[9] = 0.7  # disconnected: always relu(0.7) = 0.7
        net[2].weight[[0, 3]] = 0
        net[2].bias[0] = 1.25  # constant in the second hidden layer
        net[2].bias[3] = -2.0
    return net


def remove_constant_units(mode: Compensation):
    x = torch.randn(256, 20)
    gm = graph_of(with_dead_and_disconnected(), x[:2])
    groups = trace(gm).groups
    before = run_batched(gm, x)
    removed = {"0": torch.tensor([1, 5, 9]), "2": torch.tensor([0, 3]), "4": torch.tensor([], dtype=torch.int64)}
    stats = count_activations(gm, groups, x)
    exact = compensate(gm, groups, removed, stats, mode=mode)
    resized = shrink(gm, groups, removed)
    return gm, before, run_batched(gm, x), exact, resized


def test_removing_dead_and_disconnected_neurons_leaves_outputs_identical():
    for mode in Compensation:
        _, before, after, exact, _ = remove_constant_units(mode)
        torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
        assert exact == {"0": 3, "2": 2, "4": 0}


def test_shrink_removes_rows_and_the_next_layers_columns():
    gm, _, _, _, resized = remove_constant_units(Compensation.NONE)
    assert get_tensor(gm, "p_0_weight").shape == (29, 20)
    assert get_tensor(gm, "p_2_weight").shape == (22, 29)
    assert get_tensor(gm, "p_4_weight").shape == (16, 22)
    assert get_tensor(gm, "p_6_weight").shape == (4, 16)
    assert [g.size for g in resized] == [29, 22, 16]


def test_mean_compensation_folds_the_mean_activation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(500, 3)
    gm = graph_of(net, x[:2])
    groups = trace(gm).groups
    stats = count_activations(gm, groups, x)
    hidden = torch.relu(net[0](x)).detach()
    expected_bias = net[2].bias.detach() + net[2].weight.detach()[:, 2] * hidden[:, 2].mean()
    compensate(gm, groups, {"0": torch.tensor([2])}, stats, mode=Compensation.MEAN)
    torch.testing.assert_close(get_tensor(gm, "p_2_bias").detach(), expected_bias)


def test_shrinking_does_not_modify_the_input_model():
    net = tiny()
    original = {k: v.clone() for k, v in net.state_dict().items()}
    gm = graph_of(net, torch.randn(2, 20))
    groups = trace(gm).groups
    shrink(gm, groups, {g.name: torch.tensor([0, 1]) for g in groups})
    for key, value in net.state_dict().items():
        assert torch.equal(value, original[key])
