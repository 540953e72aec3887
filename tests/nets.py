"""Small networks for tests (importable as --arch tests.nets:NAME from the repo root)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.mlp import mlp

TINY = (20, 32, 24, 16, 4)


def tiny() -> nn.Sequential:
    """20-32-24-16-4 with ReLU."""
    torch.manual_seed(0)
    return mlp(TINY)


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


class NoReLU(nn.Module):
    """Nothing prunable: sigmoid between its layers."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(20, 8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.sigmoid(self.a(x)))


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
