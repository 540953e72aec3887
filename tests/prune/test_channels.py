"""Conv channels as units: dead channels go without a trace, constants fold where that is
exact, lsq refits conv and Linear consumers, merging is exact for BN-scaled duplicates."""

from __future__ import annotations

import torch
from torch import nn

from compressor.export.to_onnx import to_onnx
from compressor.export.verify import verify
from compressor.graph.trace import trace
from compressor.prune.calibrate import count_activations
from compressor.prune.config import Compensation
from tests.helpers import graph_of, remove_units
from tests.nets import Depthwise, SmallCNN, small_resnet

X = torch.rand(64, 1, 12, 12, generator=torch.Generator().manual_seed(3))
NONE = torch.tensor([], dtype=torch.int64)


def _silence(conv: nn.Conv2d, bn: nn.BatchNorm2d, channel: int, beta: float) -> None:
    """Channel `channel` of conv -> BN outputs the constant `beta` (weights zero, mean 0)."""
    with torch.no_grad():
        conv.weight[channel] = 0
        if conv.bias is not None:
            conv.bias[channel] = 0
        bn.running_mean[channel] = 0
        bn.bias[channel] = beta


def _pruned_outputs(net: nn.Module, removed: dict[str, list[int]],
                    mode: Compensation = Compensation.NONE):
    gm = graph_of(net, X[:2])
    with torch.no_grad():
        before = gm(X)
    names = [g.name for g in trace(gm).groups]
    units = {n: torch.tensor(removed.get(n, []), dtype=torch.int64) for n in names}
    remove_units(gm, units, mode, x=X if mode is Compensation.LSQ else None)
    with torch.no_grad():
        return before, gm(X), gm


def test_channels_that_never_fire_are_found_and_removed_without_changing_any_output():
    net = SmallCNN(padding=1)
    _silence(net.features[0], net.features[1], 2, -5.0)
    _silence(net.features[4], net.features[5], 5, -5.0)
    gm = graph_of(net, X[:2])
    groups = trace(gm).groups
    stats = count_activations(gm, groups, X)
    assert 2 in (stats.counts["features.0"] == 0).nonzero().flatten().tolist()
    assert 5 in (stats.counts["features.4"] == 0).nonzero().flatten().tolist()
    assert int(stats.counts["features.0"][0]) > 0
    assert stats.positions["features.0"] == 144  # samples x positions are counted
    before, after, pruned = _pruned_outputs(net, {"features.0": [2], "features.4": [5]})
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    assert pruned.features_4_weight.shape == (7, 5, 3, 3)
    assert pruned.head_1_weight.shape == (16, 7 * 9)  # a channel's 3 x 3 columns went with it


def test_a_residual_stream_channel_is_removed_from_every_producer_and_consumer():
    net = small_resnet()
    _silence(net[0], net[1], 3, -5.0)  # stem
    _silence(net[3].conv2, net[3].bn2, 3, -5.0)  # the identity block adds -5 + 0 -> relu -> 0
    before, after, pruned = _pruned_outputs(net, {"0": [3]})
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    shapes = {name: tuple(p.shape) for name, p in pruned.named_parameters()}
    assert shapes["p_0_weight"] == (7, 1, 3, 3) and shapes["p_3_conv2_weight"] == (7, 8, 3, 3)
    assert shapes["p_3_conv1_weight"] == (8, 7, 3, 3)
    assert shapes["p_4_shortcut_0_weight"] == (12, 7, 1, 1)


def test_a_constant_channel_folds_exactly_into_a_linear_after_flatten():
    net = SmallCNN(padding=1)
    _silence(net.features[4], net.features[5], 1, 0.7)  # relu(0.7) everywhere
    before, after, _ = _pruned_outputs(net, {"features.4": [1]})
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_a_constant_channel_folds_into_a_conv_only_without_zero_padding():
    for padding, exact in ((0, True), (1, False)):
        net = SmallCNN(padding=padding)
        _silence(net.features[0], net.features[1], 4, 0.7)
        before, after, _ = _pruned_outputs(net, {"features.0": [4]})
        error = float((after - before).abs().max())
        # with padding the borders see zeros, not the constant: left to compensation
        assert (error < 1e-5) is exact, (padding, error)


def test_lsq_refits_conv_and_flattened_linear_consumers_better_than_plain_removal():
    net = SmallCNN(padding=1)
    removed = {"features.0": [0, 3], "features.4": [1, 4, 6]}
    before, plain, _ = _pruned_outputs(net, removed)
    _, refit, _ = _pruned_outputs(net, removed, Compensation.LSQ)
    plain_error = float(((plain - before) ** 2).mean())
    refit_error = float(((refit - before) ** 2).mean())
    assert refit_error < 0.5 * plain_error, (refit_error, plain_error)


class Audio(nn.Module):
    """Whisper's front: 1-D convolutions over time (strided, padded, dilated), then a mean."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv1d(4, 12, 3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(12, 8, 3, padding=2, dilation=2)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean(-1))


def test_lsq_refits_a_1d_convolution_like_a_2d_one():
    x = torch.randn(128, 4, 20, generator=torch.Generator().manual_seed(1))
    errors = {}
    for mode in (Compensation.NONE, Compensation.LSQ):
        gm = graph_of(Audio(), x[:2])
        with torch.no_grad():
            before = gm(x)
        remove_units(gm, {"conv1": torch.tensor([0, 3, 5, 9]), "conv2": NONE}, mode, x=x)
        with torch.no_grad():
            errors[mode] = float(((gm(x) - before) ** 2).mean())
    assert errors[Compensation.LSQ] < 0.5 * errors[Compensation.NONE], errors


def test_lsq_on_a_1d_convolution_is_exact_for_channels_that_never_fire():
    net, x = Audio(), torch.randn(128, 4, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        net.conv1.bias[[2, 7]] = -100.0
    gm = graph_of(net, x[:2])
    with torch.no_grad():
        before = gm(x)
    remove_units(gm, {"conv1": torch.tensor([2, 7]), "conv2": NONE}, Compensation.LSQ, x=x)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), before, rtol=0, atol=1e-4)


def test_lsq_is_exact_for_channels_that_never_fire():
    net = SmallCNN(padding=1)
    _silence(net.features[0], net.features[1], 2, -5.0)
    before, after, _ = _pruned_outputs(net, {"features.0": [2]}, Compensation.LSQ)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-4)


def test_merging_a_bn_scaled_copy_of_a_filter_is_exact_after_folding():
    """Filter n = s * filter m, each with its own BatchNorm. After folding, the BN outputs obey
    y_n = S * y_m with S = s * (g_n / g_m) * (sigma_m / sigma_n) when beta_n = S * beta_m and
    mean_n = s * mean_m; merging n into m with that scale changes nothing (S > 0)."""
    net = SmallCNN(padding=1)
    conv, bn, m, n, s = net.features[0], net.features[1], 1, 4, 2.5
    with torch.no_grad():
        conv.weight[n], conv.bias[n] = s * conv.weight[m], s * conv.bias[m]
        bn.running_mean[n] = s * bn.running_mean[m]
        bn.running_var[m], bn.running_var[n] = 0.8, 1.7
        bn.weight[m], bn.weight[n] = 1.2, 0.6
        sigma = torch.sqrt(bn.running_var + bn.eps)
        scale = s * (bn.weight[n] / bn.weight[m]) * (sigma[m] / sigma[n])
        bn.bias[n] = scale * bn.bias[m]
    gm = graph_of(net, X[:2])
    folded = torch.cat([gm.features_0_weight.flatten(1), gm.features_0_bias[:, None]], 1)
    ratio = folded[n].norm() / folded[m].norm()
    torch.testing.assert_close(ratio, scale.detach(), rtol=1e-5, atol=0)
    assert 0 < float(scale) < s  # the inverse ratio would be larger than s here
    before, after, _ = _pruned_outputs(net, {"features.0": [n]}, Compensation.MERGE)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_removing_a_depthwise_coupled_channel_is_exact_and_exports():
    net = Depthwise()
    with torch.no_grad():  # channel 3 never fires after the depthwise filter
        net.a.weight[3], net.a.bias[3], net.dw.bias[3] = 0, -1.0, -1.0
    before, after, pruned = _pruned_outputs(net, {"a": [3]})
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    assert pruned.dw_weight.shape == (7, 1, 3, 3)
    onnx_model = to_onnx(pruned, X[:2])
    verify(onnx_model, pruned, X, tolerance=1e-5)
