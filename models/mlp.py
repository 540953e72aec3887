"""The network of Ganguli & Chong (2024): 784-300-200-100-50-10 with ReLU, for Fashion-MNIST."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

PAPER_WIDTHS = (784, 300, 200, 100, 50, 10)


def mlp(widths: tuple[int, ...] = PAPER_WIDTHS,
        activation: Callable[[], nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers of `widths` with `activation` (ReLU) between them; takes [N, widths[0]]
    inputs."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(widths) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def paper_mlp() -> nn.Sequential:
    """The paper's 784-300-200-100-50-10 network (the `--arch` of models/paper_mlp.pt)."""
    return mlp(PAPER_WIDTHS)


LENET_300_100 = (784, 300, 100, 10)


class Normalize(nn.Module):
    """(x - mean) / std, inside the model so that it takes pixels in [0, 1]."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def lenet_300_100() -> nn.Sequential:
    """LeNet-300-100 (784-300-100-10) as in the neuron-merging paper's code: inputs normalised
    to [-1, 1] (mean 0.5, std 0.5) by its first module (the `--arch` of models/lenet_300_100.pt)."""
    return nn.Sequential(Normalize(0.5, 0.5), *mlp(LENET_300_100))


ARCHS = {"paper_mlp": paper_mlp, "lenet_300_100": lenet_300_100}
