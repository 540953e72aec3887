"""Example transformer encoders for Fashion-MNIST ([N, 1, 28, 28] in [0, 1]), ViT-style: 7x7
patches -> 16 tokens of width 64 plus learned positions, pre-LayerNorm blocks of multi-head
self-attention and a feed-forward block, mean over tokens, LayerNorm, Linear 64-10.

`vit`: the feed-forward block is Linear 64-256, GELU, Linear 256-64 (BERT/ViT).
`vit_swiglu`: gated, silu(W1 x) * (W3 x) -> W2 with hidden width 172 (LLaMA; 2/3 of 4x so the
weights match `vit`'s).
`text`: BERT-style, token ids [N, 196] through an Embedding (Fashion-MNIST at 14 x 14 in 16 grey
levels, one id per pixel: `tokens`), 2 blocks, feed-forward 256.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compressor.io.data import load_fashion_mnist


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (as timm writes it)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        d = self.qkv.out_features // (3 * self.heads)  # from qkv: runs with heads removed too
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, t, self.heads * d))


class FeedForward(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(width, hidden, bias=False)
        self.w3 = nn.Linear(width, hidden, bias=False)
        self.w2 = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, ffn: nn.Module) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.ffn = ffn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, ffn: type[nn.Module], hidden: int, width: int = 64, depth: int = 4,
                 heads: int = 4, patch: int = 7) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, width, patch, patch)
        self.position = nn.Parameter(torch.zeros(1, (28 // patch) ** 2, width))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.blocks = nn.Sequential(*[Block(width, heads, ffn(width, hidden))
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.position
        return self.head(self.norm(self.blocks(tokens).mean(1)))


class TextClassifier(nn.Module):
    """Token ids [N, T] (int64) -> embeddings plus learned positions -> blocks -> mean over
    tokens -> LayerNorm -> Linear."""

    def __init__(self, vocab: int = 16, length: int = 196, width: int = 64, depth: int = 2,
                 heads: int = 4, hidden: int = 256, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.zeros(1, length, width))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.blocks = nn.Sequential(*[Block(width, heads, FeedForward(width, hidden))
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(ids) + self.position[:, :ids.shape[1]]
        return self.head(self.norm(self.blocks(tokens).mean(1)))


def tokens(images: torch.Tensor, levels: int = 16) -> torch.Tensor:
    """Fashion-MNIST images [N, 1, 28, 28] in [0, 1] -> token ids [N, 196] (int64): 2 x 2
    average-pooled, one id per pixel, its grey level in `levels` steps."""
    pooled = F.avg_pool2d(images, 2).flatten(1)
    return (pooled * levels).long().clamp_(0, levels - 1)


def fashion_mnist_ids() -> dict:
    """Fashion-MNIST's splits as token ids, for `--data models.transformer:fashion_mnist_ids`
    (the validation and test splits as `--data fashion-mnist` has them)."""
    data = load_fashion_mnist()
    return {name: (tokens(part.x), part.y) for name, part in
            (("train", data.train), ("val", data.validation), ("test", data.test))}


def text() -> TextClassifier:
    """Token ids [N, 196] of 16 values, 2 blocks, width 64, 4 heads, feed-forward 256."""
    return TextClassifier()


def vit() -> ViT:
    """4 blocks, width 64, 4 heads, GELU feed-forward 256: 0.20 M weights."""
    return ViT(FeedForward, 256)


def vit_swiglu() -> ViT:
    """4 blocks, width 64, 4 heads, SwiGLU feed-forward 172: 0.20 M weights."""
    return ViT(SwiGLU, 172)
