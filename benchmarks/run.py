"""`make bench`: compress the shipped example on Fashion-MNIST at 0.85 and 0.95, global and
local, through the real CLI; time each command; re-measure latency in onnxruntime; write
benchmarks/results.md.

    python -m benchmarks.run [--seconds 2.0] [--out benchmarks/results.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch

from compressor.export.to_onnx import to_onnx
from compressor.graph.capture import capture
from compressor.io.data import load_fashion_mnist
from compressor.io.load import load_model
from compressor.measure.latency import latency_ms

REPO = Path(__file__).resolve().parents[1]
MODEL, ARCH = REPO / "models" / "paper_mlp.pt", "models.mlp:paper_mlp"
RUNS = [(0.85, "global"), (0.85, "local"), (0.95, "global"), (0.95, "local")]
BATCHES = (1, 256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per latency cell")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.md")
    args = parser.parse_args()
    sample = load_fashion_mnist().validation.x[:256].flatten(1)
    with tempfile.TemporaryDirectory() as tmp:
        dense = to_onnx(capture(load_model(MODEL, arch=ARCH), sample[:2]), sample[:2])
        base = {b: latency_ms(dense, sample, batch=b, seconds=args.seconds) for b in BATCHES}
        rows = [_run(Path(tmp), target, scope, sample, dense, base, args.seconds)
                for target, scope in RUNS]
    args.out.write_text(_markdown(rows, len(dense), base, args.seconds))
    print(args.out.read_text())


def _run(tmp: Path, target: float, scope: str, sample: torch.Tensor, dense: bytes,
         base: dict[int, float], seconds: float) -> dict:
    out = tmp / f"{scope}-{target}.onnx"
    cmd = [str(Path(sys.executable).with_name("compress")), str(MODEL), "--arch", ARCH,
           "--target", str(target), "--data", "fashion-mnist", "--scope", scope, "-o", str(out)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    report = json.loads(out.with_suffix(".json").read_text())
    model = out.read_bytes()
    latency = {b: latency_ms(model, sample, batch=b, seconds=seconds) for b in BATCHES}
    print(f"{scope} {target}: {report['reduction']:.4f} reduction, "
          f"{report['accuracy_after']:.4f} accuracy, {wall:.1f} s", file=sys.stderr)
    return {"target": target, "scope": scope, "report": report, "wall": wall,
            "latency": latency, "speedup": {b: base[b] / latency[b] for b in BATCHES},
            "size": len(model) / len(dense)}


def _markdown(rows: list[dict], dense_bytes: int, base: dict[int, float], seconds: float) -> str:
    r0 = rows[0]["report"]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    lines = [
        "# Benchmark: the paper's 784-300-200-100-50-10 MLP on Fashion-MNIST",
        "",
        f"Produced by `make bench` on {time.strftime('%Y-%m-%d')}. Machine: {os.cpu_count()} "
        f"cores ({cpu}), no GPU; torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, Python {platform.python_version()}.",
        "",
        "Each row is one `compress models/paper_mlp.pt --arch models.mlp:paper_mlp --target T "
        "--data fashion-mnist --scope S` with every other option at its default (5 cycles, "
        "fine-tuning with distillation, activation criterion, lsq compensation). Accuracy is on the official "
        "10,000-image test set, never used for fine-tuning. Latency: onnxruntime CPU, "
        f"**1 intra-op thread**, best of 5 rounds' median `run()` time, {seconds:g} s per cell, "
        "real test inputs. Wall time: the whole command (load, 5 cycles of counting and fine-tuning on 2 "
        "torch threads, two ONNX exports, verification, its own latency measurement).",
        "",
        f"Dense: {r0['weights_before']:,} weights, {r0['flops_before']:,} FLOPs/sample, "
        f"{dense_bytes:,} ONNX bytes, test accuracy {100 * r0['accuracy_before']:.2f}%, "
        f"latency {base[1] * 1e3:.1f} µs at batch 1 and {base[256]:.3f} ms at batch 256.",
        "",
        "| target | scope | achieved | widths | test acc | Δ acc (pt) | FLOPs | ONNX size "
        "| batch 1 | batch 256 | speedup b1 | speedup b256 | wall |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rep = r["report"]
        widths = "-".join(str(layer["out_after"]) for layer in rep["layers"][:-1])
        lines.append(
            f"| {r['target']:.2f} | {r['scope']} | {100 * rep['reduction']:.2f}% | {widths} | "
            f"{100 * rep['accuracy_after']:.2f}% | "
            f"{100 * (rep['accuracy_after'] - rep['accuracy_before']):+.2f} | "
            f"{rep['flops_after']:,} | {rep['onnx_bytes']:,} ({100 * r['size']:.1f}%) | "
            f"{r['latency'][1] * 1e3:.1f} µs | {r['latency'][256]:.3f} ms | "
            f"{r['speedup'][1]:.1f}x | {r['speedup'][256]:.1f}x | {r['wall']:.0f} s |")
    lines += ["", "Goals at 0.85: accuracy ≥ dense − 1.0 pt; ≥ 5x faster at batch 256; ONNX ≤ 16% "
                  "of dense; ≤ 120 s wall time.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
