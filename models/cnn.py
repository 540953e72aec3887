"""Example CNNs for Fashion-MNIST ([N, 1, 28, 28] in [0, 1]): a VGG-style net with BatchNorm and
a small ResNet with identity and 1x1-projection shortcuts."""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


def vgg_bn() -> nn.Sequential:
    """conv 32-32, pool, 64-64, pool, 128, pool (each conv + BatchNorm + ReLU), then
    Linear 1152-128-10 with ReLU: 0.37 M weights, 24 M FLOPs per image."""
    return nn.Sequential(
        *_conv_bn(1, 32), *_conv_bn(32, 32), nn.MaxPool2d(2),
        *_conv_bn(32, 64), *_conv_bn(64, 64), nn.MaxPool2d(2),
        *_conv_bn(64, 128), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128 * 3 * 3, 128), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(128, 10))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input (identity) or its 1x1 projection, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def resnet() -> nn.Sequential:
    """A small ResNet: stem conv 24, blocks 24 (identity), 48 and 96 (stride 2, projection),
    global average pool, Linear 96-10."""
    return nn.Sequential(*_conv_bn(1, 24), BasicBlock(24, 24, 1), BasicBlock(24, 48, 2),
                         BasicBlock(48, 96, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(96, 10))
