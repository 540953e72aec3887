"""Token inputs [batch, tokens, features]: a transformer's feed-forward hidden units (GELU, or
the gated SwiGLU pair) are groups, every token counts as a sample, the residual stream and the
attention heads stay dense with the reason, and the pruned model exports and verifies."""

from __future__ import annotations

import pytest
import torch

import compressor
from compressor.graph.trace import trace
from compressor.prune.calibrate import count_activations
from tests.helpers import graph_of
from tests.nets import TinyTransformer, tiny_swiglu, torch_encoder

STREAM = "residual stream: LayerNorm couples all its features (not pruned)"
HEADS = "attention: its output is split into heads (not pruned)"


def _tokens(n: int = 300) -> torch.Tensor:
    return torch.randn(n, 6, 12, generator=torch.Generator().manual_seed(0))


def test_the_ffn_hidden_units_are_a_group_counted_on_the_feature_axis():
    found = trace(graph_of(TinyTransformer(), _tokens(2)))
    [ffn] = found.groups
    assert (ffn.name, ffn.size, ffn.kinds, ffn.axes) == ("block.ffn.fc1", 32, ("gelu",), (2,))
    assert [s.param for s in ffn.consumers] == ["block_ffn_fc2_weight"]
    assert dict(found.dense) == {"embed": STREAM, "block.attn.qkv": HEADS,
                                 "block.attn.proj": STREAM, "block.ffn.fc2": STREAM,
                                 "head": "output layer (never pruned)"}
    assert {layer.name: layer.positions for layer in found.layers}["block.ffn.fc1"] == 6


def test_the_two_producers_of_a_gated_ffn_are_one_group():
    found = trace(graph_of(tiny_swiglu(), _tokens(2)))
    [ffn] = found.groups
    assert [s.param for s in ffn.weights] == ["block_ffn_w1_weight", "block_ffn_w3_weight"]
    assert ffn.kinds == ("gated",) and not ffn.exact_constants
    assert [s.param for s in ffn.consumers] == ["block_ffn_w2_weight"]


def test_torch_encoder_layer_attention_on_tokens_first_is_understood():
    """nn.TransformerEncoderLayer runs attention on [tokens, batch, features]: its ReLU FFN is
    a group, the in-projection is named as attention, and every layer applies 6 times."""
    found = trace(graph_of(torch_encoder(), _tokens(2)))
    assert [(g.name, g.kinds) for g in found.groups] == [("1.linear1", ("relu",))]
    assert dict(found.dense)["1.self_attn.in_proj_weight"] == HEADS
    assert dict(found.dense)["1.self_attn.out_proj"] == STREAM
    positions = {layer.name: layer.positions for layer in found.layers}
    assert positions["1.self_attn.out_proj"] == positions["1.linear1"] == 6
    assert positions["3"] == 1


def test_every_token_is_counted_as_a_sample():
    net = TinyTransformer()
    x = _tokens()
    gm = graph_of(net, x[:2])
    [ffn] = trace(gm).groups
    stats = count_activations(gm, (ffn,), x, batch_size=128)
    with torch.no_grad():
        block = net.block
        h = torch.nn.functional.gelu(block.ffn.fc1(block.norm2(
            net.embed(x) + block.attn(block.norm1(net.embed(x))))))  # [300, 6, 32]
    assert stats.positions["block.ffn.fc1"] == 6 and stats.samples == 300
    torch.testing.assert_close(stats.magnitudes["block.ffn.fc1"], h.abs().mean((0, 1)).double(),
                               rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(stats.squares["block.ffn.fc1"], (h * h).mean((0, 1)).double(),
                               rtol=1e-5, atol=1e-7)
    rate = stats.rate("block.ffn.fc1")
    assert rate.max() <= 1 and rate.min() > 0


@pytest.mark.parametrize("make", [TinyTransformer, tiny_swiglu, torch_encoder])
@pytest.mark.parametrize("compensate", ["lsq", "none"])
def test_pruned_transformers_export_verify_and_keep_what_they_learned(make, compensate):
    net = make().eval()
    x = _tokens(600)
    with torch.no_grad():
        y = net(x).argmax(1)
        before = net.state_dict()["head.weight" if make is not torch_encoder else "3.weight"]
        before = before.clone()
    result = compressor.compress(net, 0.3, data=(x, y), latency=False, max_epochs=0,
                                 compensate=compensate)
    report = result.report
    assert 0.3 <= report.reduction <= 0.34
    assert report.parity_max_abs_diff <= 1e-4
    assert report.accuracy_after >= 0.9  # the labels are the dense model's own predictions
    ffn = next(layer for layer in report.layers if layer.note == "pruned")
    assert ffn.out_after < ffn.out_before
    with torch.no_grad():
        head = net.state_dict()["head.weight" if make is not torch_encoder else "3.weight"]
    assert torch.equal(head, before)  # the model passed in is not changed
