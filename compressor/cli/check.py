"""`compress check MODEL.onnx`: budgets for CI."""

from __future__ import annotations

from pathlib import Path

import click

from ..commands.check import CheckConfig, CheckInputs, check
from ..report.check import format_check
from .common import broken, run_library
from .options import budget_options, budgets_from


@click.command("check", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(path_type=Path))
@budget_options
@click.option("--data", "-d", metavar="fashion-mnist|FILE|MODULE:CALLABLE",
              help="Data for accuracy, agreement and latency: 'fashion-mnist' (its test "
                   "images), a .npz/.npy/.pt file (every sample) or module:callable (every "
                   "sample, or its test split).")
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
        config = CheckConfig(budgets_from(budgets), batch=batch, threads=threads)
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    inputs = CheckInputs(model, data, reference, baseline, arch, trust_pickle, junit)
    result = run_library(lambda: check(inputs, config))
    click.echo(result.to_json() if as_json else format_check(result), nl=not as_json)
    if not result.passed:
        broken(result)
