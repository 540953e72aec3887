"""The network of Ganguli & Chong (2024): 784-300-200-100-50-10 with ReLU, for Fashion-MNIST."""

from __future__ import annotations

from torch import nn

PAPER_WIDTHS = (784, 300, 200, 100, 50, 10)


def mlp(widths: tuple[int, ...] = PAPER_WIDTHS) -> nn.Sequential:
    """Linear layers of `widths` with ReLU between them; takes [N, widths[0]] inputs."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def paper_mlp() -> nn.Sequential:
    """The paper's 784-300-200-100-50-10 network (the `--arch` of models/paper_mlp.pt)."""
    return mlp(PAPER_WIDTHS)
