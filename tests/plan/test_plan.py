"""The plan: every choice left to the tool, decided once from the options, the model and the
machine, with its reason; options that do nothing are warned about, contradictions refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.errors import OptionError
from compressor.graph.trace import trace
from compressor.measure.budgets import Budgets
from compressor.measure.widths import Kernel, WidthMultiple
from compressor.plan import DataFacts, ModelFacts, Options, model_facts, plan
from compressor.plan.facts import GroupFacts, LayerFacts, ThreadFacts
from compressor.measure.latency import RUN_FLOPS
from compressor.plan.rules import (AVERAGE_EPOCHS, CNN_SCHEDULE, LATENCY_BATCH, LONGER_MAX,
                                   MLP_SCHEDULE, TUNED_RIDGE, auto_rank)
from compressor.prune.config import Compensation, Criterion, Method, Scope
from tests.helpers import graph_of

LABELLED, UNLABELLED, NONE = DataFacts(True, True), DataFacts(True, False), DataFacts(False)


class Machine:
    """A machine whose kernels run in fixed steps, and that counts what it was asked."""

    def __init__(self, conv: int = 16, gemm: int = 16) -> None:
        self.steps = {Kernel.CONV: conv, Kernel.GEMM: gemm}
        self.asked: list[Kernel] = []

    def width_step(self, kernel: Kernel) -> WidthMultiple:
        self.asked.append(kernel)
        return WidthMultiple(self.steps[kernel], "measured", kernel)

    def threads(self) -> ThreadFacts:
        return ThreadFacts(2)


def _group(name: str, width: int = 64, *, conv: bool = False, relu: bool = True,
           tokens: bool = False) -> GroupFacts:
    return GroupFacts(name, width, conv, tokens, relu, relu, "relu" if relu else "gelu",
                      one_linear=not conv)


MLP = ModelFacts((_group("0", 300), _group("2", 100)), linear=True, weights=320_700,
                 factorable=(LayerFacts("0", 784, 300),))
GELU_MLP = ModelFacts((_group("0", 64, relu=False),), linear=True, weights=10_000)
CNN = ModelFacts((_group("0", 32, conv=True), _group("2", 64, conv=True),
                  _group("5", 128), _group("7", 48)), linear=False, weights=300_000)


def _plan(model=MLP, data=LABELLED, machine=None, **options):
    return plan(Options(target=options.pop("target", 0.5), **options), model, data,
                machine or Machine())


def _chosen(result, option):
    return result.decision(option).value


def test_a_fine_tuned_relu_mlp_is_ranked_by_weight_norm_without_refit():
    result = _plan()
    assert _chosen(result, "criterion") is Criterion.L2
    assert _chosen(result, "compensate") is Compensation.NONE
    assert (result.prune.cycles, result.finetune.max_epochs) == MLP_SCHEDULE
    assert result.prune.select.scope is Scope.GLOBAL
    assert result.finetune.average == AVERAGE_EPOCHS
    assert "weight norm" in result.decision("criterion").reason


def test_one_shot_ranks_by_error_and_refits_and_says_why_it_is_one_shot():
    for data, why in ((UNLABELLED, "no labels"), (LABELLED, "epochs 0")):
        result = _plan(data=data, epochs=0 if data is LABELLED else None)
        assert (_chosen(result, "criterion"), _chosen(result, "compensate")) == \
            (Criterion.ERROR, Compensation.LSQ)
        assert why in result.decision("criterion").reason
        assert result.prune.cycles == 1 and result.finetune.max_epochs == 0


def test_conv_channels_prune_locally_in_one_cycle_by_group_weight_norm_with_refits():
    """Fine-tuned conv channels behind ReLUs: the norm of each unit's row and consumer
    columns, refitted (a conv is not read by one Linear); one shot: the firing rate,
    refitted."""
    result = _plan(model=CNN)
    assert result.prune.select.scope is Scope.LOCAL
    assert (result.prune.cycles, result.finetune.max_epochs) == CNN_SCHEDULE
    assert _chosen(result, "criterion") is Criterion.GROUP
    assert "conv channels behind ReLUs" in result.decision("criterion").reason
    assert _chosen(result, "compensate") is Compensation.LSQ
    one_shot = _plan(model=CNN, epochs=0)
    assert (_chosen(one_shot, "criterion"), _chosen(one_shot, "compensate")) == \
        (Criterion.ACTIVATION, Compensation.LSQ)
    # a refit that fine-tuning follows is held nearer the trained weights; one given is kept
    assert result.prune.compensate.ridge == TUNED_RIDGE > one_shot.prune.compensate.ridge
    assert "held near its trained weights" in result.decision("compensate").reason
    assert _plan(model=CNN, ridge=1e-4).prune.compensate.ridge == 1e-4
    assert result.finetune.average == 0
    tokens = ModelFacts((_group("fc1", 64, tokens=True),), linear=True, weights=9_000)
    assert (_plan(model=tokens).prune.cycles, _plan(model=tokens).finetune.max_epochs) == \
        CNN_SCHEDULE


def test_units_behind_other_activations_are_ranked_by_energy_when_fine_tuned():
    assert _chosen(_plan(model=GELU_MLP), "criterion") is Criterion.ENERGY
    assert _chosen(_plan(model=GELU_MLP), "compensate") is Compensation.LSQ


def test_units_over_tokens_are_ranked_by_error_and_refitted_fine_tuned_or_not():
    """A transformer's feed-forward units and heads (over tokens, each read by one Linear):
    the error ranking with its refit, held near the trained weights before fine-tuning, and
    so where its feed-forward units sit behind ReLUs."""
    for relu in (False, True):
        ffn = ModelFacts((_group("fc1", 64, tokens=True, relu=relu),), linear=True,
                         weights=9_000)
        result = _plan(model=ffn)
        assert (_chosen(result, "criterion"), _chosen(result, "compensate")) == \
            (Criterion.ERROR, Compensation.LSQ)
        assert "fine-tuned, every pruned layer over tokens" in \
            result.decision("criterion").reason
        assert result.prune.compensate.ridge == TUNED_RIDGE
        one_shot = _plan(model=ffn, epochs=0)
        assert (_chosen(one_shot, "criterion"), _chosen(one_shot, "compensate")) == \
            (Criterion.ERROR, Compensation.LSQ)
        assert one_shot.prune.compensate.ridge < TUNED_RIDGE


def test_without_data_units_are_ranked_by_norm_and_merged_where_exact():
    result = _plan(data=NONE)
    assert (_chosen(result, "criterion"), _chosen(result, "compensate")) == \
        (Criterion.L1, Compensation.MERGE)
    assert _chosen(_plan(model=GELU_MLP, data=NONE), "compensate") is Compensation.NONE
    mixed = ModelFacts((_group("0"), _group("2", relu=False)), linear=True, weights=9_000)
    assert "dropped" in _plan(model=mixed, data=NONE).decision("compensate").reason


def test_what_the_user_gives_is_kept_and_marked_given():
    result = _plan(criterion="activation", compensate="lsq", scope="local", cycles=3,
                   epochs=2, average=0)
    assert (_chosen(result, "criterion"), _chosen(result, "compensate")) == \
        (Criterion.ACTIVATION, Compensation.LSQ)
    assert (result.prune.select.scope, result.prune.cycles, result.finetune.max_epochs,
            result.finetune.average) == (Scope.LOCAL, 3, 2, 0)
    assert all(result.decision(o).given for o in ("criterion", "compensate", "scope", "cycles"))
    assert not result.decision("final_epochs").given
    # the method names a criterion; a given criterion keeps the refit left to the model
    assert _chosen(_plan(method="magnitude"), "criterion") is Criterion.L1
    assert _chosen(_plan(criterion="activation"), "compensate") is Compensation.NONE


def test_auto_is_the_same_as_not_giving_an_option():
    given = _plan(criterion="auto", compensate="auto", scope="auto", align="auto",
                  factor="auto", device="auto")
    assert given.decisions == _plan().decisions


def test_the_last_cycles_epochs_grow_past_85_percent_in_proportion_to_what_is_left():
    finals = [_plan(target=t).finetune.final_epochs for t in (0.5, 0.85, 0.9, 0.95, 0.99)]
    assert finals == [18, 18, 27, LONGER_MAX * 18, LONGER_MAX * 18]
    assert _plan(target=0.95, final_epochs=7).finetune.final_epochs == 7
    assert _plan(target=0.95).finetune.last().patience == 3 * 9


def test_auto_alignment_uses_the_machine_step_only_for_layers_four_steps_wide():
    result = _plan(model=CNN, machine=Machine(conv=16, gemm=16))
    assert dict(result.prune.align) == {"0": 8, "2": 16, "5": 16, "7": 1}
    assert dict(result.prune.steps) == {"0": 16, "2": 16}  # conv groups' time model
    exact = _plan(model=CNN, machine=Machine(conv=16, gemm=1))
    assert exact.prune.align["5"] == 1
    given = _plan(model=CNN, align=4)
    assert set(given.prune.align.values()) == {4} and not given.prune.steps


def test_the_machine_is_asked_only_for_what_the_model_has():
    machine = Machine()
    _plan(model=MLP, machine=machine)
    assert machine.asked == [Kernel.GEMM]  # once, for alignment and the factor's rank
    narrow = ModelFacts((_group("0", 12),), linear=True, weights=500)
    machine = Machine()
    _plan(model=narrow, machine=machine)
    assert machine.asked == []
    machine = Machine()
    _plan(model=CNN, machine=machine, align=8)
    assert machine.asked == []


PAPER_MLP = 320_700  # weights


@pytest.mark.parametrize("out, inputs, target, step, rank", [
    (300, 784, 0.95, 1, 12),    # the paper MLP at 95%, widths exact
    (300, 784, 0.85, 1, 36),
    (300, 784, 0.85, 16, 32),   # in the Gemm's steps of 16
    (300, 784, 0.9, 16, 16),    # 24: rounded down, never up (the factor is most weights)
    (300, 784, 0.95, 16, 16),   # below one step: one step, 12,544 of the 16,035 weights left
    (300, 784, 0.98, 16, 5),    # one step would be twice the 6,414 left: exact
    (48, 784, 0.5, 16, 19),     # too narrow for steps: exact
    (300, 784, 0.5, 1, 120),
    (32, 20, 0.5, 1, None),     # inputs not 4 x the rank: factoring cannot pay
    (50, 784, 0.95, 1, None),   # rank below 4
])
def test_auto_rank(out, inputs, target, step, rank):
    assert auto_rank(out, inputs, target, step, round((1 - target) * PAPER_MLP)) == rank


def test_factoring_is_auto_only_for_fine_tuned_relu_mlps():
    assert dict(_plan(target=0.85).factor) == {"0": 32}
    assert dict(_plan(target=0.85, data=UNLABELLED).factor) == {}
    assert dict(_plan(target=0.85, factor="off").factor) == {}
    assert dict(_plan(target=0.85, factor=12, data=UNLABELLED).factor) == {"0": 12}
    with pytest.raises(OptionError, match="nothing to factor"):
        _plan(factor=400)


def test_options_that_do_nothing_are_warned_about_by_name():
    warned = _plan(data=UNLABELLED, merge_threshold=0.3, rank_energy=0.9, epochs=4, lr=0.01)
    named = {w.split("`")[1] for w in warned.warnings}
    assert named == {"merge_threshold", "rank_energy", "epochs", "lr"}
    assert _plan(data=NONE, merge_threshold=0.3).warnings == ()  # merging: it does something
    assert _plan(format="lowrank", rank_energy=0.9).warnings == ()
    assert _plan(data=LABELLED, epochs=0).warnings == ()


@pytest.mark.parametrize("options, model, data, named", [
    ({"method": "magnitude", "criterion": "l1"}, MLP, LABELLED, "`method` or `criterion`"),
    ({"score": "neurons-weights", "criterion": "l1"}, MLP, LABELLED, "`criterion`"),
    ({"score": "neurons-weights", "factor": 8}, MLP, LABELLED, "`factor`"),
    ({"score": "neurons-weights", "of": "flops"}, MLP, LABELLED, "`of`"),
    ({"score": "neurons-weights", "compensate": "lsq"}, MLP, LABELLED, "`compensate`"),
    ({"criterion": "activation"}, MLP, NONE, "needs calibration data"),
    ({"compensate": "lsq"}, MLP, NONE, "`compensate` lsq needs"),
    ({"compensate": "merge"}, GELU_MLP, NONE, "exact only for units"),
    ({"criterion": "error"}, CNN, LABELLED, "`criterion` error cannot rank the units of 0"),
    ({"latency": False, "budgets": Budgets(max_latency_ms=1.0)}, MLP, LABELLED, "`latency`"),
    ({"budgets": Budgets(min_accuracy=0.5)}, MLP, NONE, "pass `data`"),
])
def test_contradictions_are_refused_naming_the_options(options, model, data, named):
    with pytest.raises(OptionError, match=named):
        _plan(model=model, data=data, **options)


def test_a_missing_gpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(OptionError, match="no CUDA GPU"):
        _plan(device="cuda")
    assert _plan().prune.device == "cpu"


def test_model_facts_read_the_trace():
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 32),
                        nn.GELU(), nn.Linear(32, 4))
    gm = graph_of(net, torch.rand(2, 1, 8, 8))
    facts = model_facts(gm, trace(gm))
    assert [(g.name, g.width, g.conv, g.relu, g.mergeable) for g in facts.groups] == \
        [("0", 8, True, True, True), ("3", 32, False, False, False)]
    assert not facts.linear and facts.channels and facts.weights == 72 + 288 * 32 + 128
    mlp = graph_of(nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 2)),
                   torch.rand(2, 20))
    facts = model_facts(mlp, trace(mlp))
    assert facts.linear and facts.factorable == (LayerFacts("0", 20, 16),)
    assert facts.flops == 2 * (20 * 16 + 16 * 2)


def test_single_weights_get_a_method_and_no_unit_choices():
    result = _plan(score="neurons-weights")
    assert _chosen(result, "method") is Method.ACTIVATION
    assert result.decision("criterion") is None and result.decision("align") is None
    assert _chosen(_plan(score="neurons-weights", data=NONE), "method") is Method.MAGNITUDE


def test_an_undecided_timing_keeps_conv_channels_in_the_block_and_linear_widths_exact():
    class Undecided(Machine):
        def width_step(self, kernel):
            return WidthMultiple(None, "undecided", kernel)

    result = _plan(model=CNN, machine=Undecided())
    assert dict(result.prune.align) == {"0": 8, "2": 8, "5": 1, "7": 1}
    assert "not decisive" in result.decision("align").reason


def test_torch_threads_follow_the_free_cores_unless_given_or_set_by_the_user():
    assert _plan().torch_threads is None and _plan().onnx_threads == 1
    assert "free" in _plan().decision("threads").reason
    given = _plan(threads=3)
    assert (given.torch_threads, given.onnx_threads) == (3, 3)

    class Capped(Machine):
        def threads(self) -> ThreadFacts:
            return ThreadFacts(2, 1, "OMP_NUM_THREADS")

    capped = _plan(machine=Capped())
    assert capped.torch_threads == 1 and "OMP_NUM_THREADS" in capped.decision("threads").reason


def test_the_large_latency_batch_shrinks_with_the_cost_of_a_run():
    """A model whose dense run at the large batch would cost more than the bound is timed at
    the largest halving that does not (a BERT-base over 128 tokens: batch 1), never below 1;
    the budgets' batch is timed besides."""
    def batches(flops, **options):
        model = ModelFacts(MLP.groups, linear=True, weights=MLP.weights, flops=flops)
        return _plan(model=model, **options).bench.batches

    assert batches(641_400) == (1, LATENCY_BATCH)
    assert batches(RUN_FLOPS // LATENCY_BATCH + 1) == (1, LATENCY_BATCH // 2)
    assert batches(58_205_440) == (1, 64)
    assert batches(22 * 10**9) == (1,)
    assert batches(22 * 10**9, batch=8) == (1, 8)
    decision = _plan(model=ModelFacts(MLP.groups, linear=True, weights=1, flops=58_205_440))
    assert _chosen(decision, "latency") == 64 and "halved" in decision.decision("latency").reason
    assert _plan(latency=False).decision("latency") is None
