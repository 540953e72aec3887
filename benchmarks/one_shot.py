"""`make bench` (one-shot part): compression without fine-tuning, against the neuron-merging
paper (Kim et al., NeurIPS 2020, Table 1), and one shot without labels on the paper MLP;
writes benchmarks/one_shot.md.

    python -m benchmarks.one_shot [--out benchmarks/one_shot.md]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from benchmarks.common import flat
from compressor.export.verify import run_onnx
from compressor.graph.capture import capture, run_batched
from compressor.graph.trace import trace
from compressor.io.data import load_fashion_mnist
from compressor.io.load import LoadedModel, ModelFormat, load_model
from compressor.plan import DataFacts, Options, ThisMachine, model_facts, plan
from compressor.prune.calibrate import count_activations
from compressor.prune.compensate import compensate
from compressor.prune.config import CompensateConfig, Compensation, Criterion, SelectConfig
from compressor.prune.finetune import accuracy
from compressor.prune.select import unit_scores
from compressor.prune.shrink import shrink
from compressor.runtime import session
from models.mlp import mlp

REPO = Path(__file__).resolve().parents[1]
LENET, LENET_ARCH = REPO / "models" / "lenet_300_100.pt", "models.mlp:lenet_300_100"
MLP, MLP_ARCH = REPO / "models" / "paper_mlp.pt", "models.mlp:paper_mlp"
WIDTHS = ((150, 50), (120, 40), (90, 30), (60, 20))
METHODS = (Compensation.NONE, Compensation.MEAN, Compensation.MERGE, Compensation.LSQ)
PAPER = {"prune": (88.40, 85.17, 71.26, 66.76), "merge": (88.69, 86.92, 82.75, 80.02)}
CALIBRATION = 10_000  # as `compress --calibration-samples` by default
CRITERIA = list(Criterion)  # what the plan chooses by default: see lenet_defaults
SLICES = 3  # disjoint calibration sets for the default options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "one_shot.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = load_fashion_mnist().map_x(lambda x: x.flatten(1))
    table = lenet_table(data)
    defaults = lenet_defaults(data)
    cli_rows = paper_mlp_without_labels(data)
    scaling = lsq_scaling()
    args.out.write_text(_markdown(table, defaults, cli_rows, scaling))
    print(args.out.read_text())


def lenet_table(data) -> dict:
    """Test accuracy (and compensation time) per criterion x compensation x widths."""
    dense = capture(load_model(LENET, arch=LENET_ARCH), data.train.x[:2])
    calib = data.train.x[:CALIBRATION]
    rows = {"dense": accuracy(run_batched(dense, data.test.x), data.test.y)}
    for criterion in CRITERIA:
        for method in METHODS:
            accs, ranking, compensating = [], [], []
            for widths in WIDTHS:
                gm, took = prune_to_widths(dense, widths, criterion, method, calib)
                accs.append(accuracy(run_batched(gm, data.test.x), data.test.y))
                ranking.append(took[0])
                compensating.append(took[1])
            rows[(criterion, method)] = (accs, max(ranking), max(compensating))
            print(f"{criterion.value} {method.value}: "
                  + " ".join(f"{100 * a:.2f}" for a in accs), file=sys.stderr)
    return rows


def lenet_defaults(data) -> list[list[float]]:
    """Test accuracy of the default options (criterion and compensation auto) at every width,
    calibrated on each of SLICES disjoint sets of CALIBRATION training images."""
    dense = capture(load_model(LENET, arch=LENET_ARCH), data.train.x[:2])
    chosen = plan(Options(0.5), model_facts(dense, trace(dense)), DataFacts(True, False),
                  ThisMachine()).prune  # one shot: unlabelled calibration data
    criterion, method = chosen.select.criterion, chosen.compensate.method
    runs = []
    for k in range(SLICES):
        calib = data.train.x[k * CALIBRATION:(k + 1) * CALIBRATION]
        runs.append([accuracy(run_batched(prune_to_widths(dense, widths, criterion, method,
                                                          calib)[0],
                                          data.test.x), data.test.y) for widths in WIDTHS])
        print(f"defaults, calibration slice {k}: "
              + " ".join(f"{100 * a:.2f}" for a in runs[-1]), file=sys.stderr)
    return runs


def prune_to_widths(dense, widths: tuple[int, ...], criterion: Criterion, method: Compensation,
                    calib: torch.Tensor):
    """Keep the `widths` best-scored units of each hidden layer, compensate, shrink: one shot.

    Returns the pruned graph and the seconds ranking (scores only, without counting
    activations) and compensation took."""
    gm = copy.deepcopy(dense)
    groups = trace(gm).groups
    stats = count_activations(gm, groups, calib)
    start = time.perf_counter()
    scores = unit_scores(gm, groups, SelectConfig(criterion), stats=stats, x=calib)
    ranked = time.perf_counter() - start
    removed = {g.name: torch.argsort(scores[g.name], stable=True)[:g.size - w].sort().values
               for g, w in zip(groups, widths)}
    start = time.perf_counter()
    compensate(gm, groups, removed, CompensateConfig(method), stats=stats, x=calib)
    took = time.perf_counter() - start
    shrink(gm, groups, removed)
    return gm, (ranked, took)


def paper_mlp_without_labels(data) -> list[dict]:
    """`compress models/paper_mlp.pt --target 0.85` in one shot: unlabelled data, or none."""
    runs = [("auto", "auto", True), ("activation", "auto", True), ("l1", "auto", True),
            ("l2", "auto", True),
            ("error", "auto", True),
            ("activation", "mean", True), ("activation", "none", True),
            ("l1", "merge", False), ("l1", "none", False)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        unlabelled = Path(tmp) / "fashion-mnist-train-images.npy"
        np.save(unlabelled, data.train.x[:CALIBRATION + CALIBRATION // 9].numpy())
        for criterion, method, with_data in runs:
            out = Path(tmp) / f"{criterion}-{method}-{with_data}.onnx"
            cmd = [str(Path(sys.executable).with_name("compress")), str(MLP), "--arch", MLP_ARCH,
                   "--target", "0.85", "--criterion", criterion, "--compensate", method,
                   "--no-latency", "-q", "-o", str(out)]
            cmd += ["--data", str(unlabelled)] if with_data else []
            start = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - start
            report = flat(json.loads(out.with_suffix(".json").read_text()))
            acc = accuracy(run_onnx(session(out.read_bytes()), data.test.x), data.test.y)
            chosen = f"auto → {report['criterion']} (default)" if criterion == "auto" \
                else criterion
            rows.append({"criterion": chosen, "compensate": report["compensate"],
                         "data": with_data, "reduction": report["reduction"],
                         "accuracy": acc,
                         "compensate_seconds": report["cycles"][0]["compensate_seconds"],
                         "merged": report["cycles"][0]["merged"], "wall": wall})
            print(f"paper MLP {criterion} {method} data={with_data}: {100 * acc:.2f}",
                  file=sys.stderr)
    return rows


def lsq_scaling() -> list[tuple[str, int, float, float | None]]:
    """Seconds `lsq` takes to refit wide layers and the `error` criterion takes to rank them
    (random weights, random inputs, every other neuron removed)."""
    rows = []
    for width in (1024, 2048, 4096):
        torch.manual_seed(0)
        net = mlp((784, width, width, 10)).eval()
        x = torch.rand(CALIBRATION, 784)
        gm = capture(LoadedModel(Path("random"), ModelFormat.PICKLED_MODULE, net), x[:2])
        groups = trace(gm).groups
        start = time.perf_counter()
        unit_scores(gm, groups, SelectConfig("error"), x=x)
        ranking = time.perf_counter() - start
        removed = {g.name: torch.arange(0, g.size, 2) for g in groups}
        start = time.perf_counter()
        compensate(gm, groups, removed, CompensateConfig("lsq"), x=x)
        rows.append((f"784-{width}-{width}-10", CALIBRATION, time.perf_counter() - start, ranking))
        print(f"{width}: lsq {rows[-1][2]:.1f} s, error ranking {ranking} s", file=sys.stderr)
    return rows


def _markdown(table: dict, defaults: list[list[float]], cli_rows: list[dict],
              scaling: list) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    facts = json.loads(LENET.with_suffix(".json").read_text())
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    lines = [
        "# One-shot compression (no fine-tuning) against the neuron-merging paper",
        "",
        f"Produced by `make bench` on {time.strftime('%Y-%m-%d')}. Machine: {os.cpu_count()} "
        f"cores ({cpu}), no GPU, torch {torch.__version__} with 2 threads, onnxruntime "
        f"{onnxruntime.__version__}, Python {platform.python_version()}.",
        "",
        "## LeNet-300-100 on Fashion-MNIST (Kim et al. 2020, Table 1 setting)",
        "",
        f"`models/lenet_300_100.pt`, trained with the merging paper's recipe (`make "
        f"train-lenet`: {facts['epochs']} epochs, SGD lr {facts['lr']}, weight decay "
        f"{facts['weight_decay']}, inputs normalised to [-1, 1] inside the model): "
        f"{pct(table['dense'])}% test accuracy (paper: 89.80%). Both hidden layers are cut to "
        "the widths below (the same ratio in each), then compensated once; no fine-tuning. "
        f"Neurons are ranked on the original weights; activation counts, `mean` and `lsq` use "
        f"the first {CALIBRATION:,} training images after the 6,000 validation images. Test "
        "accuracy (%) on the 10,000 official test images:",
        "",
        "| criterion | compensation | " + " | ".join(f"{a}-{b}" for a, b in WIDTHS)
        + " | ranking time | compensation time |",
        "|---|---|" + "---|" * len(WIDTHS) + "---|---|",
    ]
    for name, accs in PAPER.items():
        lines.append(f"| l1 (paper) | {name} (paper) | "
                     + " | ".join(f"{a:.2f}" for a in accs) + " | | |")
    for criterion in CRITERIA:
        for method in METHODS:
            accs, ranking, compensating = table[(criterion, method)]
            cells = " | ".join(pct(a) for a in accs)
            lines.append(f"| {criterion.value} | {method.value} | {cells} | {ranking:.3f} s | "
                         f"{compensating:.3f} s |")
    lines += [
        "",
        "`none` removes only (constant outputs are still folded exactly); `merge` uses the "
        "paper's threshold t = 0.45; `lsq` is also what `--compensate auto` picks with data. "
        "Times are the slowest of the four widths (2 torch threads); ranking time excludes "
        "counting activations, which every criterion here shares.",
        "",
        f"**Default options** (`--criterion auto`, which ranks by error in one shot, and "
        f"`--compensate auto` = lsq), calibrated on each of {SLICES} disjoint sets of "
        f"{CALIBRATION:,} training images (mean ± sd over the sets):",
        "",
        "| calibration set | " + " | ".join(f"{a}-{b}" for a, b in WIDTHS) + " |",
        "|---|" + "---|" * len(WIDTHS),
        *(f"| images {k * CALIBRATION:,}-{(k + 1) * CALIBRATION - 1:,} | "
          + " | ".join(pct(a) for a in accs) + " |" for k, accs in enumerate(defaults)),
        "| mean ± sd | " + " | ".join(
            f"{100 * statistics.mean(col):.2f} ± {100 * statistics.stdev(col):.2f}"
            for col in zip(*defaults)) + " |",
        "",
        "## The paper MLP (784-300-200-100-50-10), one shot without labels, --target 0.85",
        "",
        "Each row is `compress models/paper_mlp.pt --arch models.mlp:paper_mlp --target 0.85 "
        "--criterion C --compensate M` with `--data` an unlabelled `.npy` of "
        f"{CALIBRATION + CALIBRATION // 9:,} training images (no labels: one shot, no "
        "fine-tuning) or no `--data` at all (data-free). Test accuracy measured by running the "
        "written ONNX file on the official test set (dense: 89.36%).",
        "",
        "| criterion | compensation | data | weights removed | test accuracy | "
        "compensation time | command wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in cli_rows:
        merged = f" ({r['merged']} merged)" if r["compensate"] == "merge" else ""
        lines.append(f"| {r['criterion']} | {r['compensate']}{merged} | "
                     f"{'unlabelled' if r['data'] else 'none'} | {pct(r['reduction'])}% | "
                     f"{pct(r['accuracy'])}% | {r['compensate_seconds']:.2f} s | "
                     f"{r['wall']:.1f} s |")
    lines += ["", "## Goals", ""] + _goals(table, defaults, cli_rows)
    lines += ["", "## How long `lsq` and `--criterion error` take on wide layers", "",
              "Random weights, uniform random inputs; `lsq` refits both hidden layers after "
              "every other neuron is removed; `error` ranks the neurons of both hidden layers "
              "(greedy; layers wider than 512 in blocks, see ranking.md):", "",
              "| network | calibration samples | lsq time | error ranking time |",
              "|---|---|---|---|"]
    lines += [f"| {net} | {n:,} | {s:.1f} s | {r:.1f} s |" for net, n, s, r in scaling]
    return "\n".join(lines) + "\n"


def _goals(table: dict, defaults: list[list[float]], cli_rows: list[dict]) -> list[str]:
    ours = table[(Criterion.L1, Compensation.MERGE)][0]
    gaps = [100 * a - p for a, p in zip(ours, PAPER["merge"])]
    within = [abs(g) <= 2 for g in gaps]
    best_acc, best = max((v[0][-1], k) for k, v in table.items() if k != "dense")
    unlabelled = max((r["accuracy"], r["criterion"]) for r in cli_rows if r["data"])
    default = statistics.mean(accs[-1] for accs in defaults)
    default_cli = next(r for r in cli_rows if r["criterion"].startswith("auto"))
    mark = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    return [
        "- `merge` with `l1` within ±2 pt of the paper's merge row: "
        + ", ".join(f"{a}-{b}: {g:+.2f} pt" for (a, b), g in zip(WIDTHS, gaps))
        + f": {mark(all(within))} ({sum(within)} of {len(within)} widths).",
        f"- Best one-shot method at 60-20 ≥ 85%: {best[0].value} + {best[1].value}, "
        f"{100 * best_acc:.2f}%: {mark(best_acc >= 0.85)}.",
        f"- Default options at 60-20 ≥ 85% (mean over {SLICES} calibration sets): "
        f"{100 * default:.2f}%: {mark(default >= 0.85)}.",
        "- Paper MLP at --target 0.85, one shot, no labels, default options: "
        f"{100 * default_cli['accuracy']:.2f}%.",
        f"- Paper MLP at --target 0.85, one shot, no labels, ≥ 80%: {unlabelled[1]} + lsq, "
        f"{100 * unlabelled[0]:.2f}%: {mark(unlabelled[0] >= 0.80)}.",
    ]


if __name__ == "__main__":
    main()
