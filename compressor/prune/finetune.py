"""Fine-tuning between pruning cycles: Adam with cosine decay, distillation from the dense
model, an average of the weights over about the last epoch, and the best epoch (by validation
accuracy) kept."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import fx

from ..graph.capture import on_device
from ..io.cores import tick
from ..io.data import LOAD_BATCH, Dataset
from ..io.inputs import check_labels
from ..io.load import output_tensor
from ..io.ranks import mine, rank, size, total
from .config import FinetuneConfig


@dataclass(frozen=True)
class FinetuneResult:
    """Epochs run, and the validation loss and accuracy of the weights kept (the best epoch)."""

    epochs: int
    val_loss: float
    val_accuracy: float


def finetune(gm: fx.GraphModule, train: Dataset, val: Dataset, config: FinetuneConfig, *,
             teacher: torch.Tensor | None = None, seed: int = 0,
             masks: dict[str, torch.Tensor] | None = None, goal: float | None = None,
             log: Callable[[str], None] | None = None,
             progress: Callable[[int, int], None] | None = None,
             device: str = "cpu") -> FinetuneResult:
    """Train all remaining weights in place and keep the best epoch.

    The loss is cross-entropy, mixed with `config.distill` x the KL divergence to the teacher's
    softened logits when `teacher` is given. With `config.average`, each epoch's end is judged
    (and may be kept) by the moving average of the weights instead of the weights trained.
    The kept weights are those of the epoch with the best validation accuracy (ties: lower
    loss), counting the weights before training; training stops after `config.patience`
    epochs without a new best, or after `config.max_epochs`.

    Args:
        gm: the working graph.
        train: labelled training split.
        val: labelled validation split (never trained on).
        config: epochs, patience, learning rate, batch size, distillation.
        teacher: the dense model's logits for every sample of `train`.
        seed: seed of the batch order.
        masks: per parameter name, True where the weight may be non-zero: the others are
            zeroed before training and after every step, so pruned weights stay pruned.
        goal: stop after the first epoch whose validation accuracy reaches it (or starting
            there: no training).
        log: receives one line per epoch (training loss, validation loss and accuracy).
        progress: receives (samples done, total) during each epoch.
        device: where training runs (the graph is back on the CPU after).

    In a torch.distributed group, each process trains on its share of every epoch (a
    DistributedSampler's, `config.batch_size` split between them) under
    DistributedDataParallel, and validation is summed over the group, so every process keeps
    the same epoch and ends with the same weights.
    """
    with on_device(gm, device):
        return _finetune(gm, train, val, config, teacher=teacher, seed=seed, masks=masks,
                         goal=goal, log=log, progress=progress, device=device)


def _finetune(gm: fx.GraphModule, train: Dataset, val: Dataset, config: FinetuneConfig, *,
              teacher: torch.Tensor | None, seed: int, masks: dict[str, torch.Tensor] | None,
              goal: float | None, log: Callable[[str], None] | None, progress: Callable[[int, int], None] | None,
              device: str) -> FinetuneResult:
    best_loss, best_acc = evaluate(gm, val, device=device)
    best_state = copy.deepcopy(gm.state_dict())
    if config.max_epochs == 0 or (goal is not None and best_acc >= goal):
        return FinetuneResult(0, best_loss, best_acc)
    params = dict(gm.named_parameters())
    held = [(params[name], mask.to(device)) for name, mask in (masks or {}).items()]
    with torch.no_grad():
        for p, mask in held:  # the average starts from these: pruned weights zero in it too
            p.mul_(mask)
    optimizer = torch.optim.Adam(gm.parameters(), lr=config.lr)
    shard = _Shard(len(train), config.batch_size, seed)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer,
                                                          config.max_epochs * shard.steps)
    average = _Average(params, config.average, shard.steps)
    model = _replicated(gm, device)
    stale = epochs = 0
    while epochs < config.max_epochs and stale < config.patience:
        order = shard.order(epochs)
        summed_loss = 0.0
        for i in range(0, len(order), shard.batch):
            tick()
            idx = order[i:i + shard.batch]
            logits, y = model(train.x[idx].to(device)), train.y[idx]
            check_labels(y, logits.shape[1], source="the training data")
            loss = _loss(logits, y.to(device),
                         None if teacher is None else teacher[idx].to(device), config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                for p, mask in held:
                    p.mul_(mask)
                average.update()
            summed_loss += float(loss.detach()) * idx.numel()
            if progress is not None:
                progress(min(i + shard.batch, len(order)), len(order))
        epochs += 1
        summed_loss = total(summed_loss) / (len(order) * size())
        with average.applied():
            loss, acc = evaluate(gm, val, device=device)
            better = (acc, -loss) > (best_acc, -best_loss)
            if better:
                best_state = copy.deepcopy(gm.state_dict())
        if log is not None:
            log(f"epoch {epochs}/{config.max_epochs}: train loss {summed_loss:.4f}, "
                f"val loss {loss:.4f}, val acc {100 * acc:.2f}%")
        if better:
            best_loss, best_acc, stale = loss, acc, 0
        else:
            stale += 1
        if goal is not None and best_acc >= goal:
            break
    gm.load_state_dict(best_state)
    return FinetuneResult(epochs, best_loss, best_acc)


class _Shard:
    """This process's samples of each epoch, in batches: a shuffle of all of them alone; in a
    torch.distributed group, a DistributedSampler's share (equal for every process, so that
    every process takes the same number of steps) and a share of the batch."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.seed, self.processes = n, seed, size()
        self.batch = max(1, batch_size // self.processes)
        self.generator = torch.Generator().manual_seed(seed)
        share = -(-n // self.processes)  # DistributedSampler pads every share to this
        self.steps = -(-share // self.batch)

    def order(self, epoch: int) -> torch.Tensor:
        if self.processes == 1:
            return torch.randperm(self.n, generator=self.generator)
        sampler = torch.utils.data.DistributedSampler(
            range(self.n), num_replicas=self.processes, rank=rank(), shuffle=True,
            seed=self.seed)
        sampler.set_epoch(epoch)
        return torch.tensor(list(sampler), dtype=torch.int64)


def _replicated(gm: fx.GraphModule, device: str) -> torch.nn.Module:
    """`gm` under DistributedDataParallel in a group of processes (gradients averaged over
    them, buffers from rank 0), else `gm` itself."""
    if size() == 1:
        return gm
    ids = [torch.cuda.current_device()] if torch.device(device).type == "cuda" else None
    read = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    unread = any(name not in read for name, _ in gm.named_parameters())  # DDP must be told
    return torch.nn.parallel.DistributedDataParallel(gm, device_ids=ids,
                                                     find_unused_parameters=unread)


class _Average:
    """An exponential moving average of the trained parameters over about `epochs` epochs
    (none for 0 or None). Pruned weights stay zero in it: it only ever averages masked
    weights."""

    def __init__(self, params: dict[str, torch.nn.Parameter], epochs: float | None,
                 steps_per_epoch: int):
        self.params = list(params.values())
        self.keep = max(0.0, 1 - 1 / (epochs * steps_per_epoch)) if epochs else None
        self.mean = [p.detach().clone() for p in self.params] if self.keep else []

    @torch.no_grad()
    def update(self) -> None:
        for mean, p in zip(self.mean, self.params):
            mean.lerp_(p, 1 - self.keep)

    @contextlib.contextmanager
    def applied(self):
        """The average in the parameters' place for the block, the trained values after."""
        if not self.keep:
            yield
            return
        with torch.no_grad():
            trained = [p.detach().clone() for p in self.params]
            for mean, p in zip(self.mean, self.params):
                p.copy_(mean)
        try:
            yield
        finally:
            with torch.no_grad():
                for value, p in zip(trained, self.params):
                    p.copy_(value)


def _loss(logits: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor | None,
          config: FinetuneConfig) -> torch.Tensor:
    loss = F.cross_entropy(logits, y)
    if teacher is None or config.distill == 0:
        return loss
    t = config.temperature
    kd = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher / t, dim=1),
                  log_target=True, reduction="batchmean") * t * t
    return (1 - config.distill) * loss + config.distill * kd


def evaluate(gm: torch.nn.Module, data: Dataset, *, device: str = "cpu",
             batch_size: int = LOAD_BATCH) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy of `gm` on labelled `data`, read in batches."""
    loss, correct = 0.0, 0.0
    with torch.no_grad(), on_device(gm, device):
        for start in mine(range(0, len(data), batch_size)):
            x, y = data.x[start:start + batch_size], data.y[start:start + batch_size]
            logits = output_tensor(gm(x.to(device))).cpu()
            check_labels(y, logits.shape[1], source="the data")
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
    return total(loss) / len(data), total(correct) / len(data)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of samples whose largest logit is the label."""
    return float((logits.argmax(dim=1) == y).double().mean())
