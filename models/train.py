"""Train an MLP on Fashion-MNIST and save its state_dict.

    python -m models.train                      # the paper's 784-300-200-100-50-10
    python -m models.train --widths 784,300,100,10 --out models/lenet_300_100.pt

Data: the first 6,000 training images are the validation split (early stopping, best epoch kept);
the official test set is only evaluated at the end.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from compressor.data import load_fashion_mnist
from compressor.finetune import accuracy, evaluate
from compressor.graph import run_batched
from models.mlp import PAPER_WIDTHS, mlp


def train(widths: tuple[int, ...], *, epochs: int, lr: float, seed: int) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(seed)
    data = load_fashion_mnist().map_x(lambda x: x.flatten(1))
    model = mlp(widths)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    generator = torch.Generator().manual_seed(seed)
    best_loss, best_state, best_epoch = float("inf"), None, 0
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(data.train), generator=generator)
        for i in range(0, len(order), 128):
            idx = order[i:i + 128]
            loss = F.cross_entropy(model(data.train.x[idx]), data.train.y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
        model.eval()
        val_loss, val_acc = evaluate(model, data.validation)
        print(f"epoch {epoch}: val loss {val_loss:.4f}, val acc {100 * val_acc:.2f}%")
        if val_loss < best_loss:
            best_loss, best_state, best_epoch = val_loss, copy.deepcopy(model.state_dict()), epoch
    model.load_state_dict(best_state)
    model.eval()
    facts = {
        "widths": list(widths), "epochs": epochs, "best_epoch": best_epoch, "lr": lr, "seed": seed,
        "optimizer": "SGD momentum 0.9, cosine schedule, batch 128",
        "train_accuracy": accuracy(run_batched(model, data.train.x), data.train.y),
        "validation_accuracy": evaluate(model, data.validation)[1],
        "test_accuracy": accuracy(run_batched(model, data.test.x), data.test.y),
    }
    return model, facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default=",".join(map(str, PAPER_WIDTHS)))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("models/paper_mlp.pt"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, facts = train(tuple(int(w) for w in args.widths.split(",")), epochs=args.epochs,
                         lr=args.lr, seed=args.seed)
    torch.save(model.state_dict(), args.out)
    args.out.with_suffix(".json").write_text(json.dumps(facts, indent=2) + "\n")
    print(json.dumps(facts, indent=2))


if __name__ == "__main__":
    main()
