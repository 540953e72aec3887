"""`compress bench MODEL.onnx...`: latency, throughput, memory and speedup on this CPU."""

from __future__ import annotations

from pathlib import Path

import click

from ..commands.bench import bench
from ..report.bench import format_bench
from .common import run_library
from .options import INT_LIST, POSITIVE


@click.command("bench", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--baseline", type=click.Path(path_type=Path), metavar="DENSE.onnx",
              help="ONNX file speedups are relative to (usually the dense export).")
@click.option("--batch", type=INT_LIST, metavar="B,B,..",
              help="Batch sizes [1,32,256: those over 1 where a run costs at most 4 GFLOPs].")
@click.option("--threads", type=INT_LIST, default="1", show_default=True, metavar="T,T,..",
              help="onnxruntime intra-op thread counts.")
@click.option("--seconds", type=POSITIVE, default=1.0, show_default=True,
              help="Measuring time per model per batch size and thread count.")
@click.option("--no-runtime", is_flag=True,
              help="Do not also run files with sparse initializers in compressor.runtime.")
@click.option("--no-memory", is_flag=True,
              help="Skip peak memory (a child process per model and batch size).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@click.option("--plots", type=click.Path(path_type=Path), metavar="DIR",
              help="Also write DIR/latency_vs_batch.png (needs matplotlib: pip install "
                   "'compressor[plots]').")
def bench_command(models: tuple[Path, ...], baseline: Path | None, batch: tuple[int, ...] | None,
                  threads: tuple[int, ...], seconds: float, no_runtime: bool, no_memory: bool,
                  as_json: bool, plots: Path | None) -> None:
    """Benchmark ONNX MODELS on this CPU with onnxruntime: p50/p95 latency, throughput, file
    size, peak memory, FLOPs, and against --baseline the speedup, the speedup the FLOPs
    promise (ideal) and their ratio (efficiency). Files with sparse initializers also get a
    row run by compressor.runtime (sparse kernels).

    Every variant of one result: compress MODEL ... --variants DIR, then
    compress bench DIR/*.onnx --baseline DIR/dense.onnx.
    """
    result = run_library(lambda: bench(list(models), baseline=baseline, batches=batch,
                                       threads=threads, seconds=seconds,
                                       runtime=not no_runtime, memory=not no_memory,
                                       log=lambda line: click.echo(line, err=True),
                                       plots=plots))
    click.echo(result.to_json() if as_json else format_bench(result), nl=not as_json)
