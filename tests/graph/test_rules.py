"""The tracer's rules for what real architectures are made of: units read without an activation
(linear bottlenecks), squeeze-excitation gates, per-channel scales, grouped convolutions,
in-place Dropout and hardsigmoid; each checked on a small module, where a plausible mistake
(a gate's rows left out, a grouped conv's groups made unequal) breaks the pruned model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import compressor
from compressor.graph.trace import trace
from tests.helpers import graph_of, remove_units


class Bottleneck(nn.Module):
    """x -> expand (ReLU) -> project (no activation) + x: the projection's units are read as
    they are made, by the next expansion and the head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.expand, self.project = nn.Conv2d(8, 24, 1), nn.Conv2d(24, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(torch.relu(self.expand(x)))
        return self.head(x.mean((2, 3)))


class Excite(nn.Module):
    """x * sigmoid(fc2(relu(fc1(pool(x))))), then a projection: fc2's rows are x's units."""

    def __init__(self, gate=nn.Sigmoid) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc1, self.fc2, self.gate = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1), gate()
        self.project, self.head = nn.Conv2d(16, 8, 1), nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        scale = self.gate(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        x = torch.relu(self.project(x * scale))
        return self.head(x.mean((2, 3)))


class Scaled(nn.Module):
    """A per-channel learned scale (ConvNeXt's layer scale) and in-place Dropout."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(6, 12), nn.Linear(12, 3)
        self.gamma = nn.Parameter(torch.rand(12) + 0.5)
        self.drop = nn.Dropout(0.2, inplace=True)

    def forward(self, x):
        return self.b(self.drop(self.gamma * torch.relu(self.a(x))))


class Grouped(nn.Module):
    """1x1 -> grouped 3x3 (4 groups) -> 1x1, as in ResNeXt."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 16, 1)
        self.b = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.c = nn.Conv2d(16, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.b(torch.relu(self.a(x))))
        return self.head(torch.relu(self.c(x)).mean((2, 3)))


class StarReLU(nn.Module):
    """MetaFormer's activation s * relu(x)² + b, with s and b learned parameters of one value
    each, between two Linear layers."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(6, 12), nn.Linear(12, 3)
        self.act = nn.Module()
        self.act.scale = nn.Parameter(torch.tensor([0.8]))
        self.act.bias = nn.Parameter(torch.tensor([0.3]))

    def forward(self, x):
        return self.b(self.act.scale * torch.relu(self.a(x)) ** 2 + self.act.bias)


class OneOpActivations(nn.Module):
    """Activations written as single elementwise ops: Persimmon's squared ReLU
    (`torch.square`), then a clamp, log1p and sin between two Linear layers."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Linear(6, 12), nn.Linear(12, 12), nn.Linear(12, 3)

    def forward(self, x):
        h = torch.square(torch.relu(self.a(x)))
        return self.c(torch.sin(torch.log1p(self.b(h).clamp(min=-0.5, max=4.0))))


def test_single_elementwise_ops_are_activations():
    found = trace(graph_of(OneOpActivations(), torch.rand(2, 6)))
    assert sorted(g.name for g in found.groups) == ["a", "b"]
    assert {k for g in found.groups for k in g.kinds} == {"square", "sin"}


class ViewedScale(nn.Module):
    """A residual block whose branch is scaled per channel by a parameter laid out to
    broadcast: timm's LayerScale2d (`gamma.view(1, -1, 1, 1)`), Hugging Face's PoolFormer
    (two unsqueezes), or a view that writes the channel count."""

    def __init__(self, layout: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 4, 1)
        self.gamma = nn.Parameter(torch.rand(8) + 0.5)
        self.layout = layout

    def forward(self, x):
        h = torch.relu(self.a(x))
        gamma = {"view": lambda g: g.view(1, -1, 1, 1),
                 "unsqueeze": lambda g: g.unsqueeze(-1).unsqueeze(-1),
                 "written": lambda g: g.view(1, 8, 1, 1)}[self.layout](self.gamma)
        return self.c(h + gamma * self.b(h)).mean((2, 3))


@pytest.mark.parametrize("layout", ["view", "unsqueeze", "written"])
def test_a_per_channel_scale_laid_out_by_views_goes_with_the_units(layout):
    found = trace(graph_of(ViewedScale(layout), _x(2)))
    (group,) = found.groups
    assert [s.param for s in group.carried] == ["gamma"]
    assert {s.param for s in group.consumers} == {"b_weight", "c_weight"}
    result = compressor.compress(ViewedScale(layout), 0.3, data=_x(), latency=False)
    assert result.report.size.reduction >= 0.3
    assert result.report.parity.max_abs_diff <= 1e-4


class MixedKernels(nn.Module):
    """MixNet's mixed depthwise convolution: a pointwise convolution's output (BatchNorm,
    SiLU) split by size among depthwise convolutions of 3, 5 and 7, concatenated, normed
    and projected back into the residual stream."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.pw, self.bn1 = nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24)
        self.dws = nn.ModuleList(nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False)
                                 for c, k in ((8, 3), (8, 5), (8, 7)))
        self.bn2 = nn.BatchNorm2d(24)
        self.pwl, self.bn3 = nn.Conv2d(24, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 4)
        for bn in (self.bn1, self.bn2, self.bn3):  # not the identity
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        h = nn.functional.silu(self.bn1(self.pw(x)))
        h = torch.cat([dw(p) for dw, p in zip(self.dws, torch.split(h, [8, 8, 8], 1))], 1)
        x = x + self.bn3(self.pwl(nn.functional.silu(self.bn2(h))))
        return self.head(x.mean((2, 3)))


def test_a_convolution_split_among_depthwise_convolutions_is_one_producer_per_piece():
    net, x = MixedKernels().eval(), _x()
    gm = graph_of(net, x[:2])
    with torch.no_grad():  # the pieces compute what the one convolution did
        torch.testing.assert_close(gm(x), net(x), rtol=1e-5, atol=1e-5)
    found = trace(gm)
    assert sorted((g.name, g.size) for g in found.groups) == [
        ("pw[0:8]", 8), ("pw[16:24]", 8), ("pw[8:16]", 8), ("stem", 16)]
    result = compressor.compress(net, 0.3, data=x, latency=False)
    assert result.report.size.reduction >= 0.3
    assert result.report.parity.max_abs_diff <= 1e-4


class MixedBlock(nn.Module):
    """MixNet's block with mixed convolutions throughout: the residual stream in two pieces
    (two stem convolutions concatenated), pointwise convolutions over pieces of their input,
    BatchNorm and SiLU over the cat, depthwise kernels over other pieces than the pointwise
    ones made (two of 12 read as three of 8), squeeze-excitation over the cat, a projection in
    two pieces (of one kernel's channels and two kernels') and the residual add of two cats
    (`inplace`: written `x.add_(...)`, as timm's ResNets write theirs)."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inplace = inplace
        self.stems = nn.ModuleList(nn.Conv2d(3, 8, 3, padding=1) for _ in range(2))
        self.pws = nn.ModuleList(nn.Conv2d(8, 12, 1, bias=False) for _ in range(2))
        self.bn1 = nn.BatchNorm2d(24)
        self.dws = nn.ModuleList(nn.Conv2d(8, 8, k, padding=k // 2, groups=8, bias=False)
                                 for k in (3, 5, 7))
        self.bn2 = nn.BatchNorm2d(24)
        self.se1, self.se2 = nn.Conv2d(24, 6, 1), nn.Conv2d(6, 24, 1)
        self.pwls = nn.ModuleList(nn.Conv2d(c, 8, 1, bias=False) for c in (8, 16))
        self.bn3 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 4)
        for bn in (self.bn1, self.bn2, self.bn3):  # not the identity
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)

    @staticmethod
    def mixed(convs, x, sizes):
        return torch.cat([c(p) for c, p in zip(convs, torch.split(x, sizes, 1))], 1)

    def forward(self, x):
        x = torch.cat([torch.relu(stem(x)) for stem in self.stems], 1)
        h = nn.functional.silu(self.bn1(self.mixed(self.pws, x, [8, 8])))
        h = nn.functional.silu(self.bn2(self.mixed(self.dws, h, [8, 8, 8])))
        h = h * torch.sigmoid(self.se2(nn.functional.silu(self.se1(h.mean((2, 3), True)))))
        h = self.bn3(self.mixed(self.pwls, h, [8, 16]))
        x = x.add_(h) if self.inplace else x + h
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("inplace", [False, True])
def test_ops_after_a_cat_of_pieces_go_piece_by_piece_to_its_gate_add_and_split(inplace):
    net, x = MixedBlock(inplace).eval(), _x()
    gm = graph_of(net, x[:2])
    with torch.no_grad():  # written piece by piece, the graph computes what the module did
        torch.testing.assert_close(gm(x), net(x), rtol=1e-5, atol=1e-5)
    assert not [n for n in gm.graph.nodes if n.target is torch.ops.aten.batch_norm.default]
    found = trace(gm)
    # the stream's two pieces, each with its projection; the first pointwise piece cut where
    # the depthwise kernels' pieces begin (8 of its 12 channels to one kernel, 4 to the next)
    assert sorted((g.name, g.size) for g in found.groups) == [
        ("pws.0[0:8]", 8), ("pws.0[8:12]", 4), ("pws.1[0:4]", 4), ("pws.1[4:12]", 8),
        ("se1", 6), ("stems.0", 8), ("stems.1", 8)]
    result = compressor.compress(net, 0.4, of="flops", data=x, latency=False)
    assert result.report.size.flop_reduction >= 0.4
    assert result.report.parity.max_abs_diff <= 1e-4


class SelectiveKernel(nn.Module):
    """SKNet's block with its input split: the residual stream cut in halves, each read by one
    path's convolution (3x3, and 3x3 dilated); the paths stacked, summed, pooled, reduced and
    weighed by a softmax over the paths of one layer's output viewed [batch, 2, channels, 1,
    1]; their weighed sum projected and added back."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.bn0 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.paths = nn.ModuleList([nn.Conv2d(8, 12, 3, padding=1),
                                    nn.Conv2d(8, 12, 3, padding=2, dilation=2)])
        self.fc_reduce, self.fc_select = nn.Conv2d(12, 4, 1), nn.Conv2d(4, 24, 1, bias=False)
        self.proj, self.bn1 = nn.Conv2d(12, 16, 1), nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 4)
        for bn in (self.bn0, self.bn1):  # not the identity
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        paths = torch.stack([torch.relu(path(p)) for path, p in
                             zip(self.paths, torch.split(x, 8, 1))], 1)
        pooled = paths.sum(1).mean((2, 3), keepdim=True)
        weights = self.fc_select(torch.relu(self.fc_reduce(pooled)))
        h = (paths * torch.softmax(weights.view(x.shape[0], 2, 12, 1, 1), 1)).sum(1)
        x = torch.relu(x + self.bn1(self.proj(h)))
        return self.head(x.mean((2, 3)))


def test_a_selective_kernel_over_a_split_stream_is_written_in_pieces_the_tracer_follows():
    net, x = SelectiveKernel().eval(), _x()
    gm = graph_of(net, x[:2])
    with torch.no_grad():
        torch.testing.assert_close(gm(x), net(x), rtol=1e-5, atol=1e-5)
    assert not [n for n in gm.graph.nodes if any(op in str(n.target) for op in
                                                 ("split", "stack", "softmax"))]
    found = trace(gm)
    # the stream's halves, each with its projection's rows; the paths with both halves of
    # the layer that weighs them; the weighing's own hidden units
    assert sorted((g.name, g.size) for g in found.groups) == [
        ("fc_reduce", 4), ("paths.0", 12), ("stem[0:8]", 8), ("stem[8:16]", 8)]
    result = compressor.compress(net, 0.4, of="flops", data=x, latency=False)
    assert result.report.size.flop_reduction >= 0.4
    assert result.report.parity.max_abs_diff <= 1e-4


class DenseLayers(nn.Module):
    """DenseNet's layers: each reads BatchNorm and ReLU over the cat of every output before it,
    which leads to no gate, add or split: nothing to write piece by piece."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bns = nn.ModuleList(nn.BatchNorm2d(c) for c in (8, 12, 16))
        self.convs = nn.ModuleList(nn.Conv2d(c, 4, 3, padding=1) for c in (8, 12))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        features = [self.stem(x)]
        for bn, conv in zip(self.bns, self.convs):
            features.append(conv(torch.relu(bn(torch.cat(features, 1)))))
        return self.head(torch.relu(self.bns[2](torch.cat(features, 1))).mean((2, 3)))


def test_ops_after_a_cat_that_no_join_needs_stay_one_op():
    gm = graph_of(DenseLayers().eval(), _x(2))
    norms = [n for n in gm.graph.nodes if n.target is torch.ops.aten.batch_norm.default]
    assert len(norms) == 3  # one BatchNorm per cat, none cut into pieces


def _x(n: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8)


class FusedGate(nn.Module):
    """A gated feed-forward whose gate and up Linears are one (Phi-3's `gate_up_proj`, timm's
    GluMlp), cut by chunk or by two slices; or a Linear whose halves do not meet in a product
    (`kept`: left one Linear)."""

    def __init__(self, cut: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.cut = cut
        self.gate_up, self.down = nn.Linear(6, 16), nn.Linear(8, 3)

    def forward(self, x):
        h = self.gate_up(x)
        gate, up = h.chunk(2, -1) if self.cut == "chunk" else (h[..., :8], h[..., 8:])
        if self.cut == "kept":
            return self.down(torch.relu(gate)) + self.down(up)
        return self.down(up * nn.functional.silu(gate))


def test_a_fused_gate_is_two_linears_whose_rows_are_one_group():
    for cut in ("chunk", "slices"):
        net, x = FusedGate(cut).eval(), torch.rand(64, 6)
        gm = graph_of(net, x[:2])
        found = trace(gm)
        (group,) = found.groups
        assert [layer.name for layer in found.layers] == ["gate_up[0:8]", "gate_up[8:16]",
                                                          "down"]
        assert group.size == 8 and len(group.weights) == 2 and "gated" in group.kinds
        torch.testing.assert_close(gm(x), net(x))
        result = compressor.compress(net, 0.3, data=x, latency=False)
        assert result.report.size.reduction >= 0.3
        assert result.report.parity.max_abs_diff <= 1e-4
    found = trace(graph_of(FusedGate("kept").eval(), torch.rand(2, 6)))
    assert [layer.name for layer in found.layers] == ["gate_up", "down"]


def test_a_projection_read_without_an_activation_is_a_group_of_its_add():
    found = trace(graph_of(Bottleneck(), _x(2)))
    stream = next(g for g in found.groups if g.name == "stem")
    assert {s.param for s in stream.weights} == {"stem_weight", "project_weight"}
    assert set(stream.kinds) == {"identity"} and not stream.relu and stream.mergeable


def test_a_gate_makes_its_rows_units_of_the_space_it_multiplies():
    for gate in (nn.Sigmoid, nn.Hardsigmoid):
        found = trace(graph_of(Excite(gate), _x(2)))
        space = next(g for g in found.groups if g.name == "conv")
        assert {s.param for s in space.weights} == {"conv_weight", "fc2_weight"}
        assert {s.param for s in space.consumers} == {"fc1_weight", "project_weight"}
        assert "gated" in space.kinds
        assert any(g.name == "fc1" for g in found.groups)  # the excitation's own units


def test_a_per_channel_scale_goes_with_the_units_and_dropout_in_place_passes():
    found = trace(graph_of(Scaled(), torch.rand(2, 6)))
    (group,) = found.groups
    assert [s.param for s in group.carried] == ["gamma"] and group.consumers[0].param == "b_weight"


def test_a_one_value_parameter_added_is_part_of_the_activation():
    found = trace(graph_of(StarReLU(), torch.rand(2, 6)))
    (group,) = found.groups
    assert group.name == "a" and group.consumers[0].param == "b_weight" and not group.carried


def test_a_grouped_convolution_keeps_equal_groups():
    gm = graph_of(Grouped(), _x(2))
    found = trace(gm)
    a = next(g for g in found.groups if g.name == "a")
    assert (a.size, a.parts) == (4, 4)  # unit j: channel j of each of the 4 groups
    x = _x()
    before = gm(x)
    remove_units(gm, {"a": torch.tensor([1]), "b": torch.tensor([]).long(),
                      "c": torch.tensor([]).long()})
    conv = next(n for n in gm.graph.nodes if n.name == "conv2d_1")
    assert conv.args[6] == 4 and gm.get_parameter("b_weight").shape == (16, 3, 3, 3)
    assert gm(x).shape == before.shape


class ResponseNorm(nn.Module):
    """ConvNeXt-V2's global response norm as timm writes it, channels first or last:
    x + β + γ · x · g / mean_c(g), g the norm of each channel over the positions."""

    def __init__(self, dim: int, last: bool) -> None:
        super().__init__()
        self.last = last
        self.weight = nn.Parameter(torch.rand(dim) + 0.5)
        self.bias = nn.Parameter(torch.rand(dim) - 0.5)

    def forward(self, x):
        spatial, channel = ((1, 2), -1) if self.last else ((2, 3), 1)
        shape = (1, 1, 1, -1) if self.last else (1, -1, 1, 1)
        g = x.norm(p=2, dim=spatial, keepdim=True)
        n = g / (g.mean(dim=channel, keepdim=True) + 1e-6)
        return x + torch.addcmul(self.bias.view(shape), self.weight.view(shape), x * n)


class WrittenOutResponseNorm(ResponseNorm):
    """The same norm as Hugging Face writes it: `γ · (x · n) + β + x`, γ and β stored in the
    broadcast shape."""

    def __init__(self, dim: int, last: bool) -> None:
        super().__init__(dim, last)
        shape = (1, 1, 1, dim) if last else (1, dim, 1, 1)
        self.weight = nn.Parameter(self.weight.detach().reshape(shape))
        self.bias = nn.Parameter(self.bias.detach().reshape(shape))

    def forward(self, x):
        spatial, channel = ((1, 2), -1) if self.last else ((2, 3), 1)
        g = torch.linalg.vector_norm(x, ord=2, dim=spatial, keepdim=True)
        n = g / (g.mean(dim=channel, keepdim=True) + 1e-6)
        return self.weight * (x * n) + self.bias + x


class ConvNeXtV2(nn.Module):
    """A ConvNeXt-V2 feed-forward block: fc1, GELU, response norm, fc2, as 1x1 convolutions
    (channels first) or Linear layers (channels last)."""

    def __init__(self, last: bool, written_out: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.last = last
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8, 32) if last else nn.Conv2d(8, 32, 1)
        self.grn = (WrittenOutResponseNorm if written_out else ResponseNorm)(32, last)
        self.fc2 = nn.Linear(32, 8) if last else nn.Conv2d(32, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        h = x.permute(0, 2, 3, 1) if self.last else x
        h = self.fc2(self.grn(nn.functional.gelu(self.fc1(h))))
        return self.head((x + (h.permute(0, 3, 1, 2) if self.last else h)).mean((2, 3)))


@pytest.mark.parametrize("last", [False, True])
@pytest.mark.parametrize("written_out", [False, True], ids=["addcmul", "mul-add"])
def test_a_response_norm_carries_its_units_and_its_mean_keeps_the_original_divisor(
        last, written_out):
    net = ConvNeXtV2(last, written_out).eval()
    with torch.no_grad():  # unit 5 outputs 0 everywhere: gelu(0) = 0, its norm 0, no β
        net.fc1.weight[5] = 0
        net.fc1.bias[5] = 0
        net.grn.bias.view(-1)[5] = 0
    gm, x = graph_of(net, _x(2)), _x()
    group = next(g for g in trace(gm).groups if g.name == "fc1")
    assert [s.param for s in group.consumers] == ["fc2_weight"]
    scale, shift = ("grn_weight", "grn_bias") if written_out else \
        ("addcmul_scale", "addcmul_bias")
    assert sorted(s.param for s in group.carried) == sorted([scale, shift])
    before = gm(x)
    remove_units(gm, {"fc1": torch.tensor([5]), "stem": torch.tensor([]).long()})
    # the mean over 32 channels, one of them 0, is the sum over the 31 left / 32
    torch.testing.assert_close(gm(x), before, rtol=1e-5, atol=1e-6)
    assert getattr(gm, scale).numel() == getattr(gm, shift).numel() == 31


def test_every_rule_prunes_and_exports_within_parity():
    cases = ((Bottleneck(), _x()), (Excite(nn.Hardsigmoid), _x()),
             (Scaled(), torch.rand(64, 6)), (Grouped(), _x()), (StarReLU(), torch.rand(64, 6)),
             (OneOpActivations(), torch.rand(64, 6)),
             (ConvNeXtV2(last=False), _x()), (ConvNeXtV2(last=True), _x()),
             (ConvNeXtV2(last=True, written_out=True), _x()))
    for net, x in cases:
        result = compressor.compress(net, 0.3, data=x, latency=False)
        assert result.report.size.reduction >= 0.3
        assert result.report.parity.max_abs_diff <= 1e-4


class FirstToken(nn.Module):
    """Tokens [N, 6, 12] -> Linear 12-16, ReLU, the first token (`x[:, 0]`, a slice of the
    batch axis whole, then a select of the tokens), cast to float, Linear 16-4."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(12, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))[:, 0].float())


def test_a_select_of_one_token_and_a_cast_pass_the_units_on():
    x = torch.randn(50, 6, 12)
    gm = graph_of(FirstToken(), x[:2])
    [group] = trace(gm).groups
    assert group.name == "fc1" and [s.param for s in group.consumers] == ["fc2_weight"]
    with torch.no_grad():
        expected = gm(x)  # less what units 3 and 7 sent, once they are removed
        removed = gm.fc2_weight[:, [3, 7]] @ torch.relu(gm.fc1_weight[[3, 7]] @ x[:, 0].T +
                                                        gm.fc1_bias[[3, 7], None])
    remove_units(gm, {"fc1": torch.tensor([3, 7])})
    with torch.no_grad():
        torch.testing.assert_close(gm(x), expected - removed.T, rtol=1e-5, atol=1e-5)


class Rolled(nn.Module):
    """Tokens on a 4 x 4 grid [N, 4, 4, 12] -> Linear 12-16, ReLU, rolled by (1, 2) over the
    grid (a shifted window), Linear 16-4, mean over the grid."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(12, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)).roll((1, 2), (1, 2))).mean((1, 2))


def test_a_roll_of_the_positions_passes_the_units_on():
    x = torch.randn(20, 4, 4, 12)
    gm = graph_of(Rolled(), x[:2])
    [group] = trace(gm).groups
    assert group.name == "fc1" and [s.param for s in group.consumers] == ["fc2_weight"]
    with torch.no_grad():
        expected = gm(x)
        gone = torch.relu(x @ gm.fc1_weight[[5]].T + gm.fc1_bias[[5]]) @ gm.fc2_weight[:, [5]].T
    remove_units(gm, {"fc1": torch.tensor([5])})
    with torch.no_grad():
        torch.testing.assert_close(gm(x), expected - gone.mean((1, 2)), rtol=1e-5, atol=1e-5)


class RepBranches(nn.Module):
    """MobileOne's depthwise blocks as trained, `depth` of them: each block's output the sum of
    a depthwise 3x3, a depthwise 1x1 and a BatchNorm of its input, every branch carrying the
    input's channels (so each sum reaches the previous one three ways)."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "kxk": nn.Conv2d(8, 8, 3, padding=1, groups=8), "scale": nn.Conv2d(8, 8, 1, groups=8),
            "identity": nn.BatchNorm2d(8)}) for _ in range(depth))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for b in self.blocks:
            x = torch.relu(b["kxk"](x) + b["scale"](x) + b["identity"](x))
        return self.head(x.mean((2, 3)))


def test_branches_that_rejoin_their_input_are_asked_for_their_producers_once(monkeypatch):
    from compressor.graph.rules import registry

    real, asked = registry.rule_for, []
    monkeypatch.setattr(registry, "rule_for", lambda node: asked.append(node) or real(node))
    gm = graph_of(RepBranches(depth=8).eval(), torch.rand(2, 3, 8, 8))
    found = trace(gm, torch.rand(1, 3, 8, 8))
    assert len(asked) < 20 * len(gm.graph.nodes)  # 3 ** 8 ways back from the last sum
    [group] = found.groups
    assert group.name == "stem" and len(group.grouped_nodes) == 16


class WaveFront(nn.Module):
    """Wav2Vec2's first feature convolution: Conv1d, a GroupNorm of one group per channel,
    GELU, then the next Conv1d."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv0 = nn.Conv1d(1, 8, 5, stride=2)
        self.norm = nn.GroupNorm(8, 8)
        self.conv1 = nn.Conv1d(8, 6, 3)
        self.head = nn.Linear(6, 3)
        with torch.no_grad():  # not the identity: its entries must go with the units
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        h = nn.functional.gelu(self.norm(self.conv0(x.unsqueeze(1))))
        return self.head(nn.functional.gelu(self.conv1(h)).mean(-1))


def test_a_groupnorm_of_a_group_per_channel_passes_its_units():
    net, x = WaveFront().eval(), torch.randn(32, 40)
    gm = graph_of(net, x[:2])
    group = next(g for g in trace(gm).groups if g.name == "conv0")
    assert sorted(s.param for s in group.carried) == ["norm_bias", "norm_weight"]
    remove_units(gm, {"conv0": torch.tensor([1, 4]), "conv1": torch.tensor([]).long()})
    norm = next(n for n in gm.graph.nodes if n.target is torch.ops.aten.group_norm.default)
    assert norm.args[1] == 6 and getattr(gm, "norm_weight").numel() == 6
    with torch.no_grad():  # each channel normalized alone: the others are unchanged
        net.conv1.weight[:, [1, 4]] = 0
        torch.testing.assert_close(gm(x), net(x), rtol=1e-5, atol=1e-6)
    result = compressor.compress(WaveFront().eval(), 0.3, data=x, latency=False)
    assert result.report.parity.max_abs_diff <= 1e-4
    assert next(r for r in result.report.layers if r.name == "conv0").out_after < 8


class KerasPadded(nn.Module):
    """Hugging Face's EfficientNet, as Keras writes it: convolutions padded by name ("same",
    "valid"), and a strided depthwise convolution after an explicit pad of the positions."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding="same")
        self.depthwise = nn.Conv2d(8, 8, 3, stride=2, groups=8, padding="valid")
        self.conv2 = nn.Conv2d(8, 6, 1, padding="same")
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = nn.functional.silu(self.conv1(x))
        h = nn.functional.silu(self.depthwise(nn.functional.pad(h, (0, 1, 0, 1))))
        return self.head(nn.functional.silu(self.conv2(h)).mean((2, 3)))


def test_convolutions_padded_by_name_and_explicit_pads_pass_units():
    net, x = KerasPadded().eval(), _x()
    groups = {g.name: g for g in trace(graph_of(net, x[:2])).groups}
    assert [s.param for s in groups["conv1"].consumers] == ["conv2_weight"]
    result = compressor.compress(net, 0.3, data=x, latency=False)
    assert result.report.parity.max_abs_diff <= 1e-4
    widths = {r.name: r.out_after for r in result.report.layers}
    assert widths["conv1"] < 8 and widths["depthwise"] == widths["conv1"]


class BiasFreeBranchEnd(nn.Module):
    """A residual branch that ends in a convolution without bias or BatchNorm (timm's CoAtNet
    MBConv): it reads one group's units (its input channels) and makes another's (the
    stream's), and the zero bias the first gives it must go with the second's units."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 16, 1)
        self.conv3 = nn.Conv2d(16, 8, 1, bias=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.stem(x)
        h = h + self.conv3(torch.relu(self.conv1(h)))
        return self.head(h.mean((2, 3)))


def test_a_bias_free_layer_between_two_groups_gets_one_bias_that_both_follow():
    net, x = BiasFreeBranchEnd().eval(), _x()
    groups = {g.name: g for g in trace(graph_of(net, x[:2])).groups}
    assert "conv3_weight_bias" in [s.param for s in groups["stem"].biases]
    result = compressor.compress(net, 0.4, data=x, latency=False)
    assert result.report.parity.max_abs_diff <= 1e-4
    widths = {r.name: r.out_after for r in result.report.layers}
    assert widths["stem"] < 8 and widths["conv1"] < 16
