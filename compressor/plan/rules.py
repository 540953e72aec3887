"""The rules the plan decides by, one function per choice: each returns the value and why.

Why each rule is what it is, with the measurements behind it: docs/method.md."""

from __future__ import annotations

from ..errors import OptionError
from ..measure.latency import RUN_FLOPS
from ..measure.widths import Kernel
from ..prune.config import Compensation, Criterion, Method, Scope
from .facts import DataFacts, GroupFacts, Machine, ModelFacts, cuda_available
from .options import Options

# (cycles, most epochs per cycle) of fine-tuned pruning: the paper's schedule for Linear
# neurons; one cycle where an epoch costs many MLP epochs (conv channels, tokens).
MLP_SCHEDULE = (5, 6)
CNN_SCHEDULE = (1, 5)
FINAL_EPOCHS = 3  # the last of several cycles fine-tunes this many times longer ...
LONGER_ABOVE = 0.85  # ... and past this target longer still, in proportion to what is left,
LONGER_MAX = 3  # at most this many times more
AVERAGE_EPOCHS = 1.2  # the weight average of MLP fine-tuning spans this many epochs
STEPS_WIDE = 4  # a layer is aligned to its kernel's step when it is this many steps wide
CONV_ALIGN = 8  # conv channels of narrow layers (a block of the blocked conv layout)
WIDE_LINEAR = 16  # a Linear group this wide (4 steps of 4) asks for the Gemm's step
FACTOR_SHARE = 0.8  # auto factor rank: this share of the units the target leaves a layer
MIN_RANK = 4
FACTOR_WIDE = 4  # auto factors a layer only where its inputs are this many times the rank

Reasoned = tuple[object, str]


def one_shot_why(options: Options, data: DataFacts) -> str:
    """Why nothing is fine-tuned: no data, no labels or epochs 0 ("" if fine-tuned)."""
    if not data.present:
        return "no data"
    if not data.labelled:
        return "no labels"
    return "epochs 0" if options.epochs == 0 else ""


def epochs(options: Options, model: ModelFacts, data: DataFacts) -> Reasoned:
    """Most fine-tuning epochs per cycle (0: none)."""
    why = one_shot_why(options, data)
    if why:
        return 0, f"{why}: one shot, no fine-tuning"
    if options.given("epochs"):
        return options.epochs, "given"
    if model.channels or model.tokens:
        return CNN_SCHEDULE[1], "conv channels or tokens: an epoch costs many MLP epochs"
    return MLP_SCHEDULE[1], "the paper's schedule for Linear neurons"


def cycles(options: Options, model: ModelFacts, tuned: bool) -> Reasoned:
    if not tuned:
        return 1, "one shot: nothing fine-tunes between cycles"
    if options.given("cycles"):
        return options.cycles, "given"
    if model.channels or model.tokens:
        return CNN_SCHEDULE[0], "conv channels or tokens: one cycle (an epoch costs many MLP " \
                                "epochs)"
    return MLP_SCHEDULE[0], "the paper's schedule for Linear neurons"


def final_epochs(options: Options, epochs: int) -> Reasoned:
    """Most epochs of the last of several cycles: FINAL_EPOCHS x `epochs`, and past
    LONGER_ABOVE in proportion to how few weights the target leaves (at most LONGER_MAX
    times more): a smaller network needs longer to recover what the cycles cost it."""
    if options.given("final_epochs"):
        return options.final_epochs, "given"
    scale = (1 - LONGER_ABOVE) / max(1 - options.target, 1e-9)
    longer = min(LONGER_MAX, max(1.0, scale))
    why = f"{FINAL_EPOCHS} x epochs" + (f", x {longer:.2g} past target {LONGER_ABOVE}"
                                        if longer > 1 else "")
    return round(FINAL_EPOCHS * epochs * longer), why


def average(options: Options, model: ModelFacts) -> Reasoned:
    if options.given("average"):
        return options.average, "given"
    if model.channels or model.tokens:
        return 0.0, "conv channels or tokens: not measured there, off"
    return AVERAGE_EPOCHS, "Linear neurons: judged and kept by a moving average of the weights"


def criterion(options: Options, model: ModelFacts, data: DataFacts, tuned: bool) -> Reasoned:
    """How units are ranked (score NEURONS)."""
    if options.given("criterion"):
        return options.criterion, "given"
    if options.given("method"):
        return options.method.criterion, f"method {options.method.value}"
    if not data.present:
        return Criterion.L1, "no data: each unit's weight norm over its layer's mean"
    if model.linear and not tuned:
        return Criterion.ERROR, (f"one shot ({one_shot_why(options, data)}), every pruned layer "
                                 "read by one Linear: dead units first, then the least output "
                                 "error after a least-squares refit")
    if tuned and model.linear and model.tokens:  # measured (docs/method.md)
        return Criterion.ERROR, ("fine-tuned, every pruned layer over tokens and read by one "
                                 "Linear: dead units first, then the least output error after "
                                 "a least-squares refit")
    if tuned and model.relu and model.channels:  # measured (docs/method.md)
        return Criterion.GROUP, ("fine-tuned, conv channels behind ReLUs: dead units first, "
                                 "then the norm of each unit's weights and of its columns in "
                                 "the next layers over its layer's mean")
    if tuned and model.relu:  # measured (docs/method.md)
        where = "every pruned layer behind ReLUs and read by one Linear" if model.linear else \
            "every pruned unit behind a ReLU"
        return Criterion.L2, (f"fine-tuned, {where}: dead units first, then each unit's "
                              "weight norm over its layer's mean")
    why = "fine-tuned" if tuned else f"one shot ({one_shot_why(options, data)}), not every " \
        "pruned layer read by one Linear alone (conv, Flatten or a join)"
    if model.relu:
        return Criterion.ACTIVATION, f"{why}: firing rate behind ReLUs"
    return Criterion.ENERGY, f"{why}: RMS output x consumer norm (units not behind ReLUs)"


LATENCY_BATCH = 256  # the large batch the report times besides 1, halved while one run() of
# the dense file would cost more than RUN_FLOPS


def latency_batch(model: ModelFacts) -> Reasoned:
    """The large batch the report times besides 1 (and the budgets' `batch`): LATENCY_BATCH,
    halved while one dense run() would cost more than RUN_FLOPS. The timing makes tens of runs
    of each file; at a BERT-base's FLOPs a batch of 256 would take hours."""
    batch = LATENCY_BATCH
    while batch > 1 and batch * model.flops > RUN_FLOPS:
        batch //= 2
    if batch == LATENCY_BATCH:
        return batch, "timed besides batch 1"
    return batch, (f"{LATENCY_BATCH} halved until one run of the dense file costs at most "
                   f"{RUN_FLOPS / 1e9:g} GFLOPs ({model.flops / 1e9:.2g} GFLOPs a "
                   "sample)")


TUNED_RIDGE = 0.1  # a refit before fine-tuning: pulled harder towards the trained weights


def compensation_ridge(options: Options, tuned: bool) -> float:
    """The least-squares refit's ridge: `ridge` where given; before fine-tuning, TUNED_RIDGE
    (a refit that moves the weights far from where training left them gives fine-tuning a
    worse start: measured on ResNet-18 and MobileNetV3, see benchmarks/vision.md); else the
    default, close to the plain least squares that one shot needs."""
    if options.given("ridge") or not tuned:
        return options.value("ridge")
    return TUNED_RIDGE


def method(options: Options, data: DataFacts) -> Reasoned:
    """How single weights are scored (score WEIGHTS)."""
    if options.given("method"):
        return options.method, "given"
    if data.present:
        return Method.ACTIVATION, "the paper's neurons & weights: firing count x |w|"
    return Method.MAGNITUDE, "no data: |w|"


def compensate(options: Options, model: ModelFacts, data: DataFacts, tuned: bool) -> Reasoned:
    if options.given("compensate"):
        return options.compensate, "given"
    if data.present:
        if tuned and model.linear and model.relu and not model.tokens:
            return Compensation.NONE, ("fine-tuned, every pruned layer behind ReLUs and read "
                                       "by one Linear: fine-tuning does better from the "
                                       "weights as they are")
        if tuned and not options.given("ridge"):
            return Compensation.LSQ, ("calibration data: the next layer refitted by least "
                                      "squares, held near its trained weights (ridge "
                                      f"{TUNED_RIDGE:g}): fine-tuning starts from them")
        return Compensation.LSQ, "calibration data: the next layer refitted by least squares"
    inexact = [g for g in model.groups if not g.mergeable]
    if len(inexact) == len(model.groups):
        return Compensation.NONE, "no data, and merging is exact only behind ReLU or LeakyReLU"
    dropped = f"; units behind {inexact[0].activation} are dropped" if inexact else ""
    return Compensation.MERGE, f"no data: neuron merging, exact behind ReLU/LeakyReLU{dropped}"


def scope(options: Options, model: ModelFacts) -> Reasoned:
    if options.given("scope"):
        return options.scope, "given"
    if model.channels:
        return Scope.LOCAL, ("conv channels: firing rates at different depths and resolutions "
                             "do not rank against each other")
    return Scope.GLOBAL, "one ranking across layers"


def device(options: Options) -> Reasoned:
    """Where counting, refits and fine-tuning run; a GPU that is not there is refused."""
    if not options.given("device"):
        return ("cuda", "torch sees a GPU") if cuda_available() else ("cpu", "no GPU")
    if options.device != "cpu" and not cuda_available():
        raise OptionError(f"`device` {options.device} asked for, but torch sees no CUDA GPU "
                          "here: use cpu (or auto)")
    return options.device, "given"


def torch_threads(options: Options, machine: Machine) -> tuple[int | None, str]:
    """torch's intra-op threads: `threads` or the user's own setting, fixed; else None:
    following the cores other work leaves free, re-checked during the run (a thread waiting
    for a core another process holds slows every parallel op it takes part in)."""
    if options.given("threads"):
        return options.threads, "given"
    facts = machine.threads()
    if facts.user is not None:
        return facts.user, f"your {facts.how}"
    return None, f"as many as of the {facts.usable} cores this process may use are free, " \
                 "re-checked during the run"


def align(options: Options, model: ModelFacts,
          machine: Machine) -> tuple[dict[str, int], dict[str, int], str, str]:
    """Per group, the multiple its width is rounded to in the last cycle; per conv group,
    its kernel's step for the time model (auto only); the multiples in words; and why.
    Auto: layers at least STEPS_WIDE steps wide in the steps this machine's kernels run in;
    narrower conv layers in multiples of CONV_ALIGN (the blocked layout needs them, and a
    whole step is too large a share of them), narrower Linear layers exact."""
    groups = model.groups + ((model.stream,) if model.stream else ())
    if options.given("align"):
        multiples = {g.name: options.align for g in groups}
        return multiples, {}, _in_words(multiples), "given"
    conv = machine.width_step(Kernel.CONV) if model.channels else None
    wide = any(not g.conv and g.width >= WIDE_LINEAR for g in model.groups)
    gemm = machine.width_step(Kernel.GEMM) if wide else None
    conv_step = (conv.multiple or CONV_ALIGN) if conv else CONV_ALIGN  # undecided: the block
    gemm_step = (gemm.multiple or 1) if gemm else 1  # undecided: exact widths
    multiples, narrow = {}, []
    for g in groups:
        step = conv_step if g.conv else gemm_step
        multiples[g.name] = step if g.width >= STEPS_WIDE * step else \
            min(step, CONV_ALIGN) if g.conv else 1
        narrow += [g.name] if step > 1 and g.width < STEPS_WIDE * step else []
    steps = {g.name: conv_step for g in model.groups if g.conv} if conv else {}
    why = "; ".join(found.describe(fallback) for found, fallback in
                    ((conv, CONV_ALIGN), (gemm, 1)) if found) or \
        "no Linear layer wide enough for the Gemm's steps"
    if narrow:
        why += f"; layers under {STEPS_WIDE} steps wide in multiples of {CONV_ALIGN} (conv) " \
               "or exact (Linear)"
    return multiples, steps, _in_words(multiples), why


def _in_words(multiples: dict[str, int]) -> str:
    """`16` if every group has that multiple, else `16 (a, b), exact (c)`; past three names
    the first and how many more (`16 (a +5)`)."""
    by_value: dict[int, list[str]] = {}
    for name, m in multiples.items():
        by_value.setdefault(m, []).append(name)
    word = {1: "exact"}
    if len(by_value) == 1:
        return word.get(next(iter(by_value)), str(next(iter(by_value))))
    return ", ".join(f"{word.get(m, m)} "
                     f"({', '.join(names) if len(names) <= 3 else f'{names[0]} +{len(names) - 1}'})"
                     for m, names in by_value.items())


def linear_step(options: Options, model: ModelFacts, machine: Machine) -> int:
    """The step auto factor ranks are rounded to: the given alignment, else the Gemm's."""
    if options.given("align"):
        return options.align
    wide = any(not g.conv and g.width >= WIDE_LINEAR for g in model.groups)
    return (machine.width_step(Kernel.GEMM).multiple or 1) if wide else 1


def auto_rank(out_features: int, in_features: int, target: float, step: int = 1,
              budget: int | None = None) -> int | None:
    """The rank auto factoring gives a layer at `target`, or None where it does not pay: a
    share of the units an even cut would leave, only where the inputs are many times wider.

    Where the layer is at least STEPS_WIDE Gemm steps wide the rank is rounded down to a
    multiple of `step` (a rank between steps runs as slowly as the next step); never up past
    a step, because the factor is most of what the target leaves. A rank below one step
    becomes one step where that costs at most FACTOR_SHARE of `budget` (the weights the
    target leaves the model); otherwise it stays exact."""
    rank = round(FACTOR_SHARE * (1 - target) * out_features)
    if step > 1 and out_features >= STEPS_WIDE * step:
        if rank >= step:
            rank = step * (rank // step)
        elif budget is not None and step * in_features <= FACTOR_SHARE * budget:
            rank = step
    if rank < MIN_RANK or in_features < FACTOR_WIDE * rank or rank >= out_features:
        return None
    return rank


def factor(options: Options, model: ModelFacts, tuned: bool, step: int) -> tuple[dict[str, int],
                                                                                 str]:
    """Per Linear layer to factor, its rank; and why."""
    if options.factor == 0:
        return {}, "given"
    if options.given("factor"):
        ranks = {layer.name: options.factor for layer in model.factorable
                 if options.factor < min(layer.in_features, layer.out_features)}
        if not ranks:
            raise OptionError(f"`factor` {options.factor}: nothing to factor: it splits pruned "
                              "Linear layers that read unpruned inputs (an MLP's first layer) "
                              f"and have more than {options.factor} inputs and outputs, and "
                              "this model has none: drop `factor` or give a smaller rank")
        return ranks, "given"
    if not (tuned and model.relu and model.linear):
        return {}, "off: auto factors only fine-tuned ReLU MLPs"
    budget = round((1 - options.target) * model.weights)
    ranks = {layer.name: rank for layer in model.factorable
             if (rank := auto_rank(layer.out_features, layer.in_features, options.target,
                                   step, budget)) is not None}
    if not ranks:
        return {}, "off: no layer whose inputs are many times the rank it would get"
    return ranks, f"a rank of {FACTOR_SHARE} x the units the target leaves, in Gemm steps"


def merge_exact(model: ModelFacts) -> GroupFacts | None:
    """The first group merging is not exact for, or None."""
    return next((g for g in model.groups if not g.mergeable), None)
