"""The residual stream (`--prune-stream`): traced through LayerNorms and the constants added to
it, made invariant (LayerNorms folded and turned into RMSNorms), rotated to its principal
directions, and cut there."""

from __future__ import annotations

import pytest
import torch

import compressor
from compressor.errors import OptionError
from compressor.graph.trace import trace
from compressor.prune import rotate
from compressor.prune.shrink import shrink
from models.transformer import FeedForward, ViT
from tests.helpers import graph_of
from tests.nets import ClassToken

LAYER_NORM = torch.ops.aten.layer_norm.default


def _vit() -> ViT:
    torch.manual_seed(0)
    return ViT(FeedForward, 32, width=16, depth=2, heads=2).eval()


def _images(n: int = 200) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def _stream(found):
    [stream] = [g for g in found.groups if g.stream]
    return stream


def test_the_stream_is_one_group_through_every_norm_and_constant_it_meets():
    gm = graph_of(_vit(), _images(2))
    assert not any(g.stream for g in trace(gm).groups)
    stream = _stream(trace(gm, stream=True))
    assert [s.param for s in stream.weights] == [
        "patch_weight", "blocks_0_attn_proj_weight", "blocks_0_ffn_fc2_weight",
        "blocks_1_attn_proj_weight", "blocks_1_ffn_fc2_weight"]
    assert stream.consumer_nodes == ("linear", "linear_2", "linear_4", "linear_6", "linear_8")
    carried = {s.param for s in stream.carried}
    assert "position" in carried and "norm_weight" in carried and "norm_bias" in carried
    norms = [n.name for n in gm.graph.nodes if n.target is LAYER_NORM]
    assert sorted(name for name, _, _ in stream.reshapes) == sorted(norms) and len(norms) == 5
    assert stream.size == 16 and not stream.exact_constants


def test_a_stream_read_without_a_norm_is_not_rotated_and_says_why():
    net = ClassToken()  # the head reads the class token straight from the stream
    gm = graph_of(net, torch.randn(2, 6, 12))
    stream = _stream(trace(gm, stream=True))
    head = next(n for n in gm.graph.nodes if len(n.args) > 1 and
                getattr(n.args[1], "target", None) == "head_weight")
    assert rotate.why_not(gm, stream) == f"{head.name} reads it without a LayerNorm or RMSNorm"


class _WrittenThrough(torch.nn.Module):
    """Tokens [N, 6, 12] embedded by a Linear 12-16, then `op`, a LayerNorm, mean over tokens,
    Linear 16-4 (MambaOut's head: a GELU between the layer and the norm; MViTv2: a max pool
    over tokens on the shortcut; Gemma: its embeddings times a number)."""

    def __init__(self, op: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.op = op
        self.embed, self.norm = torch.nn.Linear(12, 16), torch.nn.LayerNorm(16)
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        if self.op == "gelu":
            h = torch.nn.functional.gelu(h)
        elif self.op in ("max_pool1d", "avg_pool1d"):
            h = getattr(torch.nn.functional, self.op)(h.transpose(1, 2), 2).transpose(1, 2)
        elif self.op == "add":
            h = h + 1.0
        elif self.op == "scale":
            h = h * 8.0 ** 0.5
        return self.head(self.norm(h).mean(1))


@pytest.mark.parametrize("op", ["gelu", "max_pool1d", "add"])
def test_a_stream_written_through_what_centring_changes_is_not_made_invariant(op):
    gm = graph_of(_WrittenThrough(op).eval(), torch.randn(2, 6, 12))
    reason = rotate.why_not(gm, _stream(trace(gm, stream=True)))
    assert reason == f"what its layers write reaches layer_norm through {op}"


@pytest.mark.parametrize("op", ["avg_pool1d", "scale"])
def test_a_stream_averaged_or_scaled_on_its_way_is_made_invariant(op):
    net, x = _WrittenThrough(op).eval(), torch.randn(20, 6, 12)
    gm = graph_of(net, x[:2])
    stream = _stream(trace(gm, stream=True))
    assert rotate.why_not(gm, stream) is None
    rotate.make_invariant(gm, stream)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), net(x), rtol=1e-5, atol=1e-5)


def test_made_invariant_and_rotated_the_model_computes_the_same():
    x = _images()
    net = _vit()
    gm = graph_of(net, x[:2])
    rotate.make_invariant(gm, _stream(trace(gm, stream=True)))
    assert not any(n.target is LAYER_NORM for n in gm.graph.nodes)
    assert sum(n.target is rotate.RMS_NORM for n in gm.graph.nodes) == 5
    with torch.no_grad():
        expected = net(x)
        torch.testing.assert_close(gm(x), expected, rtol=1e-4, atol=1e-4)
        stream = _stream(trace(gm, x[:2], stream=True))
        values = rotate.rotate(gm, stream, x)
        torch.testing.assert_close(gm(x), expected, rtol=1e-4, atol=1e-4)
    assert torch.all(values[:-1] >= values[1:])  # most used direction first


def test_a_model_written_with_rmsnorms_is_rotated_as_it_is():
    """RMSNorms are invariant already: their scales are folded, nothing is centered (that
    would change what an RMSNorm computes), and the rotation keeps the function."""
    x = _images()
    net = _vit()
    torch.manual_seed(3)
    for block in net.blocks:
        block.norm1, block.norm2 = torch.nn.RMSNorm(16), torch.nn.RMSNorm(16)
    net.norm = torch.nn.RMSNorm(16)
    with torch.no_grad():
        for norm in [net.norm, *(n for b in net.blocks for n in (b.norm1, b.norm2))]:
            norm.weight.uniform_(0.5, 1.5)
        expected = net(x)
    gm = graph_of(net, x[:2])
    stream = _stream(trace(gm, stream=True))
    assert rotate.why_not(gm, stream) is None
    rotate.make_invariant(gm, stream)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), expected, rtol=1e-4, atol=1e-4)
        rotate.rotate(gm, _stream(trace(gm, x[:2], stream=True)), x)
        torch.testing.assert_close(gm(x), expected, rtol=1e-4, atol=1e-4)


def test_directions_the_stream_never_uses_are_removed_exactly():
    """Writers that write only into a 12-dimensional subspace of the 16 features: rotated,
    the 4 directions out of it have eigenvalue 0, and removing them changes nothing (the
    RMSNorms' weights make up for averaging over fewer features)."""
    x = _images()
    net = _vit()
    basis = torch.linalg.qr(torch.randn(16, 12, generator=torch.Generator().manual_seed(2)))[0]
    onto = basis @ basis.T
    with torch.no_grad():
        for p in [net.patch.weight, net.patch.bias, net.position] + \
                [layer.weight for b in net.blocks for layer in (b.attn.proj, b.ffn.fc2)] + \
                [layer.bias for b in net.blocks for layer in (b.attn.proj, b.ffn.fc2)]:
            axis = 0 if p.ndim != 3 else 2
            p.copy_((onto @ p.movedim(axis, 0).reshape(16, -1)).reshape(
                p.movedim(axis, 0).shape).movedim(0, axis))
        expected = net(x)
    gm = graph_of(net, x[:2])
    rotate.make_invariant(gm, _stream(trace(gm, stream=True)))
    stream = _stream(trace(gm, x[:2], stream=True))
    values = rotate.rotate(gm, stream, x)
    # zero up to the rounding of float32 products (eigenvalues of unit rows sum to 1)
    assert float(values[11]) > 1e-3 and float(values[12:].max()) < 1e-6
    shrink(gm, (stream,), {stream.name: torch.arange(12, 16)})
    with torch.no_grad():
        torch.testing.assert_close(gm(x), expected, rtol=1e-4, atol=1e-4)
    assert gm.get_parameter("patch_weight").shape[0] == 12


def test_compress_cuts_the_stream_by_its_share_and_the_export_verifies():
    x = _images(300)
    net = _vit()
    with torch.no_grad():
        y = net(x).argmax(1)
    result = compressor.compress(net, 0.5, of="flops", data=(x, y), latency=False, epochs=0,
                                 prune_stream=0.25)
    report = result.report
    widths = {layer.name: (layer.in_after, layer.out_after) for layer in report.layers}
    assert widths["patch"][1] == 12 and widths["head"][0] == 12
    assert report.parity.max_abs_diff <= 1e-4 and 0.5 <= report.reduction < 0.6  # 2 heads
    notes = {layer.name: layer.note for layer in report.layers}
    assert notes["blocks.0.attn.proj"] == "pruned with patch (residual stream)"


class _ReadWithoutANorm(torch.nn.Module):
    """Tokens [N, 6, 12]: Linear 12-16, one pre-LayerNorm attention of 2 heads with bias-free
    q, k, v and output projections (as Llama's), the first token's features straight into
    Linear 16-4: the stream is cut in its own features, the output projection among them."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.norm = torch.nn.Linear(12, 16), torch.nn.LayerNorm(16)
        self.q, self.k, self.v, self.o = (torch.nn.Linear(16, 16, bias=False) for _ in range(4))
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        h = self.norm(x)
        q, k, v = (f(h).unflatten(-1, (2, 8)).transpose(1, 2) for f in (self.q, self.k, self.v))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.o(y.transpose(1, 2).flatten(2))
        return self.head(x[:, 0])


def test_a_stream_cut_in_its_features_cuts_the_bias_its_output_projection_was_given():
    x = torch.randn(300, 6, 12, generator=torch.Generator().manual_seed(1))
    result = compressor.compress(_ReadWithoutANorm().eval(), 0.5, of="flops", data=x,
                                 latency=False, prune_stream=0.25)
    widths = {layer.name: (layer.in_after, layer.out_after) for layer in result.report.layers}
    assert widths["o"][1] == 12 and widths["head"][0] == 12
    assert result.report.parity.max_abs_diff <= 1e-4


def test_the_stream_needs_data_and_a_model_that_has_one():
    with pytest.raises(OptionError, match="needs calibration data"):
        compressor.compress(_vit(), 0.5, prune_stream=0.25, latency=False)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.randn(100, 8)
    with pytest.raises(OptionError, match="no residual stream"):
        compressor.compress(net, 0.3, data=(x, net(x).argmax(1)), prune_stream=0.25,
                            latency=False, epochs=0)
