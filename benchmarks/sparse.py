"""`make bench`, part 3: unstructured pruning and the storage formats, on the paper's MLP.

1. The analogue of the paper's Tables 4 and 5: magnitude vs activation "neurons" vs
   "neurons & weights", global and local, at 80% and 85% (plus a random floor): pruning
   reached, train/validation/test accuracy, FLOPs. Every run is the real CLI.
2. Every variant of the 85% and 95% "neurons & weights" results (`--variants`) through
   `compress bench` at batch 1, 32 and 256 with 1 and 2 threads.
3. What `--format auto` picks for them at each batch size.
   The 85% table adds the structured model (`--score neurons`), plain and `--align 16`.
4. The break-even sparsity of the sparse kernels against dense Gemm on this CPU, on a
   300x784 layer (the example's first layer).
5. The smallest file (int8 + shrink + sparse storage) and its accuracy.

    python -m benchmarks.sparse [--seconds 1.0] [--out benchmarks/sparse.md]
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

import numpy as np
import onnx
import onnxruntime
import scipy.sparse
import torch

from benchmarks.common import flat
from compressor.commands.bench import bench
from compressor.export import formats
from compressor.export.pack import Format, pack_onnx
from compressor.export.verify import run_onnx
from compressor.io.sources import load_data
from compressor.report.bench import format_bench
from compressor.runtime import session, time_kernels

REPO = Path(__file__).resolve().parents[1]
MODEL, ARCH = REPO / "models" / "paper_mlp.pt", "models.mlp:paper_mlp"
METHODS = [("magnitude (weights)", ["--score", "neurons-weights", "--method", "magnitude"]),
           ("activation, neurons", ["--score", "neurons", "--method", "activation"]),
           ("activation, neurons & weights", ["--score", "neurons-weights", "--method",
                                              "activation"])]
FLOOR = ("random (weights)", ["--score", "neurons-weights", "--method", "random"])
SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per latency cell")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "sparse.md")
    args = parser.parse_args()
    splits = load_data("fashion-mnist", seed=0)
    out = [_header()]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = [_compress(tmp, target, scope, label, flags, splits)
                for target in (0.80, 0.85) for label, flags in METHODS
                for scope in ("global", "local")]
        runs += [_compress(tmp, target, "global", *FLOOR, splits) for target in (0.80, 0.85)]
        aligned = _compress(tmp, 0.85, "global", "activation, neurons, --align 16",
                            METHODS[1][1] + ["--align", "16"], splits, variants=True)
        out.append(_accuracy_table(runs + [aligned]))
        variants = {t: _compress(tmp, t, "global", *METHODS[2], splits, variants=True)
                    for t in (0.85, 0.95)}
        neurons = next(r for r in runs if r["target"] == 0.85 and r["scope"] == "global"
                       and r["label"] == METHODS[1][0])
        for target, run in variants.items():
            d = run["variants"]
            if target == 0.85:
                (d / "neurons-shrunk.onnx").write_bytes(neurons["path"].read_bytes())
                for name in ("shrunk", "int8"):
                    (d / f"neurons-aligned-{name}.onnx").write_bytes(
                        (aligned["variants"] / f"{name}.onnx").read_bytes())
            files = sorted(d.glob("*.onnx"))
            result = bench(files, baseline=d / "dense.onnx", batches=(1, 32, 256),
                           threads=(1, 2), seconds=args.seconds)
            (args.out.parent / f"sparse-bench-{int(target * 100)}.json").write_text(
                result.to_json())
            out.append(_bench_section(target, run, result))
            out.append(_auto_section(d / "shrunk.onnx"))
        out.append(_break_even(args.seconds / 4))
        out.append(_smallest(variants, aligned, splits))
    args.out.write_text("\n".join(out))
    print(args.out.read_text())


def _header() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    return "\n".join([
        "# Benchmark: unstructured pruning, CSR and int8 on the paper's MLP",
        "",
        f"Produced by `make bench` (`python -m benchmarks.sparse`) on {time.strftime('%Y-%m-%d')}."
        f" Machine: {os.cpu_count()} cores ({cpu}), no GPU; torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, scipy {scipy.__version__}, Python "
        f"{platform.python_version()}. Model: `models/paper_mlp.pt` (784-300-200-100-50-10, "
        "89.36% test). Every run: `compress models/paper_mlp.pt --arch models.mlp:paper_mlp "
        "--data fashion-mnist --target T --scope S` plus the flags shown, defaults otherwise "
        "(5 cycles with fine-tuning; compensation auto, which is none for these fine-tuned "
        "ReLU layers each read by one Linear).",
        ""])


def _compress(tmp: Path, target: float, scope: str, label: str, flags: list[str], splits, *,
              variants: bool = False) -> dict:
    name = f"{label.split()[0]}-{'-'.join(f.strip('-') for f in flags[1::2])}-{scope}-{target}"
    path = tmp / f"{name}.onnx"
    cmd = [str(Path(sys.executable).with_name("compress")), str(MODEL), "--arch", ARCH,
           "--target", str(target), "--data", "fashion-mnist", "--scope", scope, "-o",
           str(path), *flags]
    cmd += ["--variants", str(tmp / name), "--batch", "256"] if variants else ["--no-latency"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    report = flat(json.loads(path.with_suffix(".json").read_text()))
    sess = session(path.read_bytes())
    acc = {part: float((run_onnx(sess, getattr(splits, part).x.flatten(1)).argmax(1) ==
                        getattr(splits, part).y).double().mean())
           for part in ("train", "validation", "test")}
    print(f"{label} {scope} {target}: {report['reduction']:.4f}, test {acc['test']:.4f}, "
          f"{wall:.0f} s", file=sys.stderr)
    return {"label": label, "flags": " ".join(flags), "scope": scope, "target": target,
            "report": report, "acc": acc, "wall": wall, "path": path,
            "variants": tmp / name if variants else None}


def _accuracy_table(runs: list[dict]) -> str:
    r0 = runs[0]["report"]
    lines = ["## 1. Tables 4 and 5 analogue: accuracy and FLOPs", "",
             f"Dense: {r0['weights_before']:,} weights, {r0['flops_before']:,} FLOPs, test "
             f"{100 * r0['accuracy_before']:.2f}%. Train = the 54,000 training images "
             "(fine-tuned on), validation = the 6,000 held out of them (picks the best epoch), "
             "test = the official 10,000. FLOPs = 2 x non-zero weights.", "",
             "| target | method | flags | scope | pruned | widths | train | val | test | "
             "Δ test (pt) | FLOPs | wall |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        rep, acc = r["report"], r["acc"]
        widths = "-".join(str(layer["out_after"]) for layer in rep["layers"][:-1])
        lines.append(f"| {r['target']:.2f} | {r['label']} | `{r['flags']}` | {r['scope']} | "
                     f"{100 * rep['reduction']:.2f}% | {widths} | {100 * acc['train']:.2f}% | "
                     f"{100 * acc['validation']:.2f}% | {100 * acc['test']:.2f}% | "
                     f"{100 * (acc['test'] - rep['accuracy_before']):+.2f} | "
                     f"{rep['flops_after']:,} | {r['wall']:.0f} s |")
    lines += ["", "Paper (Table 4, ~80%, their dense 84.35%): magnitude 88.72, activation "
                  "neurons 87.56, neurons & weights 87.11 test. Table 5: magnitude 129 k FLOPs, "
                  "local n&w 97 k of 641 k.", ""]
    return "\n".join(lines)


def _bench_section(target: float, run: dict, result) -> str:
    rep = run["report"]
    lines = [f"## 2. Every variant at {100 * target:.0f}% (neurons & weights, global)", "",
             f"Pruned {100 * rep['reduction']:.2f}%, test {100 * rep['accuracy_after']:.2f}%. "
             "Files from `--variants`: dense = the input's export; masked = pruned weights "
             "zero at the original shapes; shrunk = neurons without inputs or outputs "
             "removed, zeros kept; csr = shrunk with sparse initializers; int8 = shrunk, "
             "quantized, sparse storage where smaller; int8-dense = the input quantized"
             + ("; neurons-shrunk = `--score neurons` at 85% (structured, from table 1); "
                "neurons-aligned-shrunk/-int8 = the same with `--align 16` (every layer a "
                "multiple of 16 wide), float32 and int8" if target == 0.85 else "")
             + ". `compress bench DIR/*.onnx --baseline DIR/dense.onnx --batch "
             "1,32,256 --threads 1,2`: all models of one batch and thread count are timed in "
             "interleaved rounds; peak MB is measured in a child process per file and batch.",
             "", "```", format_bench(result), "```", ""]
    zeros = formats.sparsity(onnx.load(run["variants"] / "shrunk.onnx"))
    layers = ", ".join(f"{name} {'x'.join(map(str, shape))} {100 * z:.1f}%"
                       for name, (shape, z) in zeros.items())
    lines += [f"Zeros per layer of the shrunk model: {layers}.", ""]
    return "\n".join(lines)


def _auto_section(shrunk: Path) -> str:
    lines = ["### `--format auto`", "",
             "What `--format auto` picks for this model (per-layer times, then the whole mix "
             "against all-dense and all-int8, 1 thread):", ""]
    for batch in (1, 32, 256):
        packed = pack_onnx(shrunk.read_bytes(), Format.AUTO, batch=batch, seconds=0.1)
        chosen = ", ".join(f"{k.name}: {k.kernel}" for k in packed.layers)
        lines.append(f"- batch {batch}: {packed.note}; layers {chosen}")
    return "\n".join(lines + [""])


def _break_even(seconds: float) -> str:
    rng = np.random.default_rng(0)
    lines = ["## 4. Break-even sparsity of the sparse kernels (300x784 layer, N(0,1) weights)", "",
             "ms per call of one layer alone (scipy includes one extra onnxruntime call, the "
             "cost of cutting the graph around it). dense = onnxruntime Gemm with the given "
             "threads; scipy and ort-sparse (SparseToDenseMatMul) use one thread.", "",
             "| threads | batch | " + " | ".join(f"{100 * s:g}%" for s in SPARSITIES) +
             " | break-even |", "|---|---|" + "---|" * (len(SPARSITIES) + 1)]
    for threads in (1, 2):
        for batch in (1, 32, 256):
            cells, wins = [], []
            for s in SPARSITIES:
                w = rng.standard_normal((300, 784), dtype=np.float32)
                w[rng.random(w.shape) < s] = 0
                t = time_kernels(w, rng.standard_normal(300, dtype=np.float32), batch=batch,
                                 threads=threads, seconds=seconds)
                sparse = min(t["scipy"], t["ort-sparse"])
                wins.append(sparse < t["dense"])
                best = "scipy" if t["scipy"] <= t["ort-sparse"] else "ort"
                cells.append(f"{t['dense']:.3f} / {sparse:.3f} {best}")
            even = next((f"{100 * s:g}%" for i, s in enumerate(SPARSITIES) if all(wins[i:])),
                        "none")
            lines.append(f"| {threads} | {batch} | " + " | ".join(cells) + f" | {even} |")
    lines += ["", "Cells: dense ms / best sparse ms and which. Break-even: the lowest sparsity "
                  "from which the best sparse kernel is faster at every sparsity measured.", ""]
    return "\n".join(lines)


def _smallest(variants: dict, aligned: dict, splits) -> str:
    lines = ["## 5. The smallest file", "",
             "| target | score | file | bytes | % of dense | test accuracy |",
             "|---|---|---|---|---|---|"]
    runs = [(t, "neurons & weights", r) for t, r in variants.items()]
    runs += [(0.85, "neurons, --align 16", aligned)]
    for target, score, run in runs:
        d = run["variants"]
        dense = (d / "dense.onnx").stat().st_size
        for name in ("shrunk", "csr", "int8", "int8-dense"):
            path = d / f"{name}.onnx"
            acc = float((run_onnx(session(path.read_bytes()), splits.test.x.flatten(1))
                         .argmax(1) == splits.test.y).double().mean())
            lines.append(f"| {100 * target:.0f}% | {score} | {name} | {path.stat().st_size:,} | "
                         f"{100 * path.stat().st_size / dense:.1f}% | {100 * acc:.2f}% |")
    return "\n".join(lines + [""])


if __name__ == "__main__":
    main()
