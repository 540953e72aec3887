"""Token inputs [batch, tokens, features]: a transformer's feed-forward hidden units (GELU, or
the gated SwiGLU pair) are groups, every token counts as a sample, the residual stream and the
attention heads stay dense with the reason, and the pruned model exports and verifies."""

from __future__ import annotations

import pytest
import torch

import compressor
from compressor.graph.trace import trace
from compressor.prune.calibrate import count_activations
from compressor.plan.rules import CNN_SCHEDULE
from tests.helpers import graph_of
from tests.nets import ClassToken, TinyMixer, TinyTransformer, tiny_swiglu, torch_encoder

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


def test_mixer_token_mixing_units_are_counted_per_feature_and_the_tokens_stay():
    """Token mixing runs a Linear across the 6 tokens on [N, 16, 6]: its 24 hidden units are a
    group counted at 16 positions; its output units are the tokens themselves, added to the
    residual stream transposed, so they stay."""
    found = trace(graph_of(TinyMixer(), _tokens(2)))
    assert [(g.name, g.size, g.axes) for g in found.groups] == [("token1", 24, (2,)),
                                                                ("channel1", 32, (2,))]
    positions = {layer.name: layer.positions for layer in found.layers}
    assert positions["token1"] == 16 and positions["channel1"] == 6
    assert "not the output of a traced layer" in dict(found.dense)["token2"]


def test_a_class_token_concatenated_before_the_tokens_carries_the_features_on():
    found = trace(graph_of(ClassToken(), _tokens(2)))
    assert [g.name for g in found.groups] == ["block.ffn.fc1"]
    assert dict(found.dense)["embed"] == STREAM  # not "found cat": the walk goes on past it


def test_layers_concatenated_along_the_tokens_are_one_group():
    class TwoHalves(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(12, 16), torch.nn.Linear(12, 16)
            self.out = torch.nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            both = torch.cat([self.a(x[:, :3]), self.b(x[:, 3:])], dim=1)  # [N, 6, 16]
            return self.out(torch.relu(both).mean(1))

    [group] = trace(graph_of(TwoHalves(), _tokens(2))).groups
    assert [s.param for s in group.weights] == ["a_weight", "b_weight"]
    assert [s.param for s in group.consumers] == ["out_weight"]
    net = TwoHalves().eval()
    x = _tokens(400)
    with torch.no_grad():
        y = net(x).argmax(1)
    report = compressor.compress(net, 0.3, data=(x, y), latency=False, epochs=0).report
    assert report.parity.max_abs_diff <= 1e-4 and report.reduction >= 0.3


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


@pytest.mark.parametrize("make", [TinyTransformer, tiny_swiglu, torch_encoder, TinyMixer])
@pytest.mark.parametrize("compensate", ["lsq", "none"])
def test_pruned_transformers_export_verify_and_keep_what_they_learned(make, compensate):
    net = make().eval()
    x = _tokens(600)
    with torch.no_grad():
        y = net(x).argmax(1)
        before = net.state_dict()["head.weight" if make is not torch_encoder else "3.weight"]
        before = before.clone()
    result = compressor.compress(net, 0.3, data=(x, y), latency=False, epochs=0,
                                 compensate=compensate)
    report = result.report
    assert 0.3 <= report.reduction <= 0.34
    assert report.parity.max_abs_diff <= 1e-4
    assert report.accuracy.after >= 0.9  # the labels are the dense model's own predictions
    assert any(layer.out_after < layer.out_before for layer in report.layers
               if layer.note == "pruned")
    with torch.no_grad():
        head = net.state_dict()["head.weight" if make is not torch_encoder else "3.weight"]
    assert torch.equal(head, before)  # the model passed in is not changed


def test_token_models_fine_tune_on_the_one_cycle_schedule_of_cnns():
    """An epoch over tokens costs what a CNN's does: one cycle of at most 5 epochs, not the
    paper's 5 cycles of 6 (which would train the example ViT longer than it was trained)."""
    net = TinyTransformer().eval()
    x = _tokens(600)
    with torch.no_grad():
        y = net(x).argmax(1)
    report = compressor.compress(net, 0.3, data=(x, y), latency=False).report
    assert len(report.cycles) == 1 and 1 <= report.cycles[0].epochs <= CNN_SCHEDULE[1]


def test_over_tokens_removal_errors_are_in_the_stream_units():
    """The feed-forward output projection scaled by 3: what each unit adds to the stream is
    3x, so its error is 9x (as a share of the projection's output it would not move): a
    block that adds little to the stream weighs less than one that adds a lot."""
    from compressor.prune.error import removal_errors

    x = _tokens()
    model = TinyTransformer().eval()
    gm = graph_of(model, x[:2])
    [ffn] = trace(gm).groups
    before = removal_errors(gm, (ffn,), x, ridge=1e-6)[ffn.name]
    with torch.no_grad():
        model.block.ffn.fc2.weight.mul_(3)
    gm = graph_of(model, x[:2])
    [ffn] = trace(gm).groups
    after = removal_errors(gm, (ffn,), x, ridge=1e-6)[ffn.name]
    assert torch.allclose(after, 9 * before, rtol=1e-4), (after / before)[:4]
