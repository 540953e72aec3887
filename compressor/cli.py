"""Command line: parses options, builds configs, calls one library function per command."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .bench import bench, format_bench
from .check import CheckInputs, CheckResult, check, format_check
from .config import (BenchConfig, Budgets, CheckConfig, Compensation, CompressConfig,
                     Criterion, FinetuneConfig, Format, Method, PruneConfig, Score, Scope,
                     parse_fraction, parse_positive, parse_size)
from .errors import CompressorError, first_line
from .pipeline import Paths, compress
from .report import format_table

BUDGET_BROKEN = 1
USAGE_ERROR = 2


class _Parsed(click.ParamType):
    """A click type from a parse function that raises ValueError (sizes, fractions)."""

    def __init__(self, name: str, parse) -> None:
        self.name, self._parse = name, parse

    def convert(self, value, param, ctx):
        try:
            return self._parse(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


SIZE = _Parsed("size", parse_size)
FRACTION = _Parsed("fraction", parse_fraction)
POSITIVE = _Parsed("number", parse_positive)

BUDGET_OPTIONS = [
    click.option("--max-size", type=SIZE, metavar="SIZE",
                 help="Largest ONNX file: bytes, or with KB/MB (1000) or KiB/MiB (1024), "
                      "e.g. 200KB."),
    click.option("--max-params", type=click.IntRange(0), metavar="N",
                 help="Most stored parameters (weights, biases, 8-bit values)."),
    click.option("--max-flops", type=click.IntRange(0), metavar="N",
                 help="Most FLOPs per sample (2 x non-zero weights of MatMul/Gemm/Conv)."),
    click.option("--min-accuracy", type=FRACTION, metavar="ACC",
                 help="Least top-1 accuracy on the labelled data, e.g. 0.88 or 88%."),
    click.option("--min-agreement", type=FRACTION, metavar="AGR",
                 help="Least share of samples whose top-1 class equals the reference model's "
                      "(for compress: the input model's), e.g. 0.95."),
    click.option("--max-latency", type=POSITIVE, metavar="MS",
                 help="Longest onnxruntime run() in milliseconds at --batch."),
    click.option("--max-latency-ratio", type=POSITIVE, metavar="R",
                 help="Longest latency as a multiple of the baseline's at --batch (for "
                      "compress: the dense export of the input model), e.g. 1.05."),
]


def budget_options(command):
    """Add the budget options (shared by `compress` and `compress check`)."""
    for option in reversed(BUDGET_OPTIONS):
        command = option(command)
    return command


def _budgets(options: dict) -> Budgets:
    return Budgets(max_size=options["max_size"], max_params=options["max_params"],
                   max_flops=options["max_flops"], min_accuracy=options["min_accuracy"],
                   min_agreement=options["min_agreement"], max_latency_ms=options["max_latency"],
                   max_latency_ratio=options["max_latency_ratio"])


# Subcommands by name (`compress check ...`); anything else is the main job, `compress MODEL`.
SUBCOMMANDS: dict[str, click.Command] = {}


def main(argv: list[str] | None = None) -> None:
    """Console entry point `compress`."""
    args = sys.argv[1:] if argv is None else list(argv)
    command, name = compress_command, "compress"
    if args and args[0] in SUBCOMMANDS:
        command, name, args = SUBCOMMANDS[args[0]], f"compress {args[0]}", args[1:]
    try:
        code = command.main(args, prog_name=name, standalone_mode=False)
    except click.UsageError as e:  # one line, not click's three
        click.echo(f"Error: {e.format_message()} (see '{name} --help')", err=True)
        code = USAGE_ERROR
    except click.Abort:
        click.echo("Aborted.", err=True)
        code = 1
    sys.exit(code or 0)


@click.command("compress", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="compressor")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", "-t", type=float, required=True,
              help="Fraction of the model's Linear weights to remove, 0 < T < 1 (0.85 = 85% fewer).")
@click.option("--data", "-d", metavar="fashion-mnist|FILE",
              help="Calibration data: 'fashion-mnist' (built in) or a .npz (x, optional y), "
                   ".npy (x) or .pt file (tensor or dict with x, optional y). Without it, "
                   "pruning is data-free (weight-norm criterion, merge compensation).")
@click.option("--scope", type=click.Choice([s.value for s in Scope]), default="global",
              show_default=True, help="Rank neurons across all layers, or remove the same "
                                      "fraction of each layer.")
@click.option("--cycles", type=click.IntRange(1, 50), default=5, show_default=True,
              help="Pruning cycles with fine-tuning between them (labelled data and --epochs "
                   "> 0 only; otherwise one shot).")
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
                   "by the l1/l2 norm of their weights and bias, by the output error their "
                   "removal leaves after a least-squares refit (error), or at random.")
@click.option("--compensate", type=click.Choice([c.value for c in Compensation]),
              default="auto", show_default=True,
              help="How the next layer makes up for removed neurons: lsq (least-squares refit "
                   "on calibration data), merge (into similar kept neurons, data-free), mean "
                   "(mean activation into the bias), none; auto = lsq with --data, else merge.")
@click.option("--merge-threshold", type=click.FloatRange(0, 1), default=0.45, show_default=True,
              help="Least cosine similarity at which --compensate merge folds a removed neuron "
                   "into a kept one.")
@click.option("--align", type=click.IntRange(1, 4096), default=1, show_default=True,
              help="Keep a multiple of N neurons in every pruned layer (16 suits AVX2 CPUs: "
                   "a 49-wide layer runs as fast as a 64-wide one); the reduction can then "
                   "exceed --target by a few points. --score neurons only.")
@click.option("--epochs", type=click.IntRange(0, 1000), default=6, show_default=True,
              help="Most fine-tuning epochs per cycle (the best epoch by validation accuracy "
                   "is kept); 0 disables fine-tuning.")
@click.option("--patience", type=click.IntRange(1, 100), default=3, show_default=True,
              help="Epochs without a better validation accuracy before fine-tuning stops.")
@click.option("--lr", type=float, default=1e-3, show_default=True,
              help="Fine-tuning learning rate (Adam, cosine decay within each cycle).")
@click.option("--distill", type=float, default=0.5, show_default=True,
              help="Weight of distillation from the dense model's outputs during fine-tuning "
                   "(0 = labels only, 1 = teacher only).")
@click.option("--calibration-samples", type=click.IntRange(1), default=10_000,
              show_default=True, help="Most samples used to count activations.")
@click.option("--format", "-f", "fmt", type=click.Choice([f.value for f in Format]),
              default="dense", show_default=True,
              help="How the weights are stored: dense (plain Gemm, zeros kept), csr (sparse "
                   "initializers: a smaller file; compressor.runtime runs it with sparse "
                   "kernels), int8 (onnxruntime dynamic quantization) or auto (per layer, "
                   "whichever is fastest on this machine at --batch).")
@click.option("--output", "-o", type=click.Path(path_type=Path),
              help="ONNX file to write [default: <model stem>.compressed.onnx beside MODEL].")
@click.option("--variants", type=click.Path(path_type=Path), metavar="DIR",
              help="Also write every variant of the result into DIR (dense input, masked, "
                   "shrunk, csr, int8, int8 of the dense input), for 'compress bench DIR/*.onnx'.")
@click.option("--report", type=click.Path(path_type=Path),
              help="JSON report to write [default: the output path with .json].")
@click.option("--arch", metavar="MODULE:CALLABLE",
              help="For state_dict files: the function or class that builds the model, "
                   "importable from the current directory or PYTHONPATH.")
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
def compress_command(model: Path, target: float, data: str | None, scope: str, cycles: int,
                     score: str, method: str | None, criterion: str | None, compensate: str,
                     merge_threshold: float, align: int, fmt: str, variants: Path | None,
                     epochs: int, patience: int, lr: float, distill: float,
                     calibration_samples: int, output: Path | None, report: Path | None,
                     arch: str | None, trust_pickle: bool, threads: int, no_latency: bool,
                     seed: int, quiet: bool, batch: int, **budgets) -> None:
    """Prune MODEL to --target fewer weights and write a verified ONNX file and JSON report.
    With --data the neurons are ranked by activation and pruned in cycles with fine-tuning
    (labelled data) or in one shot; without it, data-free by weight norm with neuron merging.

    MODEL is a TorchScript archive, a torch.export program (.pt2), a state_dict or checkpoint
    (with --arch), or a pickled nn.Module (only with --trust-pickle).

    Budgets (--max-size, --min-accuracy, ...) are checked on the written file: exit 1 if any
    is broken. To check an existing ONNX file (in CI): compress check MODEL.onnx --help.
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
                              criterion=Criterion(criterion) if criterion else chosen.criterion,
                              compensate=Compensation(compensate),
                              merge_threshold=merge_threshold,
                              calibration_samples=calibration_samples, score=Score(score),
                              method=chosen, seed=seed, align=align),
            finetune=FinetuneConfig(max_epochs=epochs, patience=patience, lr=lr, distill=distill),
            bench=None if no_latency else BenchConfig(batches=tuple(sorted({1, 256, batch})),
                                                       threads=threads),
            seed=seed, budgets=_budgets(budgets), budget_batch=batch, format=Format(fmt))
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    paths = Paths(model, output, report, arch, trust_pickle, variants)
    log = None if quiet else (lambda line: click.echo(line, err=True))
    progress = None if quiet or not sys.stderr.isatty() else _progress
    result = _run(lambda: compress(paths, data, config, log=log, progress=progress))
    click.echo(format_table(result))
    if result.budgets:
        verdict = CheckResult(result.output, result.budgets)
        click.echo("\n" + format_check(verdict))
        if not verdict.passed:
            _broken(verdict, wrote=f"{result.output} and its report were written")


@click.command("check", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(path_type=Path))
@budget_options
@click.option("--data", "-d", metavar="fashion-mnist|FILE",
              help="Data for accuracy, agreement and latency: 'fashion-mnist' (its 10,000 test "
                   "images) or a .npz/.npy/.pt file (every sample).")
@click.option("--reference", type=click.Path(path_type=Path), metavar="REF.onnx|REF.pt",
              help="Model whose top-1 predictions --min-agreement compares with (ONNX, or any "
                   "model file compress takes).")
@click.option("--baseline", type=click.Path(path_type=Path), metavar="BASE.onnx",
              help="ONNX model --max-latency-ratio divides by (timed in the same rounds).")
@click.option("--batch", type=click.IntRange(1, 65536), default=1, show_default=True,
              help="Batch size for the latency budgets.")
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True,
              help="onnxruntime intra-op threads for the latency budgets.")
@click.option("--arch", metavar="MODULE:CALLABLE", help="Builds a state_dict --reference.")
@click.option("--trust-pickle", is_flag=True,
              help="Allow a whole pickled module as --reference (runs code from the file).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON instead of a table.")
@click.option("--junit", type=click.Path(path_type=Path), metavar="PATH",
              help="Also write the rows as a JUnit XML report (one test case per budget).")
def check_command(model: Path, data: str | None, reference: Path | None, baseline: Path | None,
                  batch: int, threads: int, arch: str | None, trust_pickle: bool, as_json: bool,
                  junit: Path | None, **budgets) -> None:
    """Check the ONNX file MODEL against budgets; exit 0 if all hold, 1 if any is broken,
    2 on a usage error. Prints one row per budget: value, limit, pass or FAIL.
    """
    try:
        config = CheckConfig(_budgets(budgets), batch=batch, threads=threads)
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    inputs = CheckInputs(model, data, reference, baseline, arch, trust_pickle, junit)
    result = _run(lambda: check(inputs, config))
    click.echo(result.to_json() if as_json else format_check(result), nl=not as_json)
    if not result.passed:
        _broken(result)


SUBCOMMANDS["check"] = check_command


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"expected comma-separated whole numbers like 1,32,256, got {text!r}")
    if not values or min(values) < 1:
        raise ValueError(f"expected numbers of at least 1, got {text!r}")
    return values


INT_LIST = _Parsed("list", _int_list)


@click.command("bench", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--baseline", type=click.Path(path_type=Path), metavar="DENSE.onnx",
              help="ONNX file speedups are relative to (usually the dense export).")
@click.option("--batch", type=INT_LIST, default="1,32,256", show_default=True, metavar="B,B,..",
              help="Batch sizes.")
@click.option("--threads", type=INT_LIST, default="1", show_default=True, metavar="T,T,..",
              help="onnxruntime intra-op thread counts.")
@click.option("--seconds", type=POSITIVE, default=1.0, show_default=True,
              help="Measuring time per model per batch size and thread count.")
@click.option("--no-runtime", is_flag=True,
              help="Do not also run files with sparse initializers in compressor.runtime.")
@click.option("--no-memory", is_flag=True,
              help="Skip peak memory (a child process per model and batch size).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def bench_command(models: tuple[Path, ...], baseline: Path | None, batch: tuple[int, ...],
                  threads: tuple[int, ...], seconds: float, no_runtime: bool, no_memory: bool,
                  as_json: bool) -> None:
    """Benchmark ONNX MODELS on this CPU with onnxruntime: p50/p95 latency, throughput, file
    size, peak memory, FLOPs, and against --baseline the speedup, the speedup the FLOPs
    promise (ideal) and their ratio (efficiency). Files with sparse initializers also get a
    row run by compressor.runtime (sparse kernels).

    Every variant of one result: compress MODEL ... --variants DIR, then
    compress bench DIR/*.onnx --baseline DIR/dense.onnx.
    """
    result = _run(lambda: bench(list(models), baseline=baseline, batches=batch, threads=threads,
                                seconds=seconds, runtime=not no_runtime, memory=not no_memory))
    click.echo(result.to_json() if as_json else format_bench(result), nl=not as_json)


SUBCOMMANDS["bench"] = bench_command


def _broken(result: CheckResult, *, wrote: str = "") -> None:
    rows = "; ".join(f"{row.name} {row.comparison}" for row in result.broken)
    click.echo(f"Budget broken: {rows}" + (f" ({wrote})" if wrote else ""), err=True)
    sys.exit(BUDGET_BROKEN)


def _progress(stage: str, done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    end = "\n" if done >= total else ""
    click.echo(f"\r{stage} [{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,}",
               err=True, nl=False)
    if end:
        click.echo("", err=True)


def _run(job):
    """Run a library call; user errors become one line and exit code 2, never a traceback."""
    try:
        return job()
    except CompressorError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(USAGE_ERROR)
    except KeyboardInterrupt:
        click.echo("Interrupted; nothing was written.", err=True)
        sys.exit(130)
    except Exception as e:  # a bug: one line, the traceback only on request
        if os.environ.get("COMPRESSOR_DEBUG"):
            raise
        click.echo(f"Internal error ({type(e).__name__}: {first_line(e)}); nothing was written. "
                   "Re-run with COMPRESSOR_DEBUG=1 for the traceback and report it.", err=True)
        sys.exit(3)
