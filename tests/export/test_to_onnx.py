from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic

from compressor.errors import ExportError
from compressor.export.to_onnx import to_onnx
from compressor.export.verify import run_onnx, verify
from compressor.graph import count
from compressor.graph.capture import get_tensor, set_tensor
from compressor.graph.trace import trace
from compressor.measure.onnx_file import flops_per_sample
from compressor.prune.shrink import shrink
from compressor.runtime import session
from tests.helpers import graph_of
from tests.nets import ImageNet, tiny, torch_encoder


@pytest.mark.parametrize("net, shape", [(tiny(), (20,)), (ImageNet(), (1, 28, 28))])
def test_onnx_matches_pytorch_at_any_batch_size(net, shape):
    gm = graph_of(net, torch.randn(2, *shape))
    model = to_onnx(gm, torch.randn(2, *shape))
    sess = session(model)
    for batch in (1, 7, 64):
        x = torch.randn(batch, *shape)
        torch.testing.assert_close(run_onnx(sess, x), gm(x).detach(), rtol=1e-5, atol=1e-5)


def test_onnx_is_one_clean_file_with_readable_names():
    gm = graph_of(tiny(), torch.randn(2, 20))
    proto = onnx.load_from_string(to_onnx(gm, torch.randn(2, 20)))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert {i.name for i in proto.graph.initializer} >= {"0.weight", "0.bias", "6.weight"}
    assert all(not n.metadata_props and not n.doc_string for n in proto.graph.node)
    assert proto.opset_import[0].version >= 17


def test_verify_fails_loudly_when_onnx_and_pytorch_disagree():
    gm = graph_of(tiny(), torch.randn(2, 20))
    model = to_onnx(gm, torch.randn(2, 20))
    x = torch.randn(16, 20)
    assert verify(model, gm, x, tolerance=1e-4)[0] <= 1e-4
    set_tensor(gm, "p_6_bias", get_tensor(gm, "p_6_bias") + 1.0)
    with pytest.raises(ExportError, match="differs from the pruned PyTorch model"):
        verify(model, gm, x, tolerance=1e-4)


def test_onnxruntime_can_quantize_the_export_of_a_shrunk_model(tmp_path):
    x = torch.randn(64, 20)
    gm = graph_of(tiny(), x[:2])
    groups = trace(gm).groups
    shrink(gm, groups, {g.name: torch.arange(3) for g in groups})  # weights no longer square-ish
    (tmp_path / "m.onnx").write_bytes(to_onnx(gm, x[:2]))
    quantize_dynamic(tmp_path / "m.onnx", tmp_path / "q.onnx", weight_type=QuantType.QInt8)
    quantized = (tmp_path / "q.onnx").read_bytes()
    assert {n.op_type for n in onnx.load_from_string(quantized).graph.node} >= {"MatMulInteger"}
    torch.testing.assert_close(run_onnx(session(quantized), x), gm(x).detach(), atol=0.05, rtol=0.05)


def test_the_operator_registry_is_built_once_and_exports_stay_identical():
    from torch.onnx._internal.exporter._registration import ONNXRegistry

    from compressor.export import to_onnx as module

    original = ONNXRegistry.__dict__["from_torchlib"].__func__
    x = torch.randn(4, 20)
    first = to_onnx(graph_of(tiny(), x[:2]), x[:2])
    built = dict(module._REGISTRIES)  # one per opset exported at in this process
    assert to_onnx(graph_of(tiny(), x[:2]), x[:2]) == first
    assert module._REGISTRIES == built and len(built) <= 2
    assert ONNXRegistry.__dict__["from_torchlib"].__func__ is original  # restored after use


def test_verify_allows_rounding_in_proportion_to_large_outputs():
    gm = graph_of(tiny(), torch.randn(2, 20))
    model = to_onnx(gm, torch.randn(2, 20))
    x = torch.randn(16, 20) * 1e5  # outputs near 1e4 and more: float32 rounding is ~1e-3
    reference = gm(x).detach()
    assert float(reference.abs().max()) > 1e3
    diff, largest, rounding = verify(model, gm, x, tolerance=1e-4)
    assert diff <= 1e-4 * largest and largest == float(reference.abs().max())
    assert rounding is None  # within the tolerance: float64 is not consulted
    set_tensor(gm, "p_6_bias", get_tensor(gm, "p_6_bias") + 1e-2 * float(reference.abs().max()))
    with pytest.raises(ExportError, match="differs from the pruned PyTorch model"):
        verify(model, gm, x, tolerance=1e-4)


class Cancelling(torch.nn.Module):
    """Two large, nearly equal products subtracted: float32 rounding decides most of the
    result's last digits, in any runtime."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a, self.b = torch.nn.Linear(256, 10), torch.nn.Linear(256, 10)
        big = torch.randn(10, 256, generator=g) * 1e3
        with torch.no_grad():
            self.a.weight.copy_(big + torch.randn(10, 256, generator=g) * 1e-2)
            self.b.weight.copy_(big)
            self.a.bias.copy_(torch.randn(10, generator=g))
            self.b.bias.zero_()

    def forward(self, x):
        return self.a(x) - self.b(x)


def test_verify_accepts_a_model_whose_own_float32_rounding_exceeds_the_tolerance():
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    net = Cancelling()
    exact = copy.deepcopy(net).double()(x.double()).detach()
    gm = graph_of(net, x[:2])
    model = to_onnx(gm, x[:2])
    assert float((gm(x).detach().double() - exact).abs().max()) > 1e-3  # PyTorch's own miss
    diff, largest, rounding = verify(model, gm, x, tolerance=1e-4)
    assert diff > 1e-4 * max(1.0, largest)  # above the tolerance, accepted as rounding
    assert rounding == pytest.approx(float((gm(x).detach().double() - exact).abs().max()))
    set_tensor(gm, "a_bias", get_tensor(gm, "a_bias") + 0.5)  # now a wrong export
    with pytest.raises(ExportError, match="against float64, PyTorch float32 is .* off"):
        verify(model, gm, x, tolerance=1e-4)


def _ops_as_run(net: torch.nn.Module, x: torch.Tensor, tmp_path) -> set[str]:
    """The ops onnxruntime runs `net`'s export as (after its graph optimizations), once its
    outputs are checked against `net`'s."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(to_onnx(graph_of(net, x[:2]), x[:2]), options,
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, net(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    return {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}


def test_an_rmsnorm_is_written_as_onnxruntime_fuses_it(tmp_path):
    """torch's own export of rms_norm (a reciprocal and two products) stays several kernels in
    onnxruntime; written as x / sqrt(mean(x²) + eps) · w it becomes one
    SimplifiedLayerNormalization, with the same outputs."""

    class Normed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm, self.out = torch.nn.RMSNorm(16, eps=1e-5), torch.nn.Linear(16, 4)

        def forward(self, x):
            return self.out(self.norm(x))

    net = Normed().eval()
    with torch.no_grad():
        net.norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(8, 6, 16)
    ops = _ops_as_run(net, x, tmp_path)
    assert "SimplifiedLayerNormalization" in ops and "Reciprocal" not in ops
    net.norm.eps = 1e-12  # BERT's and ViT's: within what the exporter's optimizer calls zero
    x[:, 0] = 0.0  # a token of zeros (HF DeiT's class token and position start at zero)
    _ops_as_run(net, x, tmp_path)  # not 0 / 0


def test_a_pre_norm_transformers_layernorms_run_as_rmsnorms(tmp_path):
    """The LayerNorms over a pre-norm stream are written as RMSNorms (their scales and shifts
    in the layers that read them, every write into the stream centred), which onnxruntime
    runs as one SimplifiedLayerNormalization each, with the same outputs; the working graph
    itself keeps its LayerNorms and weights."""
    from models.transformer import FeedForward, ViT

    torch.manual_seed(0)
    net = ViT(FeedForward, 32, width=16, depth=2, heads=2).eval()
    with torch.no_grad():  # norms that scale and shift, as trained ones do
        for m in net.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    x = torch.rand(8, 1, 28, 28)
    ops = _ops_as_run(net, x, tmp_path)
    assert "SimplifiedLayerNormalization" in ops and "LayerNormalization" not in ops
    gm = graph_of(net, x[:2])
    before = {k: v.clone() for k, v in gm.state_dict().items()}
    to_onnx(gm, x[:2])
    assert sum(n.target is torch.ops.aten.layer_norm.default for n in gm.graph.nodes) == 5
    assert all(torch.equal(v, before[k]) for k, v in gm.state_dict().items())


def test_a_post_norm_transformer_keeps_its_layernorms():
    """A post-norm block adds a norm's output back into the stream: its mean is not zero,
    and the LayerNorms stay."""
    x = torch.randn(2, 6, 12)
    written = onnx.load_from_string(to_onnx(graph_of(torch_encoder().eval(), x), x))
    assert [n.op_type for n in written.graph.node].count("LayerNormalization") == 2


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_a_gelu_is_written_as_onnxruntime_fuses_it(tmp_path, approximate):
    """The exporter's GELU (its products in an order onnxruntime's fusions do not match) is
    written so that onnxruntime runs it as one kernel (Gelu, FastGelu, or either with the
    Linear's bias taken in), with the same outputs."""

    class Mlp(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up, self.down = torch.nn.Linear(16, 32), torch.nn.Linear(32, 4)

        def forward(self, x):
            return self.down(torch.nn.functional.gelu(self.up(x), approximate=approximate))

    net = Mlp().eval()
    x = torch.randn(8, 6, 16)
    ops = _ops_as_run(net, x, tmp_path)
    assert any(op.endswith("Gelu") for op in ops) and not ops & {"Erf", "Tanh", "Pow"}


class _Attention(torch.nn.Module):
    """timm's form: one qkv Linear split into heads, scaled_dot_product_attention, proj."""

    def __init__(self, mask: str) -> None:
        super().__init__()
        self.qkv, self.proj, self.mask = torch.nn.Linear(16, 48), torch.nn.Linear(16, 16), mask

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, 4, 4).permute(2, 0, 3, 1, 4)
        options = {}
        if self.mask == "bool":
            options["attn_mask"] = torch.ones(t, t, dtype=torch.bool).tril()
        elif self.mask == "float":
            options["attn_mask"] = torch.arange(t * t, dtype=torch.float32).reshape(t, t) / 50
        elif self.mask == "scale":
            options["scale"] = 0.3
        elif self.mask == "causal":
            options["is_causal"] = True
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, **options)
        return self.proj(y.transpose(1, 2).reshape(b, t, 16))


class _SeparateAttention(torch.nn.Module):
    """Hugging Face's form: q, k and v Linears, each viewed as heads and transposed; with
    `groups`, grouped-query attention (fewer k/v heads, each read by several q heads)."""

    def __init__(self, kv_heads: int = 4) -> None:
        super().__init__()
        self.kv_heads = kv_heads
        self.q, self.o = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)
        self.k, self.v = torch.nn.Linear(16, 4 * kv_heads), torch.nn.Linear(16, 4 * kv_heads)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, 4, 4).transpose(1, 2)
        k, v = (f(x).view(b, t, self.kv_heads, 4).transpose(1, 2) for f in (self.k, self.v))
        y = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.kv_heads < 4)
        return self.o(y.transpose(1, 2).reshape(b, t, 16))


@pytest.mark.parametrize("net", [*(_Attention(m) for m in
                                   ["none", "bool", "float", "scale", "causal"]),
                                 _SeparateAttention(), _SeparateAttention(kv_heads=2)],
                         ids=["none", "bool", "float", "scale", "causal", "separate", "grouped"])
def test_attention_is_one_op_over_the_linears_outputs(tmp_path, net):
    """scaled_dot_product_attention is written as one Attention op that reads q, k and v as
    the Linears write them, [batch, tokens, heads x size]: onnxruntime runs no transpose into
    heads and back, with the same outputs at another batch size than the export's. The FLOP
    count of the file counts its products as the working graph's count does."""
    net, x = net.eval(), torch.randn(8, 6, 16)
    ops = _ops_as_run(net, x, tmp_path)
    assert "Attention" in ops and not ops & {"Transpose", "Softmax", "Shape"}
    gm = graph_of(net, x[:2])
    assert flops_per_sample(onnx.load_from_string(to_onnx(gm, x[:2]))) == \
        (count.flops(gm, trace(gm)), ())


@pytest.mark.parametrize("mask", ["none", "bool", "float", "scale", "causal"])
def test_attention_over_many_keys_is_written_as_onnxruntime_fuses_it(tmp_path, mask,
                                                                      monkeypatch):
    """Over more keys than `ONE_OP_KEYS`, attention is written as softmax(q·kᵀ·scale)·v at
    opset 18: onnxruntime folds the key transpose and the scale into one FusedMatMul and
    computes no shapes at run time, with the same outputs at another batch size."""
    from compressor.export import fusable

    monkeypatch.setattr(fusable, "ONE_OP_KEYS", 4)  # the test's 6 tokens count as many
    net, x = _Attention(mask).eval(), torch.randn(8, 6, 16)
    ops = _ops_as_run(net, x, tmp_path)
    assert "FusedMatMul" in ops and not ops & {"Attention", "Shape", "Concat"}
    proto = onnx.load_from_string(to_onnx(graph_of(net, x[:2]), x[:2]))
    assert proto.opset_import[0].version == 18


class _MultiQuery(torch.nn.Module):
    """timm's MobileNetV4 form: one k and one v head, [batch, 1, tokens, size], broadcast by
    scaled_dot_product_attention to every q head."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.kv, self.o = (torch.nn.Linear(16, 16), torch.nn.Linear(16, 8),
                                   torch.nn.Linear(16, 16))

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, 4, 4).transpose(1, 2)
        k, v = self.kv(x).unsqueeze(1).split(4, dim=-1)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, t, 16))


class _Windowed(torch.nn.Module):
    """timm's NesT and Twins form: q, k, v as [batch, heads, windows, tokens, size]."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.o = torch.nn.Linear(16, 48), torch.nn.Linear(16, 16)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, 2, t // 2, 3, 4, 4).permute(3, 0, 4, 1, 2, 5).unbind(0)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.o(y.permute(0, 2, 3, 1, 4).reshape(b, t, 16))


@pytest.mark.parametrize("net", [_MultiQuery(), _Windowed()], ids=["multi-query", "windowed"])
def test_attention_the_exporters_op_refuses_is_written_in_the_softmax_form(tmp_path, net):
    """One k/v head for every q head, or q, k and v over windows (5-D), which the exporter's
    Attention refuses, are written as softmax(q·kᵀ·scale)·v even over few keys, with the same
    outputs at another batch size and the same FLOPs in the file as in the working graph."""
    net, x = net.eval(), torch.randn(8, 6, 16)
    ops = _ops_as_run(net, x, tmp_path)
    assert "Attention" not in ops and "Softmax" in ops
    gm = graph_of(net, x[:2])
    assert flops_per_sample(onnx.load_from_string(to_onnx(gm, x[:2]))) == \
        (count.flops(gm, trace(gm)), ())


def test_an_export_torch_onnx_cannot_write_names_its_cause_and_node(monkeypatch):
    """torch.onnx's own first line says only which of its steps failed: the error names the
    innermost cause and the node (here multi-query attention left to the exporter)."""
    from compressor.export import fusable

    monkeypatch.setattr(fusable, "_not_one_op", lambda *nodes: False)
    net, x = _MultiQuery().eval(), torch.randn(8, 6, 16)
    with pytest.raises(ExportError) as error:
        to_onnx(graph_of(net, x[:2]), x[:2])
    message = str(error.value)
    assert "AssertionError" in message and "writing scaled_dot_product_attention" in message
    assert "step 3/3" not in message and "\x1b" not in message


def test_a_linear_over_tokens_adds_its_bias_in_its_gemm(tmp_path):
    """A Linear over [batch, tokens, features] is written over the rows flattened: one Gemm
    that adds the bias (onnxruntime leaves a MatMul and an Add wherever the batch size is
    free), with the same outputs at another batch size than the export's."""

    class Mlp(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up, self.down = torch.nn.Linear(16, 32), torch.nn.Linear(32, 4)

        def forward(self, x):
            return self.down(torch.relu(self.up(x)))

    net, x = Mlp().eval(), torch.randn(8, 6, 16)
    ops = _ops_as_run(net, x, tmp_path)
    assert "Gemm" in ops and not ops & {"MatMul", "Add"}
    proto = onnx.load_from_string(to_onnx(graph_of(net, x[:2]), x[:2]))  # names kept
    assert {i.name for i in proto.graph.initializer} >= {"up.weight", "up.bias", "down.weight"}


def test_a_linear_whose_batch_axis_is_not_first_is_exported_as_it_is(tmp_path):
    """[tokens, batch, features] (nn.MultiheadAttention's default layout): flattening the rows
    needs the sizes after the first to be fixed; here the batch is one of them, so the Linear
    stays as the exporter writes it and still runs at any batch size."""

    class TokensFirst(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = torch.nn.Linear(16, 8)

        def forward(self, x):
            return self.up(x.transpose(0, 1)).transpose(0, 1)

    ops = _ops_as_run(TokensFirst().eval(), torch.randn(8, 6, 16), tmp_path)
    assert "Gemm" not in ops


def _nodes_as_run(net: torch.nn.Module, x: torch.Tensor, tmp_path) -> int:
    _ops_as_run(net, x, tmp_path)
    return len(onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
