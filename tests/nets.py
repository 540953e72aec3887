"""Small networks for tests (importable as --arch tests.nets:NAME from the repo root)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.cnn import BasicBlock
from models.mlp import mlp

TINY = (20, 32, 24, 16, 4)


def tiny(activation=nn.ReLU) -> nn.Sequential:
    """20-32-24-16-4 with ReLU (or `activation`)."""
    torch.manual_seed(0)
    return mlp(TINY, activation)


def tiny_gelu() -> nn.Sequential:
    """tiny() with GELU."""
    return tiny(nn.GELU)


class ImageNet(nn.Module):
    """Takes [N, 1, 28, 28]: own Flatten, functional ReLU, Dropout between Linear and ReLU."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(784, 48)
        self.drop = nn.Dropout(0.1)
        self.fc2 = nn.Linear(48, 24, bias=False)
        self.out = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.drop(self.fc1(self.flatten(x))))
        x = torch.relu(self.fc2(x))
        return self.out(x)


class NotPrunable(nn.Module):
    """Nothing prunable: a softmax (which couples every unit) between its layers."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(20, 8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.softmax(self.a(x), dim=1))


class Broken(nn.Module):
    """Its forward always fails."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(20, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("forward is broken on purpose")


class Tied(nn.Module):
    """One Linear applied twice (shared weights), then the output layer."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(20, 20), nn.Linear(20, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(torch.relu(self.a(x)))))


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


def with_duplicates() -> nn.Sequential:
    """tiny() where first-layer unit 7 copies unit 3, unit 8 is 2.5 x unit 3, and second-layer
    unit 5 copies unit 2: removing 7, 8 and 5 loses no information."""
    net = tiny()
    with torch.no_grad():
        for layer, copy, source, scale in ((0, 7, 3, 1.0), (0, 8, 3, 2.5), (2, 5, 2, 1.0)):
            net[layer].weight[copy] = scale * net[layer].weight[source]
            net[layer].bias[copy] = scale * net[layer].bias[source]
    return net


class SmallCNN(nn.Module):
    """[N, 1, 12, 12] -> conv-BN-ReLU-pool, conv-BN-ReLU-pool, Flatten, Linear-ReLU, Linear."""

    def __init__(self, padding: int = 1) -> None:
        super().__init__()
        torch.manual_seed(0)
        side = (12 - 2 + 2 * padding) // 2
        side = (side - 2 + 2 * padding) // 2
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=padding), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=padding, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * side * side, 16), nn.ReLU(),
                                  nn.Linear(16, 4))
        with torch.no_grad():  # statistics a trained net would have, not the identity
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.1, 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def small_resnet() -> nn.Sequential:
    """[N, 1, 12, 12] -> stem, an identity block, a projection block, average pool, Linear."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         BasicBlock(8, 8, 1), BasicBlock(8, 12, 2), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(12, 4))


class Concat(nn.Module):
    """Two conv branches concatenated on the channel axis, then a conv and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 6, 3, padding=1)
        self.c = nn.Conv2d(10, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1))
        return self.head(torch.relu(self.c(y)).mean(dim=(2, 3)))


class Inception(nn.Module):
    """A stem and three branches (1x1, 3x3, pool then 1x1) concatenated on the channel axis,
    pooled, flattened into a Linear head: each branch owns 6x6 columns per channel there."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.b1 = nn.Conv2d(6, 4, 1)
        self.b3 = nn.Conv2d(6, 5, 3, padding=1)
        self.bp = nn.Conv2d(6, 3, 1)
        self.head = nn.Linear(12 * 6 * 6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1)
        y = torch.cat([F.relu(self.b1(x)), F.relu(self.b3(x)), F.relu(self.bp(pooled))], 1)
        return self.head(torch.flatten(F.max_pool2d(y, 2), 1))


class DenseBlock(nn.Module):
    """DenseNet-style (post-activation): every layer reads the concatenation of the stem's
    and all earlier layers' channels (cats of cats), then a 1x1 transition and a head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.l1 = nn.Conv2d(4, 3, 3, padding=1)
        self.l2 = nn.Conv2d(7, 3, 3, padding=1)
        self.transition = nn.Conv2d(10, 6, 1)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = F.relu(self.stem(x))
        x01 = torch.cat([x0, F.relu(self.l1(x0))], 1)
        x012 = torch.cat([x01, F.relu(self.l2(x01))], 1)
        return self.head(F.relu(self.transition(x012)).mean(dim=(2, 3)))


class InputSkip(nn.Module):
    """The model's input concatenated before a layer's channels (a U-Net-like skip): the
    input's channel stays, the layer's channels sit behind it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(1, 5, 3, padding=1)
        self.c = nn.Conv2d(6, 4, 3)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c(torch.cat([x, F.relu(self.a(x))], 1))
        return self.head(F.relu(y).mean(dim=(2, 3)))


class PreActDense(nn.Module):
    """DenseNet-style, pre-activation (BatchNorm -> ReLU -> conv): each layer reads
    BN-ReLU of the concatenation so far, so no BatchNorm can be folded into a layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1, self.l1 = nn.BatchNorm2d(8), nn.Conv2d(8, 6, 3, padding=1)
        self.bn2, self.l2 = nn.BatchNorm2d(14), nn.Conv2d(14, 6, 3, padding=1)
        self.bn3, self.head = nn.BatchNorm2d(20), nn.Linear(20, 4)
        for bn in (self.bn1, self.bn2, self.bn3):  # trained-looking statistics
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.2, 0.2)
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.stem(x)
        x01 = torch.cat([x0, self.l1(F.relu(self.bn1(x0)))], 1)
        x012 = torch.cat([x01, self.l2(F.relu(self.bn2(x01)))], 1)
        return self.head(F.relu(self.bn3(x012)).mean(dim=(2, 3)))


class PreActResidual(nn.Module):
    """A pre-activation residual block (x + conv(relu(bn(conv(relu(bn(x))))))): the stream's
    BatchNorms follow the add, unfolded."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.bn1, self.conv1 = nn.BatchNorm2d(6), nn.Conv2d(6, 5, 3, padding=1)
        self.bn2, self.conv2 = nn.BatchNorm2d(5), nn.Conv2d(5, 6, 3, padding=1)
        self.bn3, self.head = nn.BatchNorm2d(6), nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return self.head(F.relu(self.bn3(x)).mean(dim=(2, 3)))


class CatOfJoined(nn.Module):
    """Two convs added (one channel space) and also concatenated into a third conv, which
    then reads that space twice, at two offsets: left dense."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 3, padding=1)
        self.c = nn.Conv2d(8, 6, 3, padding=1)
        self.head, self.side = nn.Linear(6, 3), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ya, yb = self.a(x), self.b(x)
        joined = F.relu(ya + yb).mean(dim=(2, 3))
        both = torch.cat([F.relu(ya), F.relu(yb)], 1)
        return self.head(F.relu(self.c(both)).mean(dim=(2, 3))) + self.side(joined)


class CatBeforeActivation(nn.Module):
    """Two convs concatenated before their ReLU (counted behind the cat), and a cat added to
    a fourth conv: an add behind a cat, which the tracer does not follow."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(1, 3, 3, padding=1)
        self.c, self.d = nn.Conv2d(1, 6, 3, padding=1), nn.Conv2d(1, 6, 3, padding=1)
        self.head = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(torch.cat([self.a(x), self.b(x)], 1))
        z = torch.cat([F.relu(self.c(x))], 1) + F.relu(self.d(x))
        return self.head(torch.cat([y, z], 1).mean(dim=(2, 3)))


class Depthwise(nn.Module):
    """A depthwise-separable block: the depthwise conv ties its input and output channels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 6, 1)
        self.head = nn.Linear(6 * 12 * 12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.pw(torch.relu(self.dw(torch.relu(self.a(x))))))
        return self.head(y.flatten(1))


class TinyTransformer(nn.Module):
    """Takes tokens [N, 6, 12]: input Linear 12-16, one pre-LayerNorm block (attention with a
    fused qkv, then a GELU FFN 16-32-16, or SwiGLU with `gated`), mean over tokens, Linear 16-4."""

    def __init__(self, gated: bool = False) -> None:
        super().__init__()
        from models.transformer import Block, FeedForward, SwiGLU

        torch.manual_seed(0)
        self.embed = nn.Linear(12, 16)
        self.block = Block(16, 2, (SwiGLU if gated else FeedForward)(16, 32))
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(x)).mean(1))


def tiny_swiglu() -> TinyTransformer:
    return TinyTransformer(gated=True)


def torch_encoder() -> nn.Sequential:
    """nn.TransformerEncoderLayer (ReLU FFN 16-40-16) on tokens [N, 6, 12]: its attention runs
    on [tokens, batch, features]."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.TransformerEncoderLayer(
        16, 2, 40, dropout=0.0, batch_first=True), nn.Flatten(), nn.Linear(6 * 16, 4))


class TinyMixer(nn.Module):
    """MLP-Mixer on tokens [N, 6, 12]: input Linear 12-16, token mixing (LayerNorm, transpose
    to [N, 16, 6], Linear 6-24, GELU, Linear 24-6, transpose back, residual add), channel
    mixing (LayerNorm, GELU FFN 16-32-16, residual add), mean over tokens, Linear 16-4."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(12, 16)
        self.norm1, self.norm2 = nn.LayerNorm(16), nn.LayerNorm(16)
        self.token1, self.token2 = nn.Linear(6, 24), nn.Linear(24, 6)
        self.channel1, self.channel2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        mixed = self.token2(F.gelu(self.token1(self.norm1(x).transpose(1, 2))))
        x = x + mixed.transpose(1, 2)
        x = x + self.channel2(F.gelu(self.channel1(self.norm2(x))))
        return self.head(x.mean(1))


class ClassToken(nn.Module):
    """A class token (a learned [1, 1, 16]) put before 6 embedded tokens, one transformer block,
    the class token's output into Linear 16-4 (as ViT and BERT read it)."""

    def __init__(self) -> None:
        super().__init__()
        from models.transformer import Block, FeedForward

        torch.manual_seed(0)
        self.embed = nn.Linear(12, 16)
        self.token = nn.Parameter(torch.randn(1, 1, 16) * 0.1)
        self.block = Block(16, 2, FeedForward(16, 32))
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        x = torch.cat([self.token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.head(self.block(x)[:, 0])


def no_layers() -> nn.Sequential:
    """No Linear or Conv at all: nothing to prune or analyse."""
    return nn.Sequential(nn.LayerNorm(20), nn.ReLU())
