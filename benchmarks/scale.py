"""`make bench`: data at full size and fine-tuning in several processes. (1) Peak memory of a
one-shot run (`--epochs 0`: calibrate, select, refit, export, evaluate) on 1k, 10k and 50k
images of 3 x 64 x 64 from `--data module:callable` (a map-style Dataset, read in batches),
beside the same images from a `.npy` file (read whole). (2) The ResNet example fine-tuned on
Fashion-MNIST in one process with 1 and 2 torch threads and in two processes under torchrun
(gloo, 1 thread each): wall time, fine-tuning throughput and test accuracy, two seeds each.
Writes benchmarks/scale.md, and its rows to the .json beside it.

    python -m benchmarks.scale [--out benchmarks/scale.md] [--only memory|tuned]

`--only` runs one part again and keeps the other's rows from the .json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import child
from benchmarks.common import machine

REPO = Path(__file__).resolve().parents[1]
SIZE, CLASSES = 64, 10
STREAMED = (1_000, 10_000, 50_000)
FROM_FILE = (1_000, 10_000)  # 50k images are 2.5 GB as float32: the file route's point is made
CALIBRATION = 500  # --calibration-samples for the table: the same calibration work at every N
FLAT = 0.10  # the goal: peak memory within 10% across sample counts when streamed
RESNET = ["models/resnet.pt", "--arch", "models.cnn:resnet", "--target", "0.5", "--of", "flops",
          "--data", "fashion-mnist", "--epochs", "2", "--cycles", "1", "--no-latency", "-q"]
RUNS = {  # name: (launcher arguments, extra command arguments, environment)
    "1 process, 1 thread": ([], ["--threads", "1"], {}),
    "1 process, 2 threads": ([], ["--threads", "2"], {}),
    "2 processes (torchrun, gloo), 1 thread each": (
        ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"], [],
        {"OMP_NUM_THREADS": "1"}),
}
SEEDS = (0, 1)


class Images(torch.utils.data.Dataset):
    """`n` labelled images made on demand from their index (no file, nothing held)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        generator = torch.Generator().manual_seed(i)
        return torch.rand(3, SIZE, SIZE, generator=generator), i % CLASSES


def images() -> Images:
    """The `--data benchmarks.scale:images` callable: $SCALE_SAMPLES images."""
    return Images(int(os.environ["SCALE_SAMPLES"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "scale.md")
    parser.add_argument("--only", choices=("memory", "tuned"))
    args = parser.parse_args()
    raw = args.out.with_suffix(".json")
    rows = json.loads(raw.read_text()) if args.only else {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only != "tuned":
            model = _model(work)
            rows["memory"] = [_memory(work, model, n, streamed=True) for n in STREAMED] + \
                [_memory(work, model, n, streamed=False) for n in FROM_FILE] + \
                [_memory(work, model, STREAMED[-1], streamed=True, calibration=None)]
        if args.only != "memory":
            rows["tuned"] = [_tuned(work, name, seed) for name in RUNS for seed in SEEDS]
    raw.write_text(json.dumps(rows, indent=1) + "\n")
    args.out.write_text(_markdown(rows["memory"], rows["tuned"]))
    print(args.out.read_text())


def _model(work: Path) -> Path:
    """torchvision's ResNet-18 (10 classes, random initialisation) as a .pt2 program."""
    from compressor.graph.capture import export_program
    from models.vision import classifier

    path = work / "resnet18.pt2"
    torch.export.save(export_program(classifier("resnet18"), torch.rand(2, 3, SIZE, SIZE)),
                      str(path))
    return path


def _memory(work: Path, model: Path, n: int, *, streamed: bool,
            calibration: int | None = CALIBRATION) -> dict:
    if streamed:
        data, env = "benchmarks.scale:images", {"SCALE_SAMPLES": str(n)}
    else:
        x = np.stack([Images(n)[i][0].numpy() for i in range(n)])
        data, env = str(work / f"images{n}.npz"), {}
        np.savez(data, x=x, y=np.arange(n) % CLASSES)
        del x
    out = work / "memory.onnx"
    cmd = [str(Path(sys.executable).with_name("compress")), str(model), "--target", "0.5",
           "--of", "flops", "--data", data, "--input-shape", f"3,{SIZE},{SIZE}", "--epochs",
           "0", "--no-latency", "-q", "-o", str(out)]
    if calibration is not None:
        cmd += ["--calibration-samples", str(calibration)]
    wall, peak = _child(cmd, env)
    report = json.loads(out.with_suffix(".json").read_text())
    if not streamed:
        Path(data).unlink()
    print(f"memory: {n} {'streamed' if streamed else 'file'}, calibration {calibration}: "
          f"{peak:.2f} GB, {wall:.0f} s", file=sys.stderr)
    return {"samples": n, "streamed": streamed, "peak": peak, "wall": wall,
            "flops": report["size"]["flop_reduction"], "calibration": calibration}


def _tuned(work: Path, name: str, seed: int) -> dict:
    launcher, extra, env = RUNS[name]
    out = work / "tuned.onnx"
    cmd = [sys.executable, *(launcher or []), "-m", "compressor", *RESNET, *extra,
           "--seed", str(seed), "-o", str(out)]
    wall, _ = _child(cmd, env)
    report = json.loads(out.with_suffix(".json").read_text())
    cycles = report["cycles"]
    trained = sum(c["epochs"] for c in cycles) * _train_samples()
    seconds = sum(c["finetune_seconds"] for c in cycles)
    print(f"tuned: {name}, seed {seed}: {wall:.0f} s, {trained / seconds:.0f} samples/s",
          file=sys.stderr)
    return {"run": name, "seed": seed, "wall": wall, "finetune": seconds,
            "throughput": trained / seconds, "accuracy": report["accuracy"]["after"],
            "processes": report["threads"]["processes"]}


def _train_samples() -> int:
    from compressor.io.data import load_fashion_mnist

    return len(load_fashion_mnist().train)


def _child(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run `cmd`; its wall seconds and peak resident memory (GB; of its largest process)."""
    done = child.run(cmd, cwd=REPO, env=env)
    if done.code:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.error}")
    return done.wall, done.peak


def _markdown(memory: list[dict], tuned: list[dict]) -> str:
    streamed = [m["peak"] for m in memory if m["streamed"] and m["calibration"]]
    spread = max(streamed) / min(streamed) - 1
    lines = [
        "# Benchmark: data at full size, fine-tuning in several processes",
        "",
        f"Produced by `make bench` (`python -m benchmarks.scale`) on "
        f"{time.strftime('%Y-%m-%d')}. Machine: {machine()}.",
        "",
        "## Peak memory against the number of samples",
        "",
        f"torchvision's ResNet-18 (random initialisation, 10 classes) as a `.pt2` program, "
        f"`compress M.pt2 --target 0.5 --of flops --data D --input-shape 3,{SIZE},{SIZE} "
        f"--epochs 0 --no-latency --calibration-samples {CALIBRATION:,}`: one shot "
        "(calibration on the first samples of the train split, selection, refit, export, "
        f"parity, accuracy on the test split), labelled {SIZE} x {SIZE} RGB images; the last "
        "row leaves the calibration at its default (10,000 samples): the least-squares refit "
        "holds the activations of up to 1 GB of calibration samples at once, a bound of its "
        "own that the samples reach before the data's size matters. Streamed: `--data "
        "benchmarks.scale:images`, a map-style Dataset that makes each image from its index "
        "(read a batch at a time). From a file: the same images in a `.npz` (read whole). "
        "Peak: the command's peak resident memory.",
        "",
        "| samples | data | calibration samples | peak memory | wall | FLOPs removed |",
        "|---|---|---|---|---|---|",
    ]
    for m in memory:
        lines.append(f"| {m['samples']:,} | {'streamed' if m['streamed'] else 'file'} | "
                     f"{m['calibration'] or 10_000:,} | {m['peak']:.2f} GB | {m['wall']:.0f} s | "
                     f"{100 * m['flops']:.1f}% |")
    lines += ["", f"Streamed peaks at {CALIBRATION:,} calibration samples spread "
              f"{100 * spread:.1f}% from the least to the most "
              f"(goal: flat within {100 * FLAT:.0f}%: "
              f"{'met' if spread <= FLAT else 'missed'}).", "",
              "## Fine-tuning in one and two processes", "",
              "The ResNet example on Fashion-MNIST, `compress models/resnet.pt --arch "
              "models.cnn:resnet --target 0.5 --of flops --data fashion-mnist --epochs 2 "
              "--cycles 1 --no-latency` (one cycle, two epochs at most, early stopping as "
              "always). Throughput: training samples x epochs run / the fine-tuning stage's "
              "seconds (its validation passes included). Two processes: `torchrun "
              "--standalone --nproc-per-node 2 -m compressor ...`, the batch of 128 split 64 "
              "+ 64, gradients averaged by DistributedDataParallel.",
              "",
              "| run | seed | wall | fine-tuning | samples/s | test acc |",
              "|---|---|---|---|---|---|"]
    for t in tuned:
        lines.append(f"| {t['run']} | {t['seed']} | {t['wall']:.0f} s | {t['finetune']:.0f} s | "
                     f"{t['throughput']:.0f} | {100 * t['accuracy']:.2f}% |")
    means = {}
    for t in tuned:
        means.setdefault(t["run"], []).append(t)
    lines += ["", "Means over the seeds:", ""]
    for name, runs in means.items():
        lines.append(f"- {name}: {np.mean([r['throughput'] for r in runs]):.0f} samples/s, "
                     f"wall {np.mean([r['wall'] for r in runs]):.0f} s, test accuracy "
                     f"{100 * np.mean([r['accuracy'] for r in runs]):.2f}%")
    lines += ["", *_reading(means)]
    return "\n".join(lines) + "\n"


def _reading(means: dict[str, list[dict]]) -> list[str]:
    """What the runs say about more processes: the fine-tuning speed-up over one thread,
    and the seconds outside fine-tuning (what is not shared between processes)."""
    def mean(name: str, key: str) -> float:
        return float(np.mean([r[key] for r in means[name]]))

    one, threads, processes = list(means)
    outside = {name: mean(name, "wall") - mean(name, "finetune") for name in means}
    return [
        f"Fine-tuning ran {mean(processes, 'throughput') / mean(one, 'throughput'):.2f}x "
        f"faster in two processes than in one with one thread, and "
        f"{mean(threads, 'throughput') / mean(one, 'throughput'):.2f}x with two threads in one "
        f"process. Outside fine-tuning a run took {outside[one]:.0f} s (one thread), "
        f"{outside[threads]:.0f} s (two threads) and {outside[processes]:.0f} s (two "
        "processes): there every process loads the model and the data, computes the dense "
        "model's logits on the whole training split for distillation, and rank 0 alone "
        "exports, verifies and measures, each on one thread; only counting and the error "
        "criterion's sums are split between the processes. So on one machine, processes pay "
        "where threads stop scaling (many cores, small layers); on several machines or GPUs, "
        "expect the fine-tuning stage to scale with the processes while DistributedDataParallel's "
        "gradient exchange stays small beside a step's compute, and the rest of the run not to "
        "(measured here only with gloo on 2 CPU cores; nccl and GPUs have not run).",
    ]


if __name__ == "__main__":
    main()
