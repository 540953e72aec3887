"""Attention heads as prunable units: the layouts they are written in, and that removing a
head is exactly what zeroing its columns of the output projection does."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor.export.to_onnx import to_onnx
from compressor.graph import count
from compressor.graph.capture import get_tensor
from compressor.graph.trace import trace
from compressor.measure.onnx_file import flops_per_sample
from compressor.prune.shrink import shrink
from tests.helpers import graph_of
from tests.nets import torch_encoder


class Attention(nn.Module):
    """Self-attention of `heads` query heads over `kv_heads` key/value heads, written as
    models write it: a fused qkv (laid out [q | k | v], or by head: each head's q, k and v
    side by side) or separate q, k, v; grouped-query k/v repeated by expand or by SDPA's
    `enable_gqa`; SDPA or softmax between two matmuls (DeBERTa's: bmm over [batch x heads, T,
    d], kᵀ scaled, the scores masked; GCViT's kᵀ contiguous; Gemma-2's scores capped by tanh);
    rotary position embeddings on q and k as Llama, Phi-3 and EVA-02 write them; Qwen3's
    norms of q and k."""

    def __init__(self, dim: int, heads: int, kv_heads: int, *, fused: bool | str,
                 explicit: bool | str = False, sdpa_gqa: bool = False, rotary: bool | str = False,
                 normed: str | None = None) -> None:
        super().__init__()
        self.h, self.kv, self.d = heads, kv_heads, dim // heads
        self.fused, self.explicit, self.sdpa_gqa = fused, explicit, sdpa_gqa
        self.rotary, self.normed = rotary, normed
        if normed:  # Qwen3's q and k norms, over each head's features (or, wrongly, its heads)
            self.q_norm, self.k_norm = (nn.RMSNorm(heads if normed == "across heads" else
                                                   self.d) for _ in "qk")
        self.register_buffer("inv_freq", 1 / 100 ** (torch.arange(0, self.d, 2) / self.d))
        if fused in ("sliced", "split by head"):  # Phi-3: q, k, v cut out of one Linear by
            self.qkv = nn.Linear(dim, dim + 2 * kv_heads * self.d)  # width; Falcon-7B's by head
        elif fused:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.q = nn.Linear(dim, dim)
            self.k = nn.Linear(dim, kv_heads * self.d)
            self.v = nn.Linear(dim, kv_heads * self.d)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        if self.fused is True:
            q, k, v = self.qkv(x).reshape(b, t, 3, self.h, self.d).permute(2, 0, 3, 1, 4).unbind(0)
        elif self.fused == "per head":  # TinyViT, LeViT: each head's q, k, v rows side by side
            q, k, v = (part.transpose(1, 2) for part in self.qkv(x).view(b, t, self.h, -1).split(
                [self.d] * 3, dim=3))
        elif self.fused == "split by head":  # Falcon-7B: [q heads | k heads | v heads] by head
            q, k, v = (part.transpose(1, 2) for part in self.qkv(x).view(
                b, t, self.h + 2 * self.kv, self.d).split([self.h, self.kv, self.kv], dim=2))
        else:
            if self.fused == "sliced":
                qkv, at = self.qkv(x), self.h * self.d
                q, k, v = (qkv[..., :at], qkv[..., at:at + self.kv * self.d],
                           qkv[..., at + self.kv * self.d:])
            else:
                q, k, v = self.q(x), self.k(x), self.v(x)
            if self.normed == "across heads":  # [d, heads] per position, normed over heads
                q = self.q_norm(q.view(b, t, self.d, self.h)).permute(0, 3, 1, 2)
                k = self.k_norm(k.view(b, t, self.d, self.kv)).permute(0, 3, 1, 2)
            else:
                q, k = q.view(b, t, self.h, self.d), k.view(b, t, self.kv, self.d)
                if self.normed:
                    q, k = self.q_norm(q), self.k_norm(k)
                q, k = q.transpose(1, 2), k.transpose(1, 2)
            v = v.view(b, t, self.kv, self.d).transpose(1, 2)
            if self.rotary:
                q, k = self._rotated(q, t), self._rotated(k, t)
            if self.kv < self.h and not self.sdpa_gqa and self.explicit != "broadcast":
                # LLaMA's repeat_kv
                g = self.h // self.kv
                k = k[:, :, None].expand(b, self.kv, g, t, self.d).reshape(b, self.h, t, self.d)
                v = v[:, :, None].expand(b, self.kv, g, t, self.d).reshape(b, self.h, t, self.d)
        if self.explicit == "batch x heads":  # DeBERTa: bmm over [batch x heads, T, d]
            q, k, v = (z.reshape(b * self.h, t, self.d) for z in (q, k, v))
            scores = torch.bmm(q, k.transpose(-1, -2) / torch.tensor(self.d).sqrt())
            keep = torch.ones(t, t, dtype=torch.bool).tril()[None, None]
            probs = scores.view(-1, self.h, t, t).masked_fill(~keep, -1e9).softmax(-1)
            y = torch.bmm(probs.view(-1, t, t), v).view(-1, self.h, t, self.d)
        elif self.explicit == "contiguous kᵀ":  # GCViT: q scaled first, kᵀ made contiguous
            y = ((q * self.d ** -0.5) @ k.transpose(-2, -1).contiguous()).softmax(-1) @ v
        elif self.explicit == "capped":  # Gemma-2's scores: c · tanh(s / c)
            scores = q @ k.transpose(-2, -1) * self.d ** -0.5
            y = (torch.tanh(scores / 2.0) * 2.0).softmax(-1) @ v
        elif self.explicit:
            y = (q @ k.transpose(-2, -1) * self.d ** -0.5).softmax(-1) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, enable_gqa=self.sdpa_gqa)
        return self.proj(y.transpose(1, 2).reshape(b, t, self.h * self.d))

    def _rotated(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """x · cos + rotate_half(x) · sin, the tables computed from the positions."""
        freqs = torch.arange(t, dtype=torch.float32)[:, None] * self.inv_freq[None]
        angles = torch.cat((freqs, freqs), -1)
        cos, sin = angles.cos()[None, None], angles.sin()[None, None]
        if self.rotary == "across heads":  # not a rotary embedding: it mixes heads
            return x * cos + torch.cat((-x[:, 1:], x[:, :1]), 1) * sin
        if self.rotary == "partial":  # Phi-3's: the first features rotated, the rest passed
            cut = 2 * (x.shape[-1] // 4)
            rotated = x[..., :cut] * cos[..., :cut] + torch.cat(
                (-x[..., cut // 2:cut], x[..., :cut // 2]), -1) * sin[..., :cut]
            return torch.cat((rotated, x[..., cut:]), -1)
        if self.rotary == "interleaved, after a class token":  # EVA-02's: pairs (2i, 2i + 1)
            first, rest = x[:, :, :1], x[:, :, 1:]
            turned = torch.stack((-rest[..., 1::2], rest[..., ::2]), -1).reshape(rest.shape)
            return torch.cat((first, rest * cos[:, :, 1:] + turned * sin[:, :, 1:]), 2)
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


class Net(nn.Module):
    """Tokens [N, 5, 8] -> Linear 8-24 -> attention (+ residual) -> mean over tokens -> 3."""

    def __init__(self, **attention) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(8, 24)
        self.attn = Attention(24, **attention)
        self.head = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        return self.head((h + self.attn(h)).mean(1))


LAYOUTS = {
    "fused": {"heads": 4, "kv_heads": 4, "fused": True},
    "separate": {"heads": 4, "kv_heads": 4, "fused": False},
    "fused, by head": {"heads": 4, "kv_heads": 4, "fused": "per head"},
    "explicit softmax": {"heads": 4, "kv_heads": 4, "fused": True, "explicit": True},
    "explicit, contiguous kᵀ": {"heads": 4, "kv_heads": 4, "fused": True,
                                "explicit": "contiguous kᵀ"},
    "explicit, scores capped": {"heads": 4, "kv_heads": 4, "fused": True, "explicit": "capped"},
    "heads in the batch axis, masked": {"heads": 4, "kv_heads": 4, "fused": False,
                                        "explicit": "batch x heads"},
    "grouped-query, repeated": {"heads": 4, "kv_heads": 2, "fused": False},
    "grouped-query, sdpa": {"heads": 4, "kv_heads": 2, "fused": False, "sdpa_gqa": True},
    "multi-query, sdpa": {"heads": 4, "kv_heads": 1, "fused": False, "sdpa_gqa": True},
    "multi-query, broadcast": {"heads": 4, "kv_heads": 1, "fused": False,
                               "explicit": "broadcast"},
    "multi-query, fused, split by head": {"heads": 4, "kv_heads": 1, "fused": "split by head",
                                          "explicit": "broadcast"},
    "rotary": {"heads": 4, "kv_heads": 4, "fused": False, "rotary": True},
    "grouped-query, rotary, explicit": {"heads": 4, "kv_heads": 2, "fused": False,
                                        "rotary": True, "explicit": True},
    "sliced, grouped-query, partial rotary": {"heads": 4, "kv_heads": 2, "fused": "sliced",
                                              "rotary": "partial", "explicit": True},
    "rotary, interleaved, after a class token": {"heads": 4, "kv_heads": 4, "fused": False,
                                                 "rotary": "interleaved, after a class token"},
    "grouped-query, normed per head, rotary": {"heads": 4, "kv_heads": 2, "fused": False,
                                               "normed": "per head", "rotary": True},
}


def _heads_group(gm, x):
    found = trace(gm, x[:1])
    [group] = [g for g in found.groups if "heads" in g.kinds]
    return group, found


def _without_head(net: nn.Module, x: torch.Tensor, head: int, heads: int):
    """`net`'s graph with attention head `head` removed, and its heads group (of `heads`)."""
    gm = graph_of(net, x[:2])
    group, _ = _heads_group(gm, x)
    assert group.size == heads
    shrink(gm, (group,), {group.name: torch.tensor([head])})
    return gm, group


def _same_in_onnx(gm, x: torch.Tensor, expected: torch.Tensor) -> bytes:
    """`gm` computes `expected` on `x`, and so does its ONNX file (exported at another batch
    size) in onnxruntime; returns the file."""
    torch.testing.assert_close(gm(x), expected, rtol=1e-5, atol=1e-5)
    proto = to_onnx(gm, x[:2])
    model = ort.InferenceSession(proto, providers=["CPUExecutionProvider"])
    [out] = model.run(None, {model.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-4, atol=1e-5)
    return proto


@pytest.mark.parametrize("layout", LAYOUTS)
def test_removing_a_head_is_zeroing_its_output_columns(layout):
    net = Net(**LAYOUTS[layout]).eval()
    x = torch.randn(16, 5, 8)
    gm = graph_of(net, x[:2])
    group, found = _heads_group(gm, x)
    kv = LAYOUTS[layout]["kv_heads"]
    units = kv if kv > 1 else 4  # a k/v head with the query heads that read it; one k/v
    assert group.size == units  # head read by all: each query head alone (k, v stay)
    shrink(gm, (group,), {group.name: torch.tensor([1])})
    per_unit = 24 // units  # its query heads' columns of the output projection
    with torch.no_grad():
        net.attn.proj.weight[:, per_unit:2 * per_unit] = 0
        expected = net(x)
    proto = _same_in_onnx(gm, x, expected)
    # the attention products of the heads left count, in the graph as in the file
    products = 2 * (2 * 5 * 5 * 6) * 4 * (units - 1) // units  # q·kᵀ and AV: 2·T²·d
    #     multiply-adds per query head left
    flops, uncounted = flops_per_sample(onnx.load_from_string(proto))
    assert uncounted == () and flops == count.flops(gm, found)
    assert count.flops(gm, found) - products == sum(
        2 * get_tensor(gm, layer.weight).numel() * layer.positions for layer in found.layers)


def test_heads_of_torch_multihead_attention_are_found_through_its_batch_times_heads_views():
    net = torch_encoder().eval()
    x = torch.randn(8, 6, 12)
    gm, _ = _without_head(net, x, 0, heads=2)
    attn = net[1].self_attn
    with torch.no_grad():
        attn.out_proj.weight[:, :8] = 0
        expected = net(x)
    torch.testing.assert_close(gm(x), expected, rtol=1e-5, atol=1e-5)


class Shared(Net):
    """The qkv layer is called a second time, by the residual: its weight is not the
    heads' alone."""

    def forward(self, x):
        h = self.embed(x)
        return self.head((h + self.attn(h) + self.attn.qkv(h)[..., :24]).mean(1))


class ReadTwice(Net):
    """The keys are also added to the output."""

    def forward(self, x):
        h = self.embed(x)
        b, t, _ = h.shape
        q, k, v = self.attn.qkv(h).reshape(b, t, 3, 4, 6).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, 24)
        return self.head((h + self.attn.proj(y) + k.transpose(1, 2).reshape(b, t, 24)).mean(1))


class PerHeadBias(Net):
    """A position bias of each head's own is added to the scores: a parameter (T5, ALiBi, or
    Swin's table read by position pairs), or computed from the input (`computed`)."""

    def __init__(self, computed: bool = False, sdpa: bool = False, zeros: bool = False,
                 resized: bool = False, **attention) -> None:
        super().__init__(**attention)
        self.computed, self.sdpa, self.zeros, self.resized = computed, sdpa, zeros, resized
        self.table = nn.Parameter(torch.randn(11 if resized else 9, 4))  # offsets -4..4
        if zeros:  # timm's TinyViT starts its table at zero, read as [heads, T, T]
            self.table.data.zero_()
        offsets = torch.arange(5)[None, :] - torch.arange(5)[:, None] + 4
        self.register_buffer("index", offsets.reshape(-1))
        self.gate = nn.Linear(24, 4)

    def forward(self, x):
        h = self.embed(x)
        b, t, _ = h.shape
        q, k, v = self.attn.qkv(h).reshape(b, t, 3, 4, 6).permute(2, 0, 3, 1, 4).unbind(0)
        if self.computed:
            bias = self.gate(h).transpose(1, 2)[..., None]  # [b, heads, t, 1]
        elif self.resized:  # HF's BEiT: offsets as a 3 x 3 grid per head, resized, then
            grid = self.table[:9].reshape(1, 3, 3, -1).permute(0, 3, 1, 2)  # 2 more rows
            grid = F.interpolate(grid, size=(3, 3), mode="bilinear").permute(0, 2, 3, 1)
            table = torch.cat([grid.reshape(9, -1), self.table[9:]])
            bias = table[self.index].view(t, t, -1).permute(2, 0, 1).unsqueeze(0)
            bias = bias + h.new_zeros(b, 1, t, t)  # a padding mask, the same for every head
        else:
            bias = self.table[self.index].view(t, t, -1).permute(2, 0, 1)
            bias = bias if self.zeros else bias.unsqueeze(0)
        if self.sdpa:  # the scale differs from the explicit form's: not compared
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2)
        else:
            y = ((q @ k.transpose(-2, -1) + bias).softmax(-1) @ v).transpose(1, 2)
        return self.head((h + self.attn.proj(y.reshape(b, t, 24))).mean(1))


@pytest.mark.parametrize("sdpa, zeros, resized", [(False, False, False), (True, False, False),
                                                 (True, True, False), (False, False, True)],
                         ids=["explicit softmax", "sdpa attn_mask", "zeros, [heads, T, T]",
                              "resized, joined, masked"])
def test_a_per_head_bias_table_loses_the_removed_heads_columns(sdpa, zeros, resized):
    net = PerHeadBias(sdpa=sdpa, zeros=zeros, resized=resized, **LAYOUTS["fused"]).eval()
    x = torch.randn(16, 5, 8)
    gm, group = _without_head(net, x, 1, heads=4)
    assert [(s.param, s.axis) for s in group.carried] == [("table", 1)]
    assert gm.table.shape == (11 if resized else 9, 3)
    with torch.no_grad():
        net.attn.proj.weight[:, 6:12] = 0  # head 1's output, whatever its scores were
        expected = net(x)
    torch.testing.assert_close(gm(x), expected, rtol=1e-5, atol=1e-5)


class MergedTemperature(Net):
    """DeBERTa's layout, heads in the batch axis, kᵀ divided by a temperature per head
    computed from the input, [batch x heads, 1, 1]."""

    def __init__(self, **attention) -> None:
        super().__init__(**attention)
        self.gate = nn.Linear(24, 4)

    def forward(self, x):
        h = self.embed(x)
        b, t, _ = h.shape
        q, k, v = (z.transpose(1, 2).reshape(b * 4, t, 6) for z in
                   self.attn.qkv(h).reshape(b, t, 3, 4, 6).permute(2, 0, 1, 3, 4))
        temperature = F.softplus(self.gate(h).mean(1)).reshape(b * 4, 1, 1) + 1
        probs = torch.bmm(q, k.transpose(1, 2) / temperature).softmax(-1)
        y = torch.bmm(probs, v).view(b, 4, t, 6).transpose(1, 2).reshape(b, t, 24)
        return self.head((h + self.attn.proj(y)).mean(1))


class SharedTable(nn.Module):
    """Two attentions whose scores both get one position bias per head, gathered once from
    one table (MPNet's relative attention bias)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(8, 24)
        self.attns = nn.ModuleList(Attention(24, 4, 4, fused=True) for _ in range(2))
        self.table = nn.Embedding(9, 4)  # relative offsets -4..4, per head
        offsets = torch.arange(5)[None, :] - torch.arange(5)[:, None] + 4
        self.register_buffer("offsets", offsets)
        self.head = nn.Linear(24, 3)

    def forward(self, x):
        h = self.embed(x)
        b, t, _ = h.shape
        bias = self.table(self.offsets).permute(2, 0, 1).unsqueeze(0)
        for attn in self.attns:
            q, k, v = attn.qkv(h).reshape(b, t, 3, 4, 6).permute(2, 0, 3, 1, 4).unbind(0)
            y = ((q @ k.transpose(-2, -1) + bias).softmax(-1) @ v).transpose(1, 2)
            h = h + attn.proj(y.reshape(b, t, 24))
        return self.head(h.mean(1))


def test_a_bias_table_two_attentions_share_is_copied_so_each_loses_its_own_heads():
    net = SharedTable().eval()
    x = torch.randn(16, 5, 8)
    gm = graph_of(net, x[:2])
    groups = [g for g in trace(gm, x[:1]).groups if "heads" in g.kinds]
    assert len(groups) == 2
    tables = [s.param for g in groups for s in g.carried]
    assert len(set(tables)) == 2  # one copy each
    first = groups[0]
    shrink(gm, (first,), {first.name: torch.tensor([1])})
    assert sorted(getattr(gm, t).shape[1] for t in tables) == [3, 4]
    with torch.no_grad():
        net.attns[0].proj.weight[:, 6:12] = 0  # head 1 of the first attention
        expected = net(x)
    torch.testing.assert_close(gm(x), expected, rtol=1e-5, atol=1e-5)


def _computed_bias(**attention):
    return PerHeadBias(computed=True, **attention)


def _mixed(**attention):
    return Net(**{**attention, "fused": False, "rotary": "across heads"})


def _normed_across_heads(**attention):
    return Net(**{**attention, "fused": False, "normed": "across heads"})


@pytest.mark.parametrize("make", [Shared, ReadTwice, _computed_bias, MergedTemperature, _mixed,
                                  _normed_across_heads])
def test_heads_whose_rows_something_else_reads_stay(make):
    net = make(**LAYOUTS["fused"]).eval()
    x = torch.randn(4, 5, 8)
    assert not [g for g in trace(graph_of(net, x[:2]), x[:1]).groups if "heads" in g.kinds]


class ComputedQkvBias(Net):
    """BEiT's qkv bias: `cat(q_bias, zeros, v_bias)` computed in the graph from parameters."""

    def __init__(self) -> None:
        super().__init__(**LAYOUTS["fused"])
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(24)), nn.Parameter(torch.randn(24))
        self.register_buffer("k_bias", torch.zeros(24), persistent=False)

    def forward(self, x):
        h = self.embed(x)
        b, t, _ = h.shape
        bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
        qkv = F.linear(h, self.attn.qkv.weight, bias)
        q, k, v = qkv.reshape(b, t, 3, 4, 6).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, 24)
        return self.head((h + self.attn.proj(y)).mean(1))


def test_a_qkv_bias_computed_from_parameters_becomes_one_and_its_heads_prune():
    net = ComputedQkvBias().eval()
    x = torch.randn(16, 5, 8)
    gm = graph_of(net, x[:2])
    group, _ = _heads_group(gm, x)
    [bias] = {s.param for s in group.biases}
    assert get_tensor(gm, bias).shape == (72,)
    assert all(n.target is not torch.ops.aten.cat.default for n in gm.graph.nodes)
    shrink(gm, (group,), {group.name: torch.tensor([2])})
    with torch.no_grad():
        net.attn.proj.weight[:, 12:18] = 0
        expected = net(x)
    torch.testing.assert_close(gm(x), expected, rtol=1e-5, atol=1e-5)


class SeparableAttention(nn.Module):
    """MobileViTv2's linear attention: a softmax over positions weighs the keys elementwise
    (no product with v), then `sums` residual sums, each reached from the softmax two ways."""

    def __init__(self, sums: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.sums = sums
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.qkv = nn.Conv2d(8, 1 + 2 * 8, 1)
        self.out = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.stem(x))
        q, k, v = self.qkv(x).split([1, 8, 8], dim=1)
        scores = F.softmax(q.flatten(2), dim=-1).view_as(q)
        y = F.relu(v) * (k * scores).sum((2, 3), keepdim=True)
        for _ in range(self.sums):
            y = y + y * 0.5
        return self.head(F.relu(self.out(y)).mean((2, 3)))


class _Counted(tuple):
    """A tuple of ops that counts how often it is asked whether it holds one."""

    asked = 0

    def __contains__(self, op) -> bool:
        type(self).asked += 1
        return super().__contains__(op)


def test_the_search_for_attention_after_a_softmax_visits_each_node_once(monkeypatch):
    import compressor.graph.trace as trace_module

    net = SeparableAttention(sums=16).eval()  # 2**16 paths from the softmax to `out`
    x = torch.rand(4, 3, 8, 8)
    gm = graph_of(net, x[:2])
    monkeypatch.setattr(trace_module, "MATMUL", _Counted(trace_module.MATMUL))
    assert trace_module._attention_inputs(gm) == set()  # no product: no heads
    assert _Counted.asked <= len(gm.graph.nodes)
    found = trace(gm, x[:1])
    assert {g.name for g in found.groups} >= {"stem", "out"}


class LeViTAttention(nn.Module):
    """LeViT's attention: one qkv Linear laid out by head with values twice as wide as keys,
    kᵀ written as one permute, a per-head bias, hardswish before the projection, and each
    Linear followed by a BatchNorm over its output flattened to rows (LinearNorm)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(8, 24)
        self.qkv, self.qkv_bn = nn.Linear(24, 4 * (6 + 6 + 12), bias=False), nn.BatchNorm1d(96)
        self.proj, self.proj_bn = nn.Linear(48, 24, bias=False), nn.BatchNorm1d(24)
        self.biases = nn.Parameter(torch.randn(4, 5))
        self.register_buffer("index", (torch.arange(5)[None] - torch.arange(5)[:, None]).abs())
        for bn in (self.qkv_bn, self.proj_bn):  # statistics as a trained model has them
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
        self.head = nn.Linear(24, 3)

    @staticmethod
    def _normed(linear: nn.Linear, bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
        y = linear(x)
        return bn(y.flatten(0, 1)).reshape_as(y)

    def forward(self, x):
        h = self.embed(x)
        b, t, _ = h.shape
        q, k, v = self._normed(self.qkv, self.qkv_bn, h).view(b, t, 4, -1).split([6, 6, 12], 3)
        q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 3, 1), v.permute(0, 2, 1, 3)
        attn = (q @ k * 6 ** -0.5 + self.biases[:, self.index]).softmax(-1)
        y = F.hardswish((attn @ v).transpose(1, 2).reshape(b, t, 48))
        return self.head((h + self._normed(self.proj, self.proj_bn, y)).mean(1))


def test_levit_attention_folds_its_batchnorms_and_prunes_its_heads():
    net = LeViTAttention().eval()
    x = torch.randn(16, 5, 8)
    gm, _ = _without_head(net, x, 1, heads=4)
    assert not [n for n in gm.graph.nodes if "batch_norm" in str(n.target)]  # folded
    assert gm.biases.shape == (3, 5)
    with torch.no_grad():
        net.proj.weight[:, 12:24] = 0  # head 1's values, through hardswish(0) = 0
        expected = net(x)
    torch.testing.assert_close(gm(x), expected, rtol=1e-5, atol=1e-5)


class LeViTDownsample(nn.Module):
    """LeViT's downsampling attention: queries from every other token through a Linear of
    their own, keys and values from one kv Linear laid out by head with values wider than
    keys ([heads, k v] split), kᵀ as one permute, hardswish before the projection."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(8, 24)
        self.q = nn.Linear(24, 4 * 6)
        self.kv = nn.Linear(24, 4 * (6 + 12))
        self.proj = nn.Linear(48, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.embed(x)
        b, t, _ = h.shape
        k, v = self.kv(h).view(b, t, 4, -1).split([6, 12], 3)
        k, v = k.permute(0, 2, 3, 1), v.permute(0, 2, 1, 3)
        q = self.q(h[:, ::2]).view(b, -1, 4, 6).permute(0, 2, 1, 3)
        attn = (q @ k * 6 ** -0.5).softmax(-1)
        y = F.hardswish((attn @ v).transpose(1, 2).reshape(b, -1, 48))
        return self.head(self.proj(y).mean(1))


def test_levit_downsampling_attention_prunes_its_heads_from_its_q_and_kv_linears():
    net = LeViTDownsample().eval()
    x = torch.randn(16, 6, 8)
    gm, group = _without_head(net, x, 1, heads=4)
    assert sorted((s.param, s.block) for s in group.weights) == [("kv_weight", 18),
                                                                 ("q_weight", 6)]
    assert gm.kv_weight.shape == (54, 24) and gm.q_weight.shape == (18, 24)
    with torch.no_grad():
        net.proj.weight[:, 12:24] = 0  # head 1's values, through hardswish(0) = 0
        expected = net(x)
    torch.testing.assert_close(gm(x), expected, rtol=1e-5, atol=1e-5)


class WindowedHeads(nn.Module):
    """Locally grouped attention over 2 windows: q, k, v as [batch, windows, heads, tokens,
    size] (Twins), or [batch, heads, windows, tokens, size] with the output's features laid
    out [size, heads] (NesT)."""

    def __init__(self, heads_first: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.heads_first = heads_first
        self.embed, self.qkv = nn.Linear(8, 24), nn.Linear(24, 72)
        self.proj, self.head = nn.Linear(24, 24), nn.Linear(24, 3)

    def forward(self, x):
        h = self.embed(x)
        b, t, _ = h.shape
        qkv = self.qkv(h).reshape(b, 2, t // 2, 3, 4, 6)
        if self.heads_first:
            q, k, v = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)
            y = F.scaled_dot_product_attention(q, k, v).permute(0, 2, 3, 4, 1)
        else:
            q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)
            y = F.scaled_dot_product_attention(q, k, v).permute(0, 1, 3, 2, 4)
        return self.head((h + self.proj(y.reshape(b, t, 24))).mean(1))


@pytest.mark.parametrize("heads_first", [False, True], ids=["Twins", "NesT"])
def test_heads_over_windows_are_found(heads_first):
    net, x = WindowedHeads(heads_first).eval(), torch.randn(16, 6, 8)
    gm, _ = _without_head(net, x, 2, heads=4)
    with torch.no_grad():  # head 2's output: its 6 features side by side, or every 4th
        net.proj.weight[:, list(range(2, 24, 4)) if heads_first else list(range(12, 18))] = 0
        expected = net(x)
    _same_in_onnx(gm, x, expected)
