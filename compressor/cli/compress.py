"""`compress MODEL`: the main command."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..commands.compress import Paths, compress
from ..commands.config import CompressConfig
from ..export.pack import ENERGY, Format
from ..measure.latency import BenchConfig
from ..prune.config import (AVERAGE_EPOCHS, Compensation, Criterion, FinetuneConfig, Method, Of,
                             PruneConfig, Score, Scope)
from ..report.check import CheckResult, format_check
from ..report.compress import format_table
from .common import broken, run_library
from .options import ALIGN, FACTOR, INT_LIST, NORMALIZE, TARGET, budget_options, budgets_from


@click.command("compress", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="compressor")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", "-t", type=TARGET, required=True,
              help="Fraction of the model's Linear and Conv weights (or FLOPs, see --of) to "
                   "remove, 0 < T < 1 (0.85 or 85% = 85% fewer).")
@click.option("--of", "of", type=click.Choice([o.value for o in Of]), default="weights",
              show_default=True, help="What --target reduces: weight entries, or FLOPs per "
                                      "sample (a conv weight counts once per output position).")
@click.option("--data", "-d", metavar="fashion-mnist|FILE",
              help="Calibration data: 'fashion-mnist' (built in) or a .npz (x, optional y), "
                   ".npy (x) or .pt file (tensor or dict with x, optional y). Without it, "
                   "pruning is data-free (weight-norm criterion, merge compensation).")
@click.option("--scope", type=click.Choice([s.value for s in Scope]), default="auto",
              show_default=True, help="Rank neurons across all layers (global), or remove the "
                                      "same fraction of each layer (local); auto: local for "
                                      "conv channels, global for Linear-only models.")
@click.option("--cycles", type=click.IntRange(1, 50),
              help="Pruning cycles with fine-tuning between them (labelled data and --epochs "
                   "> 0 only; otherwise one shot).  [default: 5; 1 when conv channels or "
                   "features of tokens are pruned]")
@click.option("--score", type=click.Choice([s.value for s in Score]), default="neurons",
              show_default=True,
              help="Remove whole neurons (layers shrink), or single weights (neurons-weights: "
                   "zeros stay in the layers; neurons left without inputs are removed too).")
@click.option("--method", type=click.Choice([m.value for m in Method]),
              help="What scores are built from: activation counts (x |w| for single weights), "
                   "magnitude (|w|; the l1 norm for neurons) or random (a sanity floor).  "
                   "[default: activation; magnitude without --data]")
@click.option("--criterion", type=click.Choice([c.value for c in Criterion]),
              help="For --score neurons, instead of --method: rank neurons by activation count, "
                   "by energy (RMS output x the norm of their next-layer columns), by the "
                   "l1/l2 norm of their weights and bias, by the output error their removal "
                   "leaves after a least-squares refit (error), or at random; where one Linear "
                   "reads every pruned layer, auto = error in one shot and, fine-tuned, l2 "
                   "behind ReLUs; elsewhere activation count behind ReLUs and energy behind "
                   "other activations; units that never fire go first whatever the "
                   "criterion.  "
                   "[default: auto; l1 without --data]")
@click.option("--compensate", type=click.Choice([c.value for c in Compensation]),
              default="auto", show_default=True,
              help="How the next layer makes up for removed neurons: lsq (least-squares refit "
                   "on calibration data), merge (into similar kept neurons, data-free), mean "
                   "(mean activation into the bias), none; auto = lsq with --data (none when "
                   "fine-tuning ReLU layers each read by one Linear: fine-tuning does better "
                   "from the weights as they are), else merge (none behind activations other "
                   "than ReLU/LeakyReLU).")
@click.option("--merge-threshold", type=click.FloatRange(0, 1), default=0.45, show_default=True,
              help="Least cosine similarity at which --compensate merge folds a removed neuron "
                   "into a kept one.")
@click.option("--align", type=ALIGN, default="auto", show_default=True, metavar="auto|N",
              help="Keep a multiple of N units in every pruned layer; auto = layers at least "
                   "4 steps wide in the steps onnxruntime's convolutions and Gemm run in on "
                   "this CPU (measured once, cached; conv: 16 with AVX-512, 8 with AVX2; Gemm: "
                   "16 measured on an AVX-512 Xeon, 8 on an AVX2 EPYC; Linear widths stay "
                   "exact where the timing shows no steps), narrower conv layers in multiples "
                   "of 8. The reduction can then exceed --target by a few points.")
@click.option("--factor", type=FACTOR, default="auto", show_default=True, metavar="auto|off|R",
              help="Before pruning, replace each pruned Linear layer whose inputs are not "
                   "pruned (an MLP's first layer) by two thinner ones, in -> R -> out (its "
                   "outputs projected on their R main directions on the data, then "
                   "fine-tuned), so each unit it keeps costs R weights instead of one per "
                   "input; auto = with fine-tuning, in MLPs of "
                   "ReLU layers, R = 0.8 x the units the target leaves the layer on average, "
                   "in the Gemm's steps as --align, where the inputs are at least 4 x R.")
@click.option("--epochs", type=click.IntRange(0, 1000),
              help="Most fine-tuning epochs per cycle (the best epoch by validation accuracy "
                   "is kept); 0 disables fine-tuning.  [default: 6; 5 when conv channels or "
                   "features of tokens are pruned]")
@click.option("--final-epochs", type=click.IntRange(0, 1000),
              help="Most fine-tuning epochs of the last cycle when there are several (its "
                   "--patience grows in proportion).  [default: 3 x --epochs; past --target "
                   "0.85 that times 0.15 / (1 - T), at most 9 x --epochs]")
@click.option("--recover", type=click.FloatRange(0, 100, max_open=True), metavar="PTS",
              help="Retrain until accuracy recovers (the paper's rule): every cycle but the "
                   "last fine-tunes until its validation accuracy is within PTS points of the "
                   "input model's, for at most --final-epochs epochs.  [default: off, --epochs "
                   "per cycle]")
@click.option("--patience", type=click.IntRange(1, 100), default=3, show_default=True,
              help="Epochs without a better validation accuracy before fine-tuning stops.")
@click.option("--lr", type=float, default=1e-3, show_default=True,
              help="Fine-tuning learning rate (Adam, cosine decay within each cycle).")
@click.option("--distill", type=float, default=0.5, show_default=True,
              help="Weight of distillation from the dense model's outputs during fine-tuning "
                   "(0 = labels only, 1 = teacher only).")
@click.option("--average", type=click.FloatRange(0, 1000, max_open=True), metavar="EPOCHS",
              help="Fine-tuning judges and keeps a moving average of the weights over about "
                   "this many epochs (0 = the weights as trained).  [default: "
                   f"{AVERAGE_EPOCHS} for MLP neurons, off for conv channels and tokens]")
@click.option("--calibration-samples", type=click.IntRange(1), default=10_000,
              show_default=True, help="Most samples used to count activations.")
@click.option("--input-shape", type=INT_LIST, metavar="D,D,..",
              help="Shape of one input without the batch axis, e.g. 1,28,28: the data is "
                   "given to the model in it (same number of values) and the ONNX file takes "
                   "it; data-free runs are checked on random inputs of it [default: a .pt2 "
                   "program's own; else the data as given, flattened or without its channel "
                   "axis, the first the model takes; without data the first Linear's input "
                   "features].")
@click.option("--format", "-f", "fmt", type=click.Choice([f.value for f in Format]),
              default="dense", show_default=True,
              help="How the weights are stored: dense (plain Gemm, zeros kept), csr (sparse "
                   "initializers: a smaller file; compressor.runtime runs it with sparse "
                   "kernels), int8 (onnxruntime dynamic quantization), auto (per layer, "
                   "whichever is fastest on this machine at --batch) or lowrank (layers as two "
                   "thinner ones by truncated SVD, where smaller and faster at --batch; "
                   "approximate: check the accuracy).")
@click.option("--rank-energy", type=click.FloatRange(0, 1, min_open=True), default=ENERGY,
              show_default=True,
              help="--format lowrank: share of each layer's squared singular values the "
                   "factors keep (the rank is the smallest that keeps it).")
@click.option("--output", "-o", type=click.Path(path_type=Path),
              help="ONNX file to write [default: <model stem>.compressed.onnx beside MODEL].")
@click.option("--variants", type=click.Path(path_type=Path), metavar="DIR",
              help="Also write every variant of the result into DIR (dense input, masked, "
                   "shrunk, csr, int8, int8 of the dense input, lowrank of the result and of "
                   "the dense input), for 'compress bench DIR/*.onnx'.")
@click.option("--report", type=click.Path(path_type=Path),
              help="JSON report to write [default: the output path with .json].")
@click.option("--arch", metavar="MODULE:CALLABLE",
              help="For state_dict files: the function or class that builds the model, "
                   "importable from the current directory or PYTHONPATH.")
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N]",
              help="Where counting, least-squares refits and fine-tuning run; auto = cuda when "
                   "torch sees a GPU, else cpu. Export and onnxruntime always run on the CPU.")
@click.option("--plots", type=click.Path(path_type=Path), metavar="DIR",
              help="Also write PNGs into DIR: layer widths before/after, firing-rate "
                   "histograms, validation accuracy across cycles (needs matplotlib: pip "
                   "install 'compressor[plots]').")
@click.option("--trace-spectra", is_flag=True,
              help="Record every layer's singular values before pruning and after every cycle "
                   "in the JSON report (spectra), and plot them with --plots.")
@click.option("--normalize", type=NORMALIZE, metavar="MEAN,STD",
              help="Normalise the data as the model was trained: (x - MEAN) / STD per channel "
                   "(e.g. 0.2860,0.3530 for Fashion-MNIST; M1,M2,M3,S1,S2,S3 for 3 channels). "
                   "The ONNX file takes normalised inputs, as the model does.")
@click.option("--logits", metavar="INDEX|KEY",
              help="For a model that returns a tuple or dict: which entry are the logits "
                   "(e.g. 0, or logits); the ONNX file returns only that entry.")
@click.option("--trust-pickle", is_flag=True,
              help="Allow loading a whole pickled nn.Module. Unpickling runs code from the "
                   "file: use only for files you trust.")
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True,
              help="onnxruntime intra-op threads for the latency measurement.")
@click.option("--no-latency", is_flag=True, help="Skip the latency measurement.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for data splits and fine-tuning.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the report table.")
@budget_options
@click.option("--batch", type=click.IntRange(1, 65536), default=1, show_default=True,
              help="Batch size --format auto chooses kernels for and the latency budgets are "
                   "checked at (also timed and reported).")
def compress_command(model: Path, target: float, of: str, data: str | None, scope: str,
                     cycles: int | None, input_shape: tuple[int, ...] | None,
                     score: str, method: str | None, criterion: str | None, compensate: str,
                     merge_threshold: float, align: int, factor: int | None, fmt: str,
                     rank_energy: float, variants: Path | None, epochs: int | None,
                     final_epochs: int | None,
                     recover: float | None, patience: int, lr: float, distill: float,
                     average: float | None,
                     calibration_samples: int, output: Path | None, report: Path | None,
                     arch: str | None, device: str, plots: Path | None, trace_spectra: bool,
                     normalize,
                     logits: str | None,
                     trust_pickle: bool,
                     threads: int,
                     no_latency: bool,
                     seed: int, quiet: bool, batch: int, **budgets) -> None:
    """Prune MODEL to --target fewer weights and write a verified ONNX file and JSON report.
    With --data the neurons are ranked by activation and pruned in cycles with fine-tuning
    (labelled data) or in one shot; without it, data-free by weight norm with neuron merging.

    MODEL is a TorchScript archive, a torch.export program (.pt2), a state_dict or checkpoint
    (with --arch), or a pickled nn.Module (only with --trust-pickle).

    Budgets (--max-size, --min-accuracy, ...) are checked on the written file: exit 1 if any
    is broken.

    Other commands: compress check MODEL.onnx (budgets of an existing file, for CI),
    compress bench MODEL.onnx... (latency, memory, speedup) and compress analyze MODEL
    (ranks, singular values, zeros, firing rates); each has --help.
    """
    if method and criterion:
        raise click.UsageError("give --method or --criterion, not both (--criterion is the "
                               "finer choice for --score neurons)")
    if criterion and score == Score.WEIGHTS.value:
        raise click.UsageError("--criterion ranks whole neurons: with --score neurons-weights "
                               "use --method")
    chosen = Method(method or ("activation" if data else "magnitude"))
    try:
        config = CompressConfig(
            prune=PruneConfig(target=target, scope=Scope(scope), cycles=cycles,
                              criterion=Criterion(criterion) if criterion else
                              chosen.criterion if method or not data else Criterion.AUTO,
                              compensate=Compensation(compensate),
                              merge_threshold=merge_threshold,
                              calibration_samples=calibration_samples, score=Score(score),
                              method=chosen, seed=seed, align=align, factor=factor, of=Of(of),
                              device=device,
                              trace_spectra=trace_spectra),
            finetune=FinetuneConfig(max_epochs=epochs, patience=patience, lr=lr, distill=distill,
                                    final_epochs=final_epochs, recover=recover, average=average),
            bench=None if no_latency else BenchConfig(batches=tuple(sorted({1, 256, batch})),
                                                       threads=threads),
            seed=seed, budgets=budgets_from(budgets), budget_batch=batch, format=Format(fmt),
            rank_energy=rank_energy, input_shape=input_shape, normalize=normalize)
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    paths = Paths(model, output, report, arch, trust_pickle, variants, logits, plots)
    log = None if quiet else (lambda line: click.echo(line, err=True))
    progress = None if quiet else Bars()  # off a terminal: each step's label, once
    try:
        result = run_library(lambda: compress(paths, data, config, log=log,
                                              progress=progress))
    finally:
        if progress is not None:
            progress.close()
    click.echo(format_table(result))
    if result.budgets:
        verdict = CheckResult(result.output, result.budgets)
        click.echo("\n" + format_check(verdict))
        if not verdict.passed:
            broken(verdict, wrote=f"{result.output} and its report were written")


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
