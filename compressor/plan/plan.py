"""The plan of one run: every choice left to the tool made once, from the options as given,
facts about the model and facts about the machine, each with the reason it was made. The
stages receive only concrete values; the report prints the plan."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping

import compressor.plan.rules as rules  # `from . import rules` would import the package itself

from ..errors import OptionError
from ..export.pack import Format
from ..measure.budgets import Budgets
from ..measure.latency import BenchConfig
from ..prune.config import (
    CALIBRATION_BATCH,
    CompensateConfig,
    Compensation,
    Criterion,
    FinetuneConfig,
    Method,
    Of,
    PruneConfig,
    Score,
    SelectConfig,
)
from .facts import DataFacts, Machine, ModelFacts
from .options import Options



@dataclass(frozen=True)
class Decision:
    """One choice: the option, the value used, why, and whether the user gave it."""

    option: str
    value: object
    reason: str
    given: bool

    def shown(self) -> str:
        value = self.value.value if hasattr(self.value, "value") else self.value
        if isinstance(value, dict):  # factor ranks
            value = ", ".join(f"{k} at rank {v}" for k, v in value.items()) or "off"
        return str(value)


@dataclass(frozen=True)
class Plan:
    """Everything a run does besides reading and writing files, every value concrete.

    Attributes:
        prune: the pruning cycles and their stages' configs.
        finetune: fine-tuning between cycles (max_epochs 0: none).
        factor: per Linear layer to factor before pruning, its rank (empty: none).
        format: how the written file stores its weights.
        rank_energy: share of squared singular values lowrank factors keep.
        bench: the latency measurement (None: not measured).
        batch: the batch size latency budgets and kernel choices are checked at.
        budgets: limits the written file must meet.
        seed: seed of data splits, fine-tuning and random choices.
        torch_threads: torch's intra-op threads (None: following the cores free now).
        onnx_threads: onnxruntime's intra-op threads for latency and kernel choices.
        decisions: every choice, with its reason.
        warnings: options given that do nothing in this plan.
    """

    prune: PruneConfig
    finetune: FinetuneConfig
    factor: Mapping[str, int] = field(default_factory=dict)
    format: Format = Format.DENSE
    rank_energy: float = 0.99
    bench: BenchConfig | None = None
    batch: int = 1
    budgets: Budgets = field(default_factory=Budgets)
    seed: int = 0
    torch_threads: int | None = None
    onnx_threads: int = 1
    decisions: tuple[Decision, ...] = ()
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "factor", MappingProxyType(dict(self.factor)))

    @property
    def tuned(self) -> bool:
        return self.finetune.max_epochs > 0

    def decision(self, option: str) -> Decision | None:
        return next((d for d in self.decisions if d.option == option), None)


def check(options: Options, *, data: bool) -> None:
    """Refuse options that contradict each other or need data that is not there (`data`
    False), before any work is done."""
    given = options.given
    if given("method") and given("criterion"):
        raise OptionError("give `method` or `criterion`, not both (`criterion` is the finer "
                          "choice for whole units)")
    if options.value("score") is Score.WEIGHTS:
        for name, why in (("criterion", "ranks whole units: score single weights by `method`"),
                          ("factor", "splits layers before whole units are pruned; single "
                                     "weights are pruned in place"),
                          ("of", "counts whole units; single weights are counted as weights")):
            if given(name) and (name != "of" or options.of is Of.FLOPS) and \
                    (name != "factor" or options.factor):
                raise OptionError(f"`{name}` {why}: drop `{name}` or use `score` neurons")
        if options.prune_stream:
            raise OptionError("`prune_stream` removes whole features of the residual stream; "
                              "with `score` neurons-weights single weights are pruned in "
                              "place: drop `prune_stream` or use `score` neurons")
        if options.compensate not in (None, Compensation.NONE):
            raise OptionError(f"`compensate` {options.compensate.value} compensates whole "
                              "units; with `score` neurons-weights the remaining weights are "
                              "fine-tuned instead: drop `compensate`")
    if options.budgets.needs_latency and options.latency is False:
        raise OptionError("a latency budget needs the latency measurement, which `latency` "
                          "turns off: drop one of them")
    if data:
        return
    if options.prune_stream:
        raise OptionError("`prune_stream` needs calibration data (the stream is rotated to the "
                          "directions its tokens use and cut where they use it least): pass "
                          "`data`, or drop `prune_stream`")
    if given("normalize"):
        raise OptionError("`normalize` applies to data: pass `data`, or drop `normalize`")
    if options.budgets.min_accuracy is not None or options.budgets.min_agreement is not None:
        raise OptionError("accuracy and agreement budgets are measured on data: pass `data` "
                          "(labelled for accuracy)")
    ranked = options.criterion or (options.method.criterion if given("method") else None)
    if ranked is not None and ranked.needs_data:
        what = f"`criterion` {ranked.value}" if given("criterion") else \
            f"`method` {options.method.value}"
        raise OptionError(f"ranking by {what} needs calibration data: pass `data`, or rank by "
                          "weights with `method` magnitude")
    if options.compensate is not None and options.compensate.needs_data:
        raise OptionError(f"`compensate` {options.compensate.value} needs calibration data: "
                          "pass `data`, or use `compensate` merge (data-free) or none")


def plan(options: Options, model: ModelFacts, data: DataFacts, machine: Machine, *,
         variants: bool = False) -> Plan:
    """Decide every choice of a run.

    Args:
        options: what the user gave.
        model: facts of the model's trace.
        data: whether there is data, and labels.
        machine: asked for the kernels' width steps where alignment is left to the plan.
        variants: whether every variant of the result is written too (they use
            `rank_energy`).

    Returns:
        The plan; options given that do nothing in it are in its warnings.
    """
    check(options, data=data.present)
    machine = _Once(machine)
    made = _Decisions(options)
    score = options.value("score")
    device = made("device", *rules.device(options))
    epochs = made("epochs", *rules.epochs(options, model, data))
    tuned = epochs > 0
    cycles = made("cycles", *rules.cycles(options, model, tuned))
    seed = options.value("seed")
    common = dict(ridge=options.value("ridge"), batch_size=CALIBRATION_BATCH, device=device)
    if score is Score.NEURONS:
        criterion = made("criterion", *rules.criterion(options, model, data, tuned))
        if criterion is Criterion.ERROR and not model.linear:
            other = next((g.name for g in model.groups if not g.one_linear), "some layer")
            raise OptionError(f"`criterion` error cannot rank the units of {other}: it needs "
                              "exactly one Linear that reads them directly (not a convolution, "
                              "a Flatten or a residual join): use activation, energy, l1 or l2")
        compensation = made("compensate", *rules.compensate(options, model, data, tuned))
        inexact = rules.merge_exact(model)
        if compensation is Compensation.MERGE and options.given("compensate") and inexact:
            raise OptionError(f"`compensate` merge is exact only for units read through ReLU "
                              f"or LeakyReLU, and layer {inexact.name} is read through "
                              f"{inexact.activation}: use lsq (with data) or none")
        multiples, steps, shown, why = rules.align(options, model, machine)
        made("align", shown, why)
        ranks, why = rules.factor(options, model, tuned, rules.linear_step(options, model,
                                                                           machine))
        made("factor", ranks, why)
        method = Method.MAGNITUDE
    else:
        criterion, compensation, multiples, steps, ranks = Criterion.L1, Compensation.NONE, \
            {}, {}, {}
        method = made("method", *rules.method(options, data))
    scope = made("scope", *rules.scope(options, model))
    prune = PruneConfig(
        options.target, SelectConfig(criterion, scope, seed=seed, **common),
        CompensateConfig(compensation, options.value("merge_threshold"),
                         **{**common, "ridge": rules.compensation_ridge(options, tuned)}),
        of=options.value("of"), score=score, method=method, cycles=cycles,
        calibration_samples=options.value("calibration_samples"),
        batch_size=CALIBRATION_BATCH, device=device, align=multiples, steps=steps, seed=seed,
        trace_spectra=options.value("trace_spectra"),
        stream=options.value("prune_stream") if score is Score.NEURONS else 0.0)
    finetune = _finetune(options, model, made, epochs, cycles)
    fmt = options.value("format")
    latency = options.value("latency")
    batch = options.value("batch")
    bench = BenchConfig(batches=tuple(sorted({1, made("latency", *rules.latency_batch(model)),
                                              batch})),
                        threads=options.value("threads")) if latency else None
    torch_threads, why = rules.torch_threads(options, machine)
    onnx_threads = options.value("threads")
    made("threads", f"torch {torch_threads or 'free cores'}, onnxruntime {onnx_threads}", why)
    result = Plan(prune, finetune, ranks, fmt, options.value("rank_energy"), bench, batch,
                  options.budgets, seed, torch_threads, onnx_threads, made.in_order())
    return _with_warnings(result, options, data, variants)


def _finetune(options: Options, model: ModelFacts, made: _Decisions, epochs: int,
              cycles: int) -> FinetuneConfig:
    if not epochs:
        return FinetuneConfig(max_epochs=0)
    final = made("final_epochs", *rules.final_epochs(options, epochs)) if cycles > 1 else None
    return FinetuneConfig(
        max_epochs=epochs, patience=options.value("patience"), lr=options.value("lr"),
        batch_size=options.value("batch_size"), distill=options.value("distill"),
        temperature=options.value("temperature"), final_epochs=final,
        recover=options.recover, average=made("average", *rules.average(options, model)))


class _Once:
    """Asks the machine each question once."""

    def __init__(self, machine: Machine) -> None:
        self.machine, self.answers = machine, {}

    def width_step(self, kernel):
        if kernel not in self.answers:
            self.answers[kernel] = self.machine.width_step(kernel)
        return self.answers[kernel]

    def threads(self):
        return self.machine.threads()


# how the report lists the decisions
ORDER = ("criterion", "method", "compensate", "scope", "cycles", "epochs", "final_epochs",
         "average", "align", "factor", "device", "threads", "latency")


class _Decisions:
    """Decisions as they are made; listed in ORDER."""

    def __init__(self, options: Options) -> None:
        self.options, self.decisions = options, []

    def __call__(self, option: str, value, reason: str):
        self.decisions.append(Decision(option, value, reason, self.options.given(option)))
        return value

    def in_order(self) -> tuple[Decision, ...]:
        return tuple(sorted(self.decisions, key=lambda d: ORDER.index(d.option)))


def _with_warnings(result: Plan, options: Options, data: DataFacts, variants: bool) -> Plan:
    """`result` with a warning for every option given that does nothing in it: each needs
    something that does not hold."""
    tuned, prune = result.tuned, result.prune
    measures = result.bench is not None or result.format in (Format.CSR, Format.AUTO)
    lowrank = result.format is Format.LOWRANK or variants
    uses_ridge = prune.select.criterion is Criterion.ERROR or \
        prune.compensate.method is Compensation.LSQ
    needs = [
        ("merge_threshold", "`compensate` merge", prune.compensate.method is Compensation.MERGE
         and prune.score is Score.NEURONS),
        ("rank_energy", "`format` lowrank or variants", lowrank),
        ("ridge", "`criterion` error or `compensate` lsq", uses_ridge),
        ("calibration_samples", "data", data.present),
        ("batch", "the latency measurement or `format` csr/auto", measures),
        ("final_epochs", "several fine-tuned cycles", tuned and prune.cycles > 1),
        ("recover", "several fine-tuned cycles", tuned and prune.cycles > 1),
        ("align", "`score` neurons", prune.score is Score.NEURONS),
    ]
    needs += [(name, "fine-tuning (labelled data and `epochs` > 0)", tuned) for name in
              ("cycles", "patience", "lr", "distill", "temperature", "average", "batch_size")]
    needs += [("epochs", "labelled data", data.labelled)]
    warnings = [f"`{name}` does nothing here: it needs {what}" for name, what, holds in needs
                if options.given(name) and not holds and
                not (name == "epochs" and options.epochs == 0)]
    return replace(result, warnings=tuple(warnings))
