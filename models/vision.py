"""torchvision's classifiers, for the tests, the benchmarks and the two trained examples.

torchvision 0.28 from PyPI beside the CPU build of torch 2.13 fails at import ("operator
torchvision::nms does not exist"): its C extension does not load against that build, and its
`_meta_registrations` registers fake implementations of the detection ops (nms, roi_align,
...) whether or not they exist. The model definitions need none of those ops, so
`import_torchvision` skips registering a fake implementation for a torchvision op that does
not exist, only while torchvision is first imported. Everything else is torchvision's own."""

from __future__ import annotations

import sys
from types import ModuleType

import torch
from torch import nn


def import_torchvision() -> ModuleType:
    """torchvision, imported so that a missing C extension does not stop its models loading."""
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    register = torch.library.register_fake

    def register_fake(op, *args, **kwargs):
        if isinstance(op, str) and op.startswith("torchvision::") and not _exists(op):
            return (lambda fn: fn) if not args else args[0]
        return register(op, *args, **kwargs)

    torch.library.register_fake = register_fake
    try:
        import torchvision
    finally:
        torch.library.register_fake = register
    return torchvision


def _exists(op: str) -> bool:
    try:
        getattr(torch.ops.torchvision, op.split("::", 1)[1])
    except (AttributeError, RuntimeError):
        return False
    return True


def classifier(name: str, classes: int = 10, **kwargs) -> nn.Module:
    """A torchvision classification model by name, randomly initialised (no weights can be
    downloaded), in eval mode."""
    models = import_torchvision().models
    torch.manual_seed(0)
    return getattr(models, name)(num_classes=classes, **kwargs).eval()


class FashionInput(nn.Module):
    """Fashion-MNIST's [N, 1, 28, 28] as the [N, 3, 32, 32] images torchvision's models take:
    padded by two pixels, the one channel repeated three times."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x, (2, 2, 2, 2)).expand(-1, 3, -1, -1)


def resnet18_fmnist() -> nn.Module:
    """torchvision's ResNet-18 as built (7x7 stride-2 stem and max pooling), on Fashion-MNIST
    images at 3 x 32 x 32."""
    return nn.Sequential(FashionInput(), classifier("resnet18"))


def mobilenet_v3_small_fmnist() -> nn.Module:
    """torchvision's MobileNetV3-small as built, on Fashion-MNIST images at 3 x 32 x 32."""
    return nn.Sequential(FashionInput(), classifier("mobilenet_v3_small"))
