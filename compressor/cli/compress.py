"""`compress MODEL`: the main command."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click.core import ParameterSource

from ..commands.compress import Paths, compress
from ..export.pack import Format
from ..plan import DEFAULTS, Options
from ..prune.config import Compensation, Criterion, Method, Of, Scope, Score
from ..report.check import CheckResult, format_check
from ..report.compress import format_table
from .common import broken, flag_names, run_library, with_flags
from .options import ALIGN, FACTOR, INT_LIST, NORMALIZE, TARGET, budget_options, budgets_from
from .sections import SectionedCommand

SECTIONS = [
    ("Target", ["target", "of"]),
    ("Data and model", ["data", "input_shape", "normalize", "arch", "logits", "trust_pickle"]),
    ("Output", ["output", "format", "report", "quiet"]),
    ("Budgets (exit 1 if the file breaks one)",
     ["max_size", "max_params", "max_flops", "min_accuracy", "min_agreement", "max_latency",
      "max_latency_ratio", "batch"]),
    ("Method (auto: from the model, the data and the CPU; the report says why)",
     ["criterion", "compensate", "scope", "align", "factor", "prune_stream"]),
    ("Fine-tuning (labelled data)", ["epochs", "cycles", "lr", "distill"]),
]
AUTO = "auto"


def _choices(enum) -> click.Choice:
    return click.Choice([AUTO, *(e.value for e in enum)])


@click.command("compress", cls=SectionedCommand, sections=SECTIONS,
               context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="compressor")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", "-t", type=TARGET, required=True, metavar="T",
              help="Fraction to remove, 0 < T < 1 (0.85 or 85%).")
@click.option("--of", type=click.Choice([o.value for o in Of]), default=DEFAULTS["of"].value,
              show_default=True, help="What --target counts: weights or FLOPs per sample.")
@click.option("--data", "-d", metavar="DATA",
              help="fashion-mnist, .npz/.npy/.pt or module:callable; labels: fine-tuning.")
@click.option("--scope", type=_choices(Scope), default=AUTO, show_default=True,
              metavar="NAME", help="global: one ranking; local: same share per layer")
@click.option("--cycles", type=click.IntRange(1, 50), metavar="N",
              help="Pruning cycles, fine-tuned between [auto]")
@click.option("--score", type=click.Choice([s.value for s in Score]),
              default=DEFAULTS["score"].value, show_default=True,
              help="Remove whole neurons, or single weights (zeros stay in the layers).")
@click.option("--method", type=click.Choice([m.value for m in Method]),
              help="Score built from firing counts, magnitudes or at random (single weights; "
                   "for neurons: a criterion).  [auto]")
@click.option("--criterion", type=_choices(Criterion), default=AUTO, show_default=True,
              metavar="NAME", help="activation, energy, l1, l2, group, error or random")
@click.option("--compensate", type=_choices(Compensation), default=AUTO, show_default=True,
              metavar="NAME", help="Next layer makes up: lsq, merge, mean or none")
@click.option("--merge-threshold", type=click.FloatRange(0, 1),
              default=DEFAULTS["merge_threshold"], show_default=True,
              help="Least cosine similarity at which merge folds a neuron into a kept one.")
@click.option("--prune-stream", type=click.FloatRange(0, 1, max_open=True), metavar="F",
              default=DEFAULTS["prune_stream"], show_default=True,
              help="Also remove this share of a transformer's residual width (0: none).")
@click.option("--align", type=ALIGN, default=AUTO, show_default=True, metavar="auto|N",
              help="Widths in multiples of N (auto: kernel steps)")
@click.option("--factor", type=FACTOR, default=AUTO, show_default=True, metavar="auto|off|R",
              help="Split a first layer into in -> R -> out first")
@click.option("--epochs", type=click.IntRange(0, 1000), metavar="N",
              help="Most epochs per cycle; 0: one shot [auto]")
@click.option("--final-epochs", type=click.IntRange(0, 1000), metavar="N",
              help="Most epochs of the last of several cycles.  [auto]")
@click.option("--recover", type=click.FloatRange(0, 100, max_open=True), metavar="PTS",
              help="Fine-tune every cycle but the last until within PTS points of the input "
                   "model's accuracy. [off]")
@click.option("--patience", type=click.IntRange(1, 100), default=DEFAULTS["patience"],
              show_default=True, help="Epochs without a better validation accuracy before "
                                      "a cycle's fine-tuning stops.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=DEFAULTS["lr"],
              show_default=True, metavar="LR", help="Adam learning rate, cosine decay.")
@click.option("--distill", type=click.FloatRange(0, 1), default=DEFAULTS["distill"],
              show_default=True, metavar="W", help="Weight of distillation from the input.")
@click.option("--average", type=click.FloatRange(0, 1000, max_open=True), metavar="EPOCHS",
              help="Judge and keep a moving average of the weights over EPOCHS.  "
                   "[auto]")
@click.option("--calibration-samples", type=click.IntRange(1),
              default=DEFAULTS["calibration_samples"], show_default=True,
              help="Most training samples counted on.")
@click.option("--input-shape", type=INT_LIST, metavar="D,D,..",
              help="One input's shape, no batch axis (1,28,28).")
@click.option("--format", "-f", type=click.Choice([f.value for f in Format]),
              default=DEFAULTS["format"].value, show_default=True, metavar="NAME",
              help="dense, csr, int8, lowrank or auto")
@click.option("--rank-energy", type=click.FloatRange(0, 1, min_open=True),
              default=DEFAULTS["rank_energy"], show_default=True,
              help="--format lowrank: share of squared singular values each layer keeps.")
@click.option("--output", "-o", type=click.Path(path_type=Path), metavar="PATH",
              help="ONNX file [MODEL-stem.compressed.onnx]")
@click.option("--variants", type=click.Path(path_type=Path), metavar="DIR",
              help="Also write every variant of the result into DIR.")
@click.option("--report", type=click.Path(path_type=Path), metavar="PATH",
              help="JSON report [the output's name, .json]")
@click.option("--arch", metavar="MODULE:CALLABLE",
              help="What builds a state_dict's model.")
@click.option("--device", default=AUTO, show_default=True, metavar="auto|cpu|cuda[:N]",
              help="Where counting, refits and fine-tuning run.")
@click.option("--plots", type=click.Path(path_type=Path), metavar="DIR",
              help="Also write PNGs of widths, firing rates and cycles into DIR.")
@click.option("--trace-spectra", is_flag=True,
              help="Record every layer's singular values before and after every cycle.")
@click.option("--normalize", type=NORMALIZE, metavar="MEAN,STD",
              help="(x - MEAN) / STD per channel, as in training.")
@click.option("--logits", metavar="INDEX|KEY",
              help="Which of several outputs are the logits.")
@click.option("--trust-pickle", is_flag=True,
              help="Load a pickled module (runs the file's code).")
@click.option("--threads", type=click.IntRange(1, 256), metavar="N",
              help="Threads of torch and onnxruntime [torch: the free cores; onnxruntime: 1]")
@click.option("--no-latency", is_flag=True, help="Skip the latency measurement.")
@click.option("--seed", type=int, default=DEFAULTS["seed"], show_default=True,
              help="Seed of data splits and fine-tuning.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the report table.")
@budget_options
@click.option("--batch", type=click.IntRange(1, 65536), default=DEFAULTS["batch"],
              show_default=True, metavar="N", help="Batch the latency budgets hold at.")
@click.pass_context
def compress_command(ctx: click.Context, model: Path, data: str | None, output: Path | None,
                     report: Path | None, arch: str | None, variants: Path | None,
                     plots: Path | None, logits: str | None, trust_pickle: bool, quiet: bool,
                     **given) -> None:
    """Prune MODEL (TorchScript, .pt2, a state_dict with --arch) by --target into a verified
    ONNX file and a JSON report. Labelled --data: pruning cycles with fine-tuning; unlabelled:
    one shot; none: data-free. Also: compress check (CI budgets), compress bench (latency),
    compress analyze (ranks, spectra); each has --help.
    """
    options = _options(ctx, given)
    paths = Paths(model, output, report, arch, trust_pickle, variants, logits, plots)
    log = None if quiet else (lambda line: click.echo(with_flags(line, FLAGS), err=True))
    progress = None if quiet else Bars()  # off a terminal: each step's label, once
    try:
        result = run_library(lambda: compress(paths, data, options, log=log,
                                              progress=progress), flags=FLAGS)
    finally:
        if progress is not None:
            progress.close()
    if result is None:  # a torchrun process other than rank 0: rank 0 reports and writes
        return
    click.echo(with_flags(format_table(result), FLAGS))
    if result.budgets:
        verdict = CheckResult(result.source.output, result.budgets)
        click.echo("\n" + format_check(verdict))
        if not verdict.passed:
            broken(verdict, wrote=f"{result.source.output} and its report were written")


def _options(ctx: click.Context, given: dict) -> Options:
    """The options the user gave (those left at their defaults are None: the plan's)."""
    chosen = {name: value for name, value in given.items()
              if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT}
    latency = not chosen.pop("no_latency", False)
    budgets = budgets_from({name: given[name] for name in BUDGETS})
    for name in BUDGETS:
        chosen.pop(name, None)
    try:
        return Options(**chosen, latency=None if latency else False, budgets=budgets)
    except Exception as e:  # OptionError or a budget's ValueError: one line
        raise click.UsageError(with_flags(str(e), FLAGS)) from e


BUDGETS = ("max_size", "max_params", "max_flops", "min_accuracy", "min_agreement",
           "max_latency", "max_latency_ratio")
FLAGS = flag_names(compress_command, latency="--no-latency", max_latency_ms="--max-latency")


class Bars:
    """Progress of long steps as click progress bars on stderr, one bar per stage (a stage
    ends when it reaches its total or another stage begins). Off a terminal (CI logs) click
    prints each stage's label once instead of a bar."""

    def __init__(self) -> None:
        self._stage, self._bar, self._done = None, None, 0

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self._stage:
            self.close()
            self._stage, self._done = stage, 0
            self._bar = click.progressbar(length=total, label=stage, file=sys.stderr,
                                          show_pos=True, show_eta=True)
            self._bar.__enter__()
        self._bar.update(done - self._done)
        self._done = done
        if done >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
        self._stage, self._bar = None, None
