"""`make bench` (CNN part): the example VGG-BN and ResNet (benchmarks/cnn.md) and torchvision's
ResNet-18 and MobileNetV3-small (`--models resnet18_fmnist,mobilenet_v3_small_fmnist --out
benchmarks/vision.md`) at about 30, 50 and 70% fewer FLOPs, with fine-tuning and one-shot. Ours runs through the real CLI with its defaults; Torch-Pruning
1.6 (magnitude importance, channels in multiples of 8) is pruned as near each target as its
steps of channels allow, and ours to the FLOPs it reached; Torch-Pruning is fine-tuned with
exactly our recipe (same splits, cycles, epochs, optimiser, distillation), exported and timed
the same way. Writes benchmarks/cnn.md, keeping what it already holds and this run does not
repeat: other models' sections, and rows of other modes or targets (each section says when
each mode's rows ran).

    python -m benchmarks.cnn [--models resnet,vgg_bn] [--targets 0.3,0.5,0.7] [--seconds 1.0]

Needs the benchmark extra: pip install -e '.[bench]' (make bench installs it).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import onnx
import torch
import torch_pruning as tp

from benchmarks.common import (
    CELLS,
    Result,
    commit,
    cpu,
    flat,
    flops_of,
    machine,
    measured,
    model_sections,
    time_cells,
)
from compressor.graph.capture import capture, run_batched
from compressor.io.inputs import fit_data
from compressor.io.load import load_model
from compressor.io.sources import load_data
from compressor.measure.widths import Kernel, preferred_multiple
from compressor.plan.rules import CNN_SCHEDULE
from compressor.prune.config import FinetuneConfig
from compressor.prune.cycles import schedule
from compressor.prune.finetune import finetune

REPO = Path(__file__).resolve().parents[1]
MODELS = {  # name: (what builds it, title)
    "resnet": ("models.cnn:resnet", "ResNet (stem 24, blocks 24/48/96)"),
    "vgg_bn": ("models.cnn:vgg_bn", "VGG-BN (32-32-64-64-128)"),
    "resnet18_fmnist": ("models.vision:resnet18_fmnist", "torchvision ResNet-18 (3 x 32 x 32)"),
    "mobilenet_v3_small_fmnist": ("models.vision:mobilenet_v3_small_fmnist",
                                  "torchvision MobileNetV3-small (3 x 32 x 32)"),
}
MODES = {"fine-tuned": True, "one-shot": False}
ROW = re.compile(r"^\| (\d+)% \([^|]*\) \| (fine-tuned|one-shot) \|")  # (target, mode)
RUN = re.compile(r"(?i)(fine-tuned|one-shot) rows at ([\d/]+)%: "
                 r"(\d{4}-\d\d-\d\d at commit \w+(?: on [^;]+?)?)(?:;|\. Dense)")
SEED = 0
MULTIPLE = preferred_multiple(Kernel.CONV).multiple  # what --align auto rounds conv channels to here
PEER_ROUND = 8  # Torch-Pruning's round_to: with 16, its one ratio for every layer cannot reach
# 30% fewer FLOPs on the ResNet (its 24-channel layers jump to 16 all at once)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet,vgg_bn")
    parser.add_argument("--targets", default="0.3,0.5,0.7")
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per latency cell")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "cnn.md")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="fine-tuned, one-shot or both (fine-tuning a torchvision "
                             "ResNet-18 takes hours on 2 cores)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    targets = [float(t) for t in args.targets.split(",")]
    modes = [m for m in MODES if m in args.modes.split(",")]
    titles = {f"## {title}": name for name, (_, title) in MODELS.items()}
    sections = model_sections(args.out, titles)
    for name in args.models.split(","):
        dense, rows = _model_rows(name, targets, args.seconds, modes)
        sections[name] = _table(name, dense, rows, modes, sections.get(name, ""))
        args.out.write_text(_header(args.seconds)
                            + "\n".join(sections[n] for n in MODELS if n in sections))
    print(args.out.read_text())


def _model_rows(name: str, targets: list[float], seconds: float,
                modes: list[str]) -> tuple[Result, list]:
    path = REPO / "models" / f"{name}.pt"
    loaded = load_model(path, arch=MODELS[name][0])
    splits, _ = fit_data(loaded, load_data("fashion-mnist", seed=SEED))
    sample = splits.validation.x[:256]
    module = _module(name)
    dense = _measured("dense", module, splits, sample)
    teacher = run_batched(capture(loaded, sample[:2]), splits.train.x)
    rows = []
    for tuned in (MODES[m] for m in modes):
        for target in targets:
            goal = round((1 - target) * dense.flops)
            peer = _torch_pruning(module, goal, target, tuned, splits, sample, teacher)
            budget = math.ceil(1e4 * (1 - peer.flops / dense.flops)) / 1e4  # ours keeps <=
            with tempfile.TemporaryDirectory() as tmp:
                ours = _ours(path, name, budget, tuned, Path(tmp), splits)
            base = replace(dense, latency={})  # dense timed with each row group
            time_cells([base, ours, peer], sample, seconds)
            rows.append((target, tuned, base, ours, peer))
            print(f"{name} {target} ({budget}) {'fine-tuned' if tuned else 'one-shot'}: ours "
                  f"{100 * ours.accuracy:.2f}% ({ours.wall:.0f} s), Torch-Pruning "
                  f"{100 * peer.accuracy:.2f}%", file=sys.stderr)
    return dense, rows


def _module(name: str) -> torch.nn.Module:
    module_name, _, builder = MODELS[name][0].partition(":")
    module = getattr(importlib.import_module(module_name), builder)()
    module.load_state_dict(torch.load(REPO / "models" / f"{name}.pt", weights_only=True))
    return module.eval()


def _ours(path: Path, name: str, target: float, tuned: bool, tmp: Path, splits, *,
          seed: int = SEED) -> Result:
    out = tmp / "out.onnx"
    cmd = [str(Path(sys.executable).with_name("compress")), str(path), "--arch",
           MODELS[name][0], "--target", str(target), "--of", "flops", "--data",
           "fashion-mnist", "-o", str(out), *([] if tuned else ["--epochs", "0"]),
           *(["--seed", str(seed)] if seed != SEED else [])]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    report = flat(json.loads(out.with_suffix(".json").read_text()))
    data = out.read_bytes()
    return Result("ours", data, report["flops_after"], report["weights_after"],
                  report["accuracy_after"], wall, _widths(data))


def _torch_pruning(dense: torch.nn.Module, flops: int, target: float, tuned: bool, splits,
                   sample: torch.Tensor, teacher: torch.Tensor, *, seed: int = SEED) -> Result:
    """Torch-Pruning's magnitude importance (its default, L2 over each coupled group, one
    pruning ratio for every layer, channels rounded to multiples of PEER_ROUND), in the same
    cycles as ours when fine-tuned, the last one landing as near `flops` as its steps of
    channels allow (ours is then pruned to the FLOPs it reached)."""
    model = copy.deepcopy(dense)
    base = flops_of(model, sample)
    cycles, epochs = CNN_SCHEDULE if tuned else (1, 0)
    steps = schedule(target, cycles)
    for n, step in enumerate(steps, 1):
        goal = flops if n == len(steps) else round((1 - step) * base)
        model = _prune_to(model, goal, sample)
        if tuned:  # channels-last kernels as ours have: the same math, 1.5x faster on CPU
            model = model.to(memory_format=torch.channels_last)
            finetune(model, splits.train, splits.validation, FinetuneConfig(max_epochs=epochs),
                     teacher=teacher, seed=seed + n)
    return _measured("Torch-Pruning", model, splits, sample)


def _prune_to(model: torch.nn.Module, goal: int, sample: torch.Tensor) -> torch.nn.Module:
    """The single pruning ratio whose result has the FLOPs nearest to `goal` (bisection on the
    ratio; with channels in multiples the FLOPs move in steps, so the two results either
    side of `goal` are compared)."""
    lo, hi = 0.0, 0.95
    above = below = None  # (FLOPs, model) nearest to goal from either side
    for _ in range(12):
        ratio = (lo + hi) / 2
        candidate = copy.deepcopy(model)
        pruner = tp.pruner.MetaPruner(
            candidate, sample[:2], importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=ratio, round_to=PEER_ROUND,
            ignored_layers=[m for m in candidate.modules() if isinstance(m, torch.nn.Linear)
                            and m.out_features == 10])
        pruner.step()
        flops = flops_of(candidate, sample)
        if flops >= goal:
            lo, above = ratio, (flops, candidate)
        else:
            hi, below = ratio, (flops, candidate)
    nearest = min((c for c in (above, below) if c), key=lambda c: abs(c[0] - goal))
    return nearest[1].eval()


def _measured(who: str, module: torch.nn.Module, splits, sample: torch.Tensor) -> Result:
    result = measured(who, module, splits.test, sample)
    result.widths = _widths(result.onnx)
    return result


def _widths(model: bytes) -> str:
    """Output channels of every Conv node of an ONNX file, in graph order."""
    proto = onnx.load_from_string(model)
    shapes = {t.name: t.dims for t in proto.graph.initializer}
    return "-".join(str(shapes[n.input[1]][0]) for n in proto.graph.node if n.op_type == "Conv")


def _header(seconds: float) -> str:
    cycles, epochs = CNN_SCHEDULE
    return "\n".join([
        "# Benchmark: CNNs on Fashion-MNIST, channels pruned to about 30/50/70% fewer FLOPs",
        "",
        "Produced by `make bench` (`python -m benchmarks.cnn`); each section says when and on "
        "which CPU its rows ran (speedups are per CPU). Machine of the latest run: "
        f"{machine()}, Torch-Pruning {tp.__version__}.",
        "",
        "**Ours**: `compress models/M.pt --arch A --target T --of flops --data "
        "fashion-mnist` with every other option left to the plan (for conv channels: local "
        "scope; behind ReLUs, fine-tuned, the norm of each channel's row and consumer columns "
        "(`group`) and the firing rate one shot, "
        "energy behind other activations; lsq compensation; `--align auto`: channels in steps of "
        f"{MULTIPLE} (what it measured for this CPU's convolutions) in layers of at least "
        f"{4 * MULTIPLE} channels, in multiples of 8 in narrower ones), "
        f"{cycles} cycle(s) of {epochs} fine-tuning epochs with distillation); one-shot adds "
        "`--epochs 0` (one cycle, lsq on 10,000 unlabelled calibration images, no training).",
        "",
        "**Torch-Pruning**: `MetaPruner` with `MagnitudeImportance(p=2)` (its default group "
        f"L2 magnitude, one ratio for every layer), `round_to={PEER_ROUND}` (with "
        f"{MULTIPLE}, its one ratio cannot reach 30% fewer FLOPs on the ResNet: the 24-channel "
        "layers drop to 16 at once), the classifier "
        "ignored; the ratio is bisected so that the model keeps the FLOPs nearest to the "
        f"target (its widths move in steps of {PEER_ROUND} channels, so it cannot land on any "
        "FLOP count), "
        "in the same cycles; **ours is then pruned to the FLOP reduction Torch-Pruning "
        "reached** (`--target` = that reduction, rounded up; `--of flops` lands within 2 points "
        "above it), so both methods are compared at the same FLOPs, ours never keeping more; "
        "fine-tuned by the very function ours "
        "uses (Adam 1e-3 with cosine decay, batch 128, distillation 0.5 at temperature 4 from "
        "the dense logits, best validation epoch kept), BatchNorm in eval mode (as folded into "
        "the conv in ours); exported by the same capture (BatchNorm folded) and exporter.",
        "",
        "Accuracy: the 10,000-image test set in onnxruntime (never trained or calibrated on). "
        "FLOPs and weights: every Conv and Linear, counted as `compress check` counts them. "
        "Latency: onnxruntime CPU, best of 5 interleaved rounds' median `run()` time, "
        f"{seconds:g} s per model and cell, dense, ours and Torch-Pruning interleaved; speedup "
        "= dense latency / latency; **efficiency** = speedup / FLOP ratio (1.0: every FLOP "
        "removed saved its share of time). Wall: the whole `compress` command (load, counting, "
        "compensation, fine-tuning on torch's default threads, export, verification, its own "
        "latency "
        "measurement).",
        "",
    ])


def _table(name: str, dense: Result, rows: list, modes: list[str], kept: str) -> str:
    """The model's section: this run's rows, and those of `kept` (the section as it was) for
    modes or targets it did not run."""
    done = {(f"{100 * target:.0f}", "fine-tuned" if tuned else "one-shot")
            for target, tuned, *_ in rows}
    runs = [(mode.lower(), [t for t in targets.split("/") if (t, mode.lower()) not in done], when)
            for mode, targets, when in RUN.findall(kept)]
    now = f"{time.strftime('%Y-%m-%d')} at commit {commit()} on {cpu()}"
    runs += [(mode, [t for t, m in sorted(done, key=lambda d: int(d[0])) if m == mode], now)
             for mode in modes]
    merged: dict[tuple[str, str], set[str]] = {}
    for mode, targets, when in runs:
        merged.setdefault((mode, when), set()).update(targets)
    said = "; ".join(f"{mode} rows at {'/'.join(sorted(targets, key=int))}%: {when}"
                     for (mode, when), targets in sorted(
                         merged.items(), key=lambda run: list(MODES).index(run[0][0]))
                     if targets)
    lat = rows[0][2].latency
    lines = [
        f"## {MODELS[name][1]}",
        "",
        f"{said[0].upper()}{said[1:]}. Dense: as timed in the latest run.",
        "",
        f"Dense: {dense.weights:,} weights, {dense.flops:,} FLOPs/sample, "
        f"{len(dense.onnx):,} ONNX bytes, test accuracy {100 * dense.accuracy:.2f}%, conv "
        f"widths {dense.widths}; latency {lat[1, 1]:.3f} ms at batch 1 and "
        f"{lat[32, 1]:.2f} ms at batch 32 (1 thread), {lat[1, 2]:.3f} / {lat[32, 2]:.2f} ms "
        "(2 threads).",
        "",
        "| target (reached) | mode | method | FLOPs (ratio) | conv widths | weights | ONNX bytes "
        "| test acc | Δ acc (pt) | b1 1t | b32 1t | b1 2t | b32 2t | efficiency b32 1t | wall |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    table = [line for line in kept.splitlines()
             if ROW.match(line) and ROW.match(line).groups() not in done]
    for target, tuned, base, *results in rows:
        for r in results:
            ratio = dense.flops / r.flops
            speed = {cell: base.latency[cell] / r.latency[cell] for cell in CELLS}
            table.append(
                f"| {100 * target:.0f}% ({100 * (1 - r.flops / dense.flops):.1f}%) | "
                f"{'fine-tuned' if tuned else 'one-shot'} | {r.who} | "
                f"{r.flops:,} ({ratio:.2f}x) | {r.widths} | {r.weights:,} | {len(r.onnx):,} | "
                f"{100 * r.accuracy:.2f}% | {100 * (r.accuracy - dense.accuracy):+.2f} | "
                + " | ".join(f"{r.latency[c]:.3f} ms ({speed[c]:.2f}x)" for c in CELLS)
                + f" | {speed[32, 1] / ratio:.2f} | "
                + (f"{r.wall:.0f} s |" if r.wall is not None else "– |"))
    modes_first = list(MODES)
    table.sort(key=lambda line: (modes_first.index(ROW.match(line)[2]), int(ROW.match(line)[1])))
    return "\n".join([*lines, *table, ""])


if __name__ == "__main__":
    main()
