"""Train an example network on Fashion-MNIST and save its state_dict (+ a .json of facts).

    python -m models.train                       # models/paper_mlp.pt (make train)
    python -m models.train --arch lenet_300_100 --recipe merging --out models/lenet_300_100.pt

Recipes:
    paper    SGD momentum 0.9, lr 0.05, cosine, 30 epochs, no weight decay; best epoch by
             validation loss (the shipped paper_mlp.pt).
    merging  the neuron-merging paper's code: SGD momentum 0.9, lr 0.1, weight decay 5e-4,
             200 epochs, lr x0.1 at epoch 100 and x0.01 after 150; best epoch by validation
             accuracy (the shipped lenet_300_100.pt).
    cnn      AdamW lr 3e-3, weight decay 5e-4, cosine, 5 epochs, random shifts of up to 2
             pixels; best epoch by validation accuracy (models/vgg_bn.pt, models/resnet.pt).
    transformer  AdamW lr 2e-3, weight decay 0.05, cosine, 12 epochs, shifts of up to 1
             pixel; best epoch by validation accuracy (models/vit.pt, models/vit_swiglu.pt).
    vision   the cnn recipe for 8 epochs (torchvision's ResNet-18 and MobileNetV3-small, as
             built, on the images at 3 x 32 x 32: models/resnet18_fmnist.pt,
             models/mobilenet_v3_small_fmnist.pt).
    text     the transformer recipe for 8 epochs, on the images as token ids (models/text.pt:
             `models.transformer.tokens`, shifted before they become ids).

Data: the first 6,000 training images are the validation split (best epoch kept); the official
test set is only evaluated at the end.
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from compressor.graph.capture import run_batched
from compressor.io.data import load_fashion_mnist
from compressor.prune.finetune import accuracy, evaluate
from models.cnn import resnet, vgg_bn
from models.mlp import ARCHS as MLPS
from models.transformer import text, tokens, vit, vit_swiglu
from models.vision import mobilenet_v3_small_fmnist, resnet18_fmnist

ARCHS = {**MLPS, "vgg_bn": vgg_bn, "resnet": resnet, "vit": vit, "vit_swiglu": vit_swiglu,
         "resnet18_fmnist": resnet18_fmnist,
         "mobilenet_v3_small_fmnist": mobilenet_v3_small_fmnist, "text": text}
IMAGES = {"vgg_bn", "resnet", "vit", "vit_swiglu", "resnet18_fmnist",
          "mobilenet_v3_small_fmnist"}  # take [N, 1, 28, 28]; MLPs take [N, 784]
IDS = {"text"}  # take token ids [N, 196] (`tokens` of the images)


@dataclass(frozen=True)
class Recipe:
    epochs: int
    lr: float
    weight_decay: float
    schedule: str  # "cosine" or "step" (x0.1 at 1/2, x0.01 after 3/4)
    best_by: str  # "loss" or "accuracy" on the validation split
    optimizer: str = "sgd"  # "sgd" (momentum 0.9) or "adamw"
    shift: int = 0  # augmentation: random shifts of up to this many pixels (images only)
    recalibrate: bool = False  # BatchNorm statistics recomputed on training data each epoch


RECIPES = {
    "paper": Recipe(epochs=30, lr=0.05, weight_decay=0.0, schedule="cosine", best_by="loss"),
    "merging": Recipe(epochs=200, lr=0.1, weight_decay=5e-4, schedule="step", best_by="accuracy"),
    "cnn": Recipe(epochs=5, lr=3e-3, weight_decay=5e-4, schedule="cosine", best_by="accuracy",
                  optimizer="adamw", shift=2),
    "transformer": Recipe(epochs=12, lr=2e-3, weight_decay=0.05, schedule="cosine",
                          best_by="accuracy", optimizer="adamw", shift=1),
    "vision": Recipe(epochs=8, lr=3e-3, weight_decay=5e-4, schedule="cosine",
                     best_by="accuracy", optimizer="adamw", shift=2, recalibrate=True),
    "text": Recipe(epochs=8, lr=2e-3, weight_decay=0.05, schedule="cosine",
                   best_by="accuracy", optimizer="adamw", shift=1),
}


def train(arch: str, recipe: Recipe, *, seed: int) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(seed)
    images = load_fashion_mnist()  # shifted (augmented) as images, then made ids
    prepare = tokens if arch in IDS else (lambda x: x) if arch in IMAGES else \
        (lambda x: x.flatten(1))
    data = images.map_x(prepare)
    model = ARCHS[arch]()
    if recipe.optimizer == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr,
                                      weight_decay=recipe.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9,
                                    weight_decay=recipe.weight_decay)
    scheduler = _scheduler(optimizer, recipe)
    generator = torch.Generator().manual_seed(seed)
    best_score, best_state, best_epoch = -float("inf"), None, 0
    for epoch in range(1, recipe.epochs + 1):
        model.train()
        order = torch.randperm(len(data.train), generator=generator)
        for i in range(0, len(order), 128):
            idx = order[i:i + 128]
            x = prepare(_shifted(images.train.x[idx], recipe.shift, generator))
            loss = F.cross_entropy(model(x), data.train.y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
        if recipe.recalibrate:
            _recalibrate(model, data.train.x[:RECALIBRATION])
        model.eval()
        val_loss, val_acc = evaluate(model, data.validation)
        print(f"epoch {epoch}: val loss {val_loss:.4f}, val acc {100 * val_acc:.2f}%")
        score = -val_loss if recipe.best_by == "loss" else val_acc
        if score > best_score:
            best_score, best_state, best_epoch = score, copy.deepcopy(model.state_dict()), epoch
    model.load_state_dict(best_state)
    model.eval()
    facts = {
        "arch": arch, **asdict(recipe), "best_epoch": best_epoch, "seed": seed,
        "optimizer": ("AdamW" if recipe.optimizer == "adamw" else "SGD momentum 0.9") +
                     ", batch 128",
        "train_accuracy": accuracy(run_batched(model, data.train.x), data.train.y),
        "validation_accuracy": evaluate(model, data.validation)[1],
        "test_accuracy": accuracy(run_batched(model, data.test.x), data.test.y),
    }
    return model, facts


RECALIBRATION = 10_000  # training images BatchNorm statistics are recomputed on


def _recalibrate(model: torch.nn.Module, x: torch.Tensor) -> None:
    """BatchNorm running statistics recomputed as plain averages over `x`: torchvision's
    MobileNetV3 keeps them with momentum 0.01, too slow to follow weights that change every
    step, so in eval mode it scored at chance after an epoch that trained well."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), 500):
            model(x[i:i + 500])
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


def _shifted(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by a random offset of up to `shift` pixels (zeros come in)."""
    if shift == 0 or x.ndim != 4:
        return x
    padded = F.pad(x, (shift,) * 4)
    dy, dx = torch.randint(0, 2 * shift + 1, (2,), generator=generator).tolist()
    return padded[:, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]


def _scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe):
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, recipe.epochs)
    half, late = recipe.epochs // 2, recipe.epochs * 3 // 4
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: 1.0 if e + 1 < half else 0.1 if e + 1 <= late else 0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="paper_mlp")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="paper")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("models/paper_mlp.pt"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, facts = train(args.arch, RECIPES[args.recipe], seed=args.seed)
    torch.save(model.state_dict(), args.out)
    args.out.with_suffix(".json").write_text(json.dumps(facts, indent=2) + "\n")
    print(json.dumps(facts, indent=2))


if __name__ == "__main__":
    main()
