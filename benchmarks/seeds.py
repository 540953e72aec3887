"""`make bench` (seeds): the fine-tuned rows of benchmarks/transformer.md and
benchmarks/vision.md repeated with other seeds, so that a gap of a few tenths of a point between
ours and Torch-Pruning can be told from the spread of fine-tuning itself. A seed is
`compress --seed S` for ours (its batch order; Fashion-MNIST's splits are fixed) and the same
batch order for Torch-Pruning's fine-tuning. Accuracy only (no latency). Writes
benchmarks/seeds.md; cells of models, budgets or seeds not run again stay as they were.

    python -m benchmarks.seeds [--models vit,vit_swiglu,resnet18_fmnist]
                               [--targets 0.3,0.5,0.7] [--seeds 0,1,2] [--missing]

Needs the benchmark extra: pip install -e '.[bench]' (make bench installs it).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch_pruning as tp

from benchmarks import cnn
from benchmarks.common import flops_of, machine
from benchmarks.transformer import MODELS, OURS, PEERS, REPO, _matched, _ours, _torch_pruning
from compressor.graph.capture import capture, run_batched
from compressor.io.inputs import fit_data
from compressor.io.load import load_model
from compressor.io.sources import load_data

CNN_PEER = "Torch-Pruning"
PAIRS = ((OURS["heads"], PEERS[False]), (OURS["width"], PEERS[True]),  # like for like
         ("ours", CNN_PEER))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit,vit_swiglu,resnet18_fmnist")
    parser.add_argument("--targets", default="0.3,0.5,0.7", help="fractions of FLOPs removed")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--missing", action="store_true",
                        help="run only the models, budgets and seeds the table has no cells for")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "seeds.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    seeds = [int(s) for s in args.seeds.split(",")]
    targets = [float(t) for t in args.targets.split(",")]
    found = _previous(args.out)  # cells not run again stay as they were
    columns = sorted({*seeds, *(seed for cells in found.values() for seed in cells)})
    models = {name: _loaded(name) for name in args.models.split(",")}
    for seed in seeds:  # seeds outermost: a run stopped early has whole seeds
        for name, loaded in models.items():
            for target in targets:
                if args.missing and any(n == name and t == target and seed in cells
                                        for (n, t, _), cells in found.items()):
                    continue
                with tempfile.TemporaryDirectory() as tmp:
                    run = _cnn_rows if name in cnn.MODELS else _transformer_rows
                    results = run(name, loaded, target, seed, Path(tmp))
                for r in results:
                    found[name, target, r.who][seed] = r.accuracy if r.onnx else None
                print(f"{name} {target} seed {seed}: " + ", ".join(
                    f"{r.who} {100 * r.accuracy:.2f}%" for r in results), file=sys.stderr)
                args.out.write_text(_report(found, columns))
    print(args.out.read_text())


def _transformer_rows(name: str, loaded: tuple, target: float, seed: int, tmp: Path) -> list:
    path, module, splits, sample, teacher, flops = loaded
    results = [_ours(path, name, target, True, tmp, variant=variant, seed=seed)
               for variant in ("heads", "width")]
    return results + [_torch_pruning(module, flops, _matched(target, results, width, flops),
                                     True, splits, sample, teacher, width=width, seed=seed)
                      for width in PEERS]


def _cnn_rows(name: str, loaded: tuple, target: float, seed: int, tmp: Path) -> list:
    """As vision.md's rows: Torch-Pruning first, then ours at the FLOPs it reached."""
    path, module, splits, sample, teacher, flops = loaded
    peer = cnn._torch_pruning(module, round((1 - target) * flops), target, True, splits,
                              sample, teacher, seed=seed)
    budget = math.ceil(1e4 * (1 - peer.flops / flops)) / 1e4  # ours keeps no more
    return [cnn._ours(path, name, budget, True, tmp, splits, seed=seed), peer]


def _loaded(name: str) -> tuple:
    """The model's path, module, data splits, sample, dense logits (the teacher) and FLOPs."""
    path = REPO / "models" / f"{name}.pt"
    arch = cnn.MODELS[name][0] if name in cnn.MODELS else f"models.transformer:{name}"
    loaded = load_model(path, arch=arch)
    data = "fashion-mnist" if name in cnn.MODELS else MODELS[name][1]
    splits, _ = fit_data(loaded, load_data(data))
    sample = splits.validation.x[:256]
    module = cnn._module(name) if name in cnn.MODELS else loaded.run.eval()
    teacher = run_batched(capture(loaded, sample[:2]), splits.train.x)
    return path, module, splits, sample, teacher, flops_of(module, sample)


def _previous(out: Path) -> defaultdict:
    """The cells already in `out`'s table, keyed like `found`."""
    found: defaultdict = defaultdict(dict)
    if not out.exists():
        return found
    header = None
    for line in out.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:3] == ["model", "FLOPs target", "method"]:
            header = [int(c.removeprefix("seed ")) for c in cells[3:-2]]
        elif header and len(cells) == len(header) + 5 and cells[1].endswith("%"):
            key = (cells[0], round(float(cells[1][:-1]) / 100, 4), cells[2])
            for seed, cell in zip(header, cells[3:-2]):
                if cell:
                    found[key][seed] = None if cell == "–" else float(cell[:-1]) / 100
    return found


def _report(found: dict, seeds: list[int]) -> str:
    lines = [
        "# Benchmark: fine-tuned rows over seeds, ours against Torch-Pruning",
        "",
        (f"Produced by `make bench` (`python -m benchmarks.seeds`) on "
         f"{time.strftime('%Y-%m-%d')}. Machine: {machine()}, Torch-Pruning {tp.__version__}."),
        "",
        ("The fine-tuned rows of [transformer.md](transformer.md) and [vision.md](vision.md) "
         "(same models, commands, Torch-Pruning configuration, FLOPs and recipe; see there), "
         "each repeated with the "
         "seeds below: `compress --seed S` (the fine-tuning's batch order) and the same batch "
         "order for Torch-Pruning. Test accuracy in onnxruntime; a blank cell: that seed has "
         "not run yet. The FLOPs each method keeps are those files': one cycle selects "
         "before it fine-tunes, so the seed does not change them (ours lands in its target "
         "window, Torch-Pruning at the FLOPs ours reached or fewer; on the CNNs ours is "
         "pruned to the FLOPs Torch-Pruning reached). Below the table, ours against its like "
         "(with the width against with the width): the mean gap, and on how many seeds ours "
         "is level or ahead."),
        "",
        "| model | FLOPs target | method | " + " | ".join(f"seed {s}" for s in seeds)
        + " | mean | spread |",
        "|---|---|---|" + "---|" * (len(seeds) + 2),
    ]
    for (name, target, who), accs in found.items():
        done = [a for a in accs.values() if a is not None]
        mean = f"{100 * statistics.mean(done):.2f}%" if done else "–"
        spread = f"{100 * (max(done) - min(done)):.2f} pt" if len(done) > 1 else "–"
        cells = [("–" if accs[s] is None else f"{100 * accs[s]:.2f}%") if s in accs else ""
                 for s in seeds]
        lines.append(f"| {name} | {100 * target:.0f}% | {who} | " + " | ".join(cells)
                     + f" | {mean} | {spread} |")
    lines += ["", *_summary(found), ""]
    return "\n".join(lines)


def _summary(found: dict) -> list[str]:
    """Per model and budget, ours against its like: the mean gap and on how many seeds ours
    is level or ahead."""
    lines = []
    for name, target in dict.fromkeys((n, t) for n, t, _ in found):
        for ours, peer in PAIRS:
            a, b = found.get((name, target, ours), {}), found.get((name, target, peer), {})
            both = [s for s in a if s in b and a[s] is not None and b[s] is not None]
            if not both:
                continue
            gap = statistics.mean(a[s] - b[s] for s in both)
            ahead = sum(round(a[s], 4) >= round(b[s], 4) for s in both)
            lines.append(f"- {name} {100 * target:.0f}%, {ours.removeprefix('ours, ')}: ours "
                         f"{100 * gap:+.2f} pt against {peer} on average; level or ahead on "
                         f"{ahead} of {len(both)} seeds.")
    return lines


if __name__ == "__main__":
    main()
