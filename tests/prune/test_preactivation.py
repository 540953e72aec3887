"""Pre-activation networks (BatchNorm -> ReLU -> conv after a cat or a residual add): the
BatchNorm cannot be folded into a layer, so its entries for the units go with them, the units
are counted at the ReLU after it (at their offset behind a cat), and merging is refused."""

from __future__ import annotations

import pytest
import torch

from compressor.errors import UsageError
from compressor.export.to_onnx import to_onnx
from compressor.export.verify import verify
from compressor.graph.capture import get_tensor
from compressor.graph.trace import trace
from compressor.prune.calibrate import count_activations
from compressor.prune.config import Compensation
from compressor.plan import DataFacts, Options, ThisMachine, model_facts, plan
from tests.helpers import graph_of, remove_units
from tests.nets import PreActDense, PreActResidual

X = torch.rand(64, 1, 12, 12, generator=torch.Generator().manual_seed(7))


def _dead(conv: torch.nn.Conv2d, channel: int) -> None:
    """Channel `channel` outputs -3 everywhere: below zero after every BatchNorm here."""
    with torch.no_grad():
        conv.weight[channel] = 0
        conv.bias[channel] = -3.0


def _units(gm, removed):
    return {g.name: torch.tensor(removed.get(g.name, []), dtype=torch.int64)
            for g in trace(gm).groups}


def test_the_batchnorm_entries_of_concatenated_units_are_found_at_their_offsets():
    groups = {g.name: g for g in trace(graph_of(PreActDense(), X[:2])).groups}
    assert sorted(groups) == ["l1", "l2", "stem"]
    l1 = groups["l1"]
    assert {(s.param, s.offset) for s in l1.carried} == {
        (f"{bn}_{p}", 8) for bn in ("bn2", "bn3")
        for p in ("weight", "bias", "running_mean", "running_var")}
    assert l1.activations == ("relu_1", "relu_2") and l1.offsets == (8, 8)
    assert not any(g.mergeable or g.exact_constants for g in groups.values())


def test_dead_channels_of_a_preactivation_denseblock_go_without_changing_the_output():
    net = PreActDense().eval()
    _dead(net.stem, 1)
    _dead(net.l1, 0)
    gm = graph_of(net, X[:2])
    stats = count_activations(gm, trace(gm).groups, X)
    assert int(stats.counts["stem"][1]) == 0 and int(stats.counts["l1"][0]) == 0
    with torch.no_grad():  # l1's channels 8-13 after bn2 and after bn3, counted by hand
        x01 = torch.cat([net.stem(X), net.l1(torch.relu(net.bn1(net.stem(X))))], 1)
        x012 = torch.cat([x01, net.l2(torch.relu(net.bn2(x01)))], 1)
        by_hand = sum((torch.relu(bn(x))[:, 8:14] != 0).sum(dim=(0, 2, 3))
                      for bn, x in ((net.bn2, x01), (net.bn3, x012)))
    assert torch.equal(stats.counts["l1"], by_hand) and int(by_hand.sum()) > 0
    with torch.no_grad():
        before = gm(X)
    groups, _ = remove_units(gm, _units(gm, {"stem": [1], "l1": [0]}))
    with torch.no_grad():
        torch.testing.assert_close(gm(X), before, rtol=0, atol=1e-5)
    assert get_tensor(gm, "bn2_running_var").shape == (12,)
    assert get_tensor(gm, "bn3_weight").shape == (18,)
    l2 = next(g for g in groups if g.name == "l2")
    assert l2.offsets == (12,) and {s.offset for s in l2.carried} == {12}  # were 14


def test_dead_channels_of_a_preactivation_residual_stream_go_without_changing_the_output():
    net = PreActResidual().eval()
    _dead(net.stem, 2)
    with torch.no_grad():  # the block adds nothing to channel 2: the stream stays -3
        net.conv2.weight[2], net.conv2.bias[2] = 0, 0
    gm = graph_of(net, X[:2])
    with torch.no_grad():
        before = gm(X)
    remove_units(gm, _units(gm, {"stem": [2]}))
    with torch.no_grad():
        torch.testing.assert_close(gm(X), before, rtol=0, atol=1e-5)
    assert get_tensor(gm, "bn1_weight").shape == (5,) and get_tensor(gm, "bn3_bias").shape == (5,)


@pytest.mark.parametrize("net", [PreActDense, PreActResidual])
def test_lsq_makes_up_for_live_preactivation_units_and_the_file_matches(net):
    removed = {"PreActDense": {"stem": [0], "l1": [2], "l2": [1]},
               "PreActResidual": {"stem": [0, 4], "conv1": [1, 3]}}[net.__name__]
    errors = {}
    for mode in (Compensation.NONE, Compensation.LSQ):
        gm = graph_of(net().eval(), X[:2])
        with torch.no_grad():
            before = gm(X)
        remove_units(gm, _units(gm, removed), mode, x=X)
        with torch.no_grad():
            errors[mode] = float(((gm(X) - before) ** 2).mean())
    assert errors[Compensation.LSQ] < 0.5 * errors[Compensation.NONE], errors
    verify(to_onnx(gm, X[:2]), gm, X, tolerance=1e-5)


def test_merging_through_an_unfolded_batchnorm_is_refused_with_the_reason():
    gm = graph_of(PreActDense().eval(), X[:2])
    with pytest.raises(UsageError, match="read through .*BatchNorm"):
        plan(Options(0.3, compensate="merge"), model_facts(gm, trace(gm)), DataFacts(False),
             ThisMachine())
