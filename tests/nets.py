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
