"""`compress analyze MODEL [--compare PRUNED...]`: ranks, spectra, zeros and firing rates."""

from __future__ import annotations

from pathlib import Path

import click

from ..commands.analyze import CALIBRATION, AnalyzeInputs, analyze
from ..report.analyze import format_analysis
from .common import run_library
from .options import INT_LIST


@click.command("analyze", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--compare", type=click.Path(path_type=Path), multiple=True, metavar="PRUNED",
              help="A model made from MODEL (the .onnx compress wrote, or a PyTorch file) to "
                   "analyse beside it; repeat for several. Layers are matched by position.")
@click.option("--data", "-d", metavar="fashion-mnist|FILE|MODULE:CALLABLE",
              help="Data for firing rates and the PCA dimension of each layer's activations "
                   "(PyTorch models; ONNX files are analysed by their weights).")
@click.option("--calibration-samples", type=click.IntRange(1), default=CALIBRATION,
              show_default=True, help="Most samples the firing rates and PCA use.")
@click.option("--input-shape", type=INT_LIST, metavar="D,D,..",
              help="Shape of one input without the batch axis (as for compress).")
@click.option("--arch", metavar="MODULE:CALLABLE", help="Builds state_dict files.")
@click.option("--trust-pickle", is_flag=True,
              help="Allow whole pickled modules (unpickling runs code from the file).")
@click.option("--out", type=click.Path(path_type=Path), metavar="DIR",
              help="Also write DIR/analysis.json and PNGs: singular-value spectra, weight "
                   "heatmaps (zeros white), firing-rate histograms (needs matplotlib: pip "
                   "install 'compressor[plots]').")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the tables.")
def analyze_command(model: Path, compare: tuple[Path, ...], data: str | None,
                    calibration_samples: int, input_shape: tuple[int, ...] | None,
                    arch: str | None, trust_pickle: bool, out: Path | None,
                    as_json: bool) -> None:
    """Analyse every Linear and Conv layer of MODEL (and of --compare models): numerical and
    effective rank, singular values, the rank holding 90/99% of their energy, zero weights,
    rows and columns, and with --data the firing rates of its units and the PCA dimension of
    their activations (95/99% of the variance). The activation-based pruning paper's analysis:
    pruned layers are sparse and low-rank.
    """
    inputs = AnalyzeInputs(model, compare, data, arch, trust_pickle, input_shape,
                           calibration_samples)
    result = run_library(lambda: analyze(inputs, out=out,
                                         log=lambda line: click.echo(line, err=True)))
    click.echo(result.to_json() if as_json else format_analysis(result), nl=not as_json)
