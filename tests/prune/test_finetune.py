from __future__ import annotations

import torch

from compressor.io.data import Dataset
from compressor.prune import finetune as finetune_module
from compressor.prune.config import FinetuneConfig
from compressor.prune.finetune import evaluate, finetune
from tests.conftest import labelled
from tests.helpers import graph_of
from tests.nets import tiny


def splits() -> tuple[Dataset, Dataset]:
    x, y = labelled(900)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    return Dataset(x[:700], y[:700]), Dataset(x[700:], y[700:])


def test_finetuning_improves_validation_accuracy():
    train, val = splits()
    gm = graph_of(tiny(), train.x[:2])
    _, before = evaluate(gm, val)
    result = finetune(gm, train, val, FinetuneConfig(max_epochs=5, patience=5, lr=3e-3))
    loss, after = evaluate(gm, val)
    assert result.epochs == 5
    assert after > before + 0.1
    assert (result.val_accuracy, result.val_loss) == (after, loss)  # the kept weights


def test_the_best_epoch_is_kept_when_later_epochs_are_worse(monkeypatch):
    train, val = splits()
    gm = graph_of(tiny(), train.x[:2])
    scripted = iter([(1.0, 0.50), (0.8, 0.70), (0.9, 0.60), (0.7, 0.65)])  # before, epochs 1-3
    states = []

    def scripted_evaluate(model, data, **_):
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scripted)

    monkeypatch.setattr(finetune_module, "evaluate", scripted_evaluate)
    result = finetune(gm, train, val, FinetuneConfig(max_epochs=6, patience=2, lr=3e-3))
    assert (result.epochs, result.val_loss, result.val_accuracy) == (3, 0.8, 0.70)
    kept = gm.state_dict()
    assert all(torch.equal(kept[k], states[1][k]) for k in kept)  # epoch 1's weights
    assert not all(torch.equal(kept[k], states[3][k]) for k in kept)  # not the last epoch's


def test_zero_epochs_changes_nothing():
    train, val = splits()
    gm = graph_of(tiny(), train.x[:2])
    state = {k: v.clone() for k, v in gm.state_dict().items()}
    assert finetune(gm, train, val, FinetuneConfig(max_epochs=0)).epochs == 0
    assert all(torch.equal(v, state[k]) for k, v in gm.state_dict().items())


def test_distillation_learns_what_the_teacher_says_not_the_labels():
    train, val = splits()
    shifted = (train.y + 1) % 4  # a teacher that disagrees with every label
    teacher = torch.nn.functional.one_hot(shifted, 4).float() * 8
    val = Dataset(val.x, (val.y + 1) % 4)  # validation judges by the teacher's rule too
    student = graph_of(tiny(), train.x[:2])
    finetune(student, train, val, FinetuneConfig(max_epochs=8, patience=8, lr=1e-2, distill=1.0),
             teacher=teacher)
    predicted = student(train.x).argmax(1)
    assert float((predicted == shifted).double().mean()) > 0.7
    assert float((predicted == train.y).double().mean()) < 0.2


def test_a_goal_stops_training_at_the_first_epoch_that_reaches_it(monkeypatch):
    train, val = splits()
    gm = graph_of(tiny(), train.x[:2])
    scripted = iter([(1.0, 0.50), (0.8, 0.70), (0.7, 0.80), (0.6, 0.90)])  # before, epochs 1-3
    monkeypatch.setattr(finetune_module, "evaluate", lambda model, data, **_: next(scripted))
    result = finetune(gm, train, val, FinetuneConfig(max_epochs=6, patience=3), goal=0.75)
    assert (result.epochs, result.val_accuracy) == (2, 0.80)  # epoch 3 never runs
    scripted = iter([(1.0, 0.50)])
    assert finetune(gm, train, val, FinetuneConfig(max_epochs=6), goal=0.5).epochs == 0


def test_recover_trains_every_cycle_but_the_last_until_the_goal():
    tuning = FinetuneConfig(max_epochs=6, patience=3, recover=0.5, final_epochs=18)
    assert tuning.cycle(1, 5, 0.9) == (FinetuneConfig(max_epochs=18, patience=3, recover=0.5,
                                                      final_epochs=18), 0.9 - 0.005)
    last, goal = tuning.cycle(5, 5, 0.9)
    assert (last.max_epochs, last.patience, goal) == (18, 9, None)  # as without --recover
    assert tuning.cycle(1, 1, 0.9) == (tuning, None)  # one cycle: it is the last
    plain = FinetuneConfig(max_epochs=6, final_epochs=18)
    assert plain.cycle(1, 5, 0.9) == (plain, None)
    assert plain.cycle(5, 5, 0.9) == (plain.last(), None)


def test_with_a_weight_average_each_epoch_is_judged_and_kept_by_the_average(monkeypatch):
    train, val = splits()
    judged = []

    def trained(average, masks=None):
        gm = graph_of(tiny(), train.x[:2])
        torch.manual_seed(0)
        for p in gm.parameters():  # the same start for both runs
            torch.nn.init.normal_(p, std=0.3)
        start = {k: v.clone() for k, v in gm.state_dict().items()}
        judged.clear()

        def scripted_evaluate(model, data, **_):  # every epoch better than the start
            judged.append({k: v.clone() for k, v in model.state_dict().items()})
            return (1.0 / len(judged), 0.1 * len(judged))

        monkeypatch.setattr(finetune_module, "evaluate", scripted_evaluate)
        finetune(gm, train, val, FinetuneConfig(max_epochs=2, patience=2, lr=3e-2,
                                                average=average), masks=masks)
        return start, gm.state_dict()

    start, plain = trained(0)
    _, averaged = trained(1.0)
    assert all(torch.equal(averaged[k], judged[-1][k]) for k in averaged)  # judged = kept
    moved = {k: float((plain[k] - start[k]).norm()) for k in plain}
    lagged = {k: float((averaged[k] - start[k]).norm()) for k in plain}
    assert all(0 < lagged[k] < moved[k] for k in plain)  # an average of the path: behind it

    weight = next(k for k in start if k.endswith("weight"))
    mask = torch.rand(start[weight].shape, generator=torch.Generator().manual_seed(1)) < 0.5
    _, masked = trained(1.0, masks={weight: mask})
    assert torch.all(masked[weight][~mask] == 0) and torch.any(masked[weight][mask] != 0)
