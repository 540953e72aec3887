from __future__ import annotations

import torch

from compressor.io.data import Dataset
from compressor.prune.config import FinetuneConfig
from compressor.prune.finetune import evaluate, finetune
from tests.conftest import graph_of, labelled
from tests.nets import tiny


def splits() -> tuple[Dataset, Dataset]:
    x, y = labelled(900)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    return Dataset(x[:700], y[:700]), Dataset(x[700:], y[700:])


def test_finetuning_improves_validation_accuracy_and_keeps_the_best_epoch():
    train, val = splits()
    gm = graph_of(tiny(), train.x[:2])
    _, before = evaluate(gm, val)
    result = finetune(gm, train, val, FinetuneConfig(max_epochs=5, patience=5, lr=3e-3))
    loss, after = evaluate(gm, val)
    assert result.epochs == 5
    assert after > before + 0.1
    assert (result.val_accuracy, result.val_loss) == (after, loss)  # the kept weights


def test_zero_epochs_changes_nothing():
    train, val = splits()
    gm = graph_of(tiny(), train.x[:2])
    state = {k: v.clone() for k, v in gm.state_dict().items()}
    assert finetune(gm, train, val, FinetuneConfig(max_epochs=0)).epochs == 0
    assert all(torch.equal(v, state[k]) for k, v in gm.state_dict().items())


def test_distillation_from_a_teacher_runs_and_learns():
    train, val = splits()
    teacher_net = graph_of(tiny(), train.x[:2])
    finetune(teacher_net, train, val, FinetuneConfig(max_epochs=5, patience=5, lr=3e-3, distill=0))
    teacher = teacher_net(train.x).detach()
    student = graph_of(tiny(), train.x[:2])
    _, before = evaluate(student, val)
    finetune(student, train, val, FinetuneConfig(max_epochs=3, patience=3, lr=3e-3, distill=1.0),
             teacher=teacher)
    assert evaluate(student, val)[1] > before + 0.1
