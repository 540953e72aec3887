"""`make bench`: every torchvision classifier (and, with `--zoo timm`, timm's mobile and hybrid
classifiers) pruned to 50% fewer FLOPs in one shot, ours against Torch-Pruning, as a new user
would: random initialisation (no weights can be downloaded here),
64 x 64 inputs, 128 unlabelled calibration images (Fashion-MNIST, resized, three channels),
`compress M.pt2 --target 0.5 --of flops --data calib.npy --input-shape 3,64,64`, one thread
for the latency. Each run is a child process, timed and measured for peak memory. Writes
benchmarks/zoo.md (benchmarks/zoo_timm.md).

    python -m benchmarks.zoo [--zoo torchvision|timm] [--models resnet18,...] [--out F] [--resume]

Each finished model's row is also kept in the table's .json sidecar; `--resume` keeps the rows
there (of every model) and runs only the models of `--models` it lacks, so a run that was
stopped goes on where it ended, and one model can be re-run by deleting its row.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import child
from benchmarks.common import commit, cpu, machine

REPO = Path(__file__).resolve().parents[1]
MODELS = ("resnet18 resnet34 resnet50 resnet101 resnet152 resnext50_32x4d resnext101_32x8d "
          "resnext101_64x4d wide_resnet50_2 wide_resnet101_2 vgg11_bn vgg13_bn vgg16_bn "
          "vgg19_bn mobilenet_v2 mobilenet_v3_small mobilenet_v3_large efficientnet_b0 "
          "efficientnet_b1 efficientnet_v2_s mnasnet0_5 mnasnet0_75 mnasnet1_0 mnasnet1_3 "
          "shufflenet_v2_x0_5 shufflenet_v2_x1_0 shufflenet_v2_x1_5 shufflenet_v2_x2_0 "
          "regnet_x_400mf regnet_y_400mf densenet121 googlenet squeezenet1_0 squeezenet1_1 "
          "alexnet convnext_tiny swin_t vit_b_16 maxvit_t").split()
# timm's classifiers for phones and their hybrids with attention, by timm's names
TIMM = tuple(f"timm.{name}" for name in (
    "ghostnet_100 ghostnetv2_100 mobilenetv4_conv_small lcnet_100 repvit_m1 fbnetv3_b "
    "mobileone_s0 hgnetv2_b0 efficientnet_lite0 efficientvit_b0 fastvit_t8 "
    "mambaout_femto mixnet_s mixnet_m").split())
ZOOS = {"torchvision": (MODELS, "zoo.md"), "timm": (TIMM, "zoo_timm.md")}
SIZE, SAMPLES, TARGET, WINDOW = 64, 144, 0.5, 0.52
TIMEOUT = 1800  # seconds per run
SMALL_VIT = dict(image_size=SIZE, patch_size=8, num_layers=6, num_heads=6, hidden_dim=384,
                 mlp_dim=1536)  # vit_b_16 at a reduced size
# maxvit_t's own widths and depths; its 7 x 7 windows and grids need 224 x 224 inputs, so at
# 64 x 64 (stages of 16, 8, 4 and 2 positions a side) they are 2 x 2
SMALL_MAXVIT = dict(input_size=(SIZE, SIZE), stem_channels=64, partition_size=2,
                    block_channels=[64, 128, 256, 512], block_layers=[2, 2, 5, 2], head_dim=32,
                    stochastic_depth_prob=0.2)


def build(name: str) -> torch.nn.Module:
    from models.vision import classifier, import_torchvision

    if name.startswith("timm."):
        import_torchvision()  # timm imports it
        import timm

        torch.manual_seed(0)
        return timm.create_model(name.removeprefix("timm."), pretrained=False,
                                 num_classes=10).eval()
    if name == "vit_b_16":
        return vit(**SMALL_VIT)
    if name == "maxvit_t":
        torch.manual_seed(0)
        return import_torchvision().models.maxvit.MaxVit(num_classes=10, **SMALL_MAXVIT).eval()
    return classifier(name)


def vit(**config) -> torch.nn.Module:
    """A torchvision VisionTransformer for 10 classes, its classifier drawn at random:
    torchvision starts it at zero, and every output would be its bias (parity and the
    ranking's output error would read nothing)."""
    from models.vision import import_torchvision

    vision = import_torchvision()
    torch.manual_seed(0)
    net = vision.models.VisionTransformer(num_classes=10, **config).eval()
    torch.nn.init.normal_(net.heads.head.weight, std=config["hidden_dim"] ** -0.5)
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", choices=list(ZOOS), default="torchvision")
    parser.add_argument("--models", help="comma-separated (default: every model of the zoo)")
    parser.add_argument("--out", type=Path, help="default: benchmarks/zoo.md (zoo_timm.md)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the finished rows of the .json sidecar, run the rest")
    args = parser.parse_args()
    zoo, table = ZOOS[args.zoo]
    names = args.models.split(",") if args.models else list(zoo)
    args.out = args.out or REPO / "benchmarks" / table
    raw = args.out.with_suffix(".json")
    done = {r["model"]: r for r in json.loads(raw.read_text())} if args.resume and raw.exists() \
        else {}
    rows = list(done.values())  # every finished row, whichever models this run names
    order = {n: i for i, n in enumerate(dict.fromkeys([*zoo, *names]))}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        np.save(work / "calib.npy", images())
        for name in names:
            if name in done:
                continue
            rows.append(_model(name, work))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            rows.sort(key=lambda r: order.get(r["model"], len(order)))
            raw.write_text(json.dumps(rows, indent=1) + "\n")
            args.out.write_text(_markdown(rows))
    args.out.write_text(_markdown(rows))
    print(args.out.read_text())


def images() -> np.ndarray:
    """Fashion-MNIST test images as 3 x 64 x 64 floats in [0, 1]."""
    from compressor.io.data import load_fashion_mnist

    x = load_fashion_mnist().test.x[:SAMPLES]
    return F.interpolate(x, size=(SIZE, SIZE), mode="bilinear").repeat(1, 3, 1, 1).numpy()


def _model(name: str, work: Path) -> dict:
    """Ours and the peer on one model: each in a child process."""
    row = {"model": name, "commit": commit(), "cpu": cpu()}
    try:
        program = _export(name, work)
    except Exception as e:  # a model that does not build or export here
        return {**row, "status": f"does not build: {type(e).__name__}: {str(e)[:80]}"}
    row["dense_flops"] = program["flops"]
    out = work / f"{name}.onnx"
    cmd = [str(Path(sys.executable).with_name("compress")), str(work / f"{name}.pt2"),
           "--target", str(TARGET), "--of", "flops", "--data", str(work / "calib.npy"),
           "--input-shape", f"3,{SIZE},{SIZE}", "--no-latency", "-q", "-o", str(out)]
    ours = _child(cmd)
    row["ours"] = ours
    if ours["code"] == 0:
        report = json.loads(out.with_suffix(".json").read_text())
        ours.update(flops=report["size"]["flops_after"], parity=report["parity"]["max_abs_diff"],
                    scale=report["parity"]["max_abs_output"],
                    share=program["share"])
    peer = _child([sys.executable, "-m", "benchmarks.zoo_peer", name, str(work)])
    row["peer"] = peer
    if peer["code"] == 0:
        peer.update(json.loads((work / f"{name}.peer.json").read_text()))
    _latencies(row, work, name)
    return row


def _export(name: str, work: Path) -> dict:
    """The model as a .pt2 program (what the command reads), its FLOPs and the share of them
    in prunable groups."""
    from compressor.graph import count
    from compressor.graph.capture import capture, export_program
    from compressor.graph.trace import trace
    from compressor.io.load import LoadedModel, ModelFormat
    from compressor.prune.reach import reached_share

    net = build(name)
    example = torch.rand(2, 3, SIZE, SIZE)
    torch.export.save(export_program(net, example), str(work / f"{name}.pt2"))
    gm = capture(LoadedModel(Path(name), ModelFormat.PICKLED_MODULE, net), example)
    found = trace(gm, example[:1])  # with a sample: attention heads too
    total = count.flops(gm, found)
    costs = {name: 2 * cost for name, cost in count.costs(found, of_flops=True).items()}
    torch.save(net, work / f"{name}.module.pt")
    return {"flops": total, "share": reached_share(gm, found, found.groups, costs, total)}


def _child(cmd: list[str]) -> dict:
    """Run `cmd`; its exit code, wall seconds, peak memory (GB) and last error line."""
    done = child.run(cmd, cwd=REPO, timeout=TIMEOUT)
    return {"code": done.code, "wall": done.wall, "peak": done.peak, "error": done.error}


def _latencies(row: dict, work: Path, name: str) -> None:
    """Dense, ours and the peer at batch 8, one thread, interleaved."""
    from compressor.export.to_onnx import to_onnx
    from compressor.graph.capture import capture
    from compressor.io.load import LoadedModel, ModelFormat
    from compressor.measure.latency import latencies_ms

    files = {"ours": work / f"{name}.onnx", "peer": work / f"{name}.peer.onnx"}
    present = {who: path.read_bytes() for who, path in files.items() if path.exists()}
    if not present:
        return
    example = torch.rand(2, 3, SIZE, SIZE)
    net = torch.load(work / f"{name}.module.pt", weights_only=False)
    dense = to_onnx(capture(LoadedModel(Path(name), ModelFormat.PICKLED_MODULE, net), example),
                    example)
    sample = torch.from_numpy(np.load(work / "calib.npy"))[:8]
    models = [dense, *present.values()]
    times = latencies_ms(models, [sample] * len(models), batch=8, threads=1,
                         seconds=1.0 * len(models))
    for who, ms in zip(present, times[1:]):
        row[who]["speedup"] = round(times[0] / ms, 2)


def _cell(run: dict, dense: int | None) -> tuple[str, ...]:
    if run.get("code") != 0:
        return ("refused" if run.get("code", 2) == 2 else "failed", "–", "–", "–",
                f"{run.get('wall', 0):.0f} s", _gb(run.get("peak")))
    reduction = 1 - run["flops"] / dense
    hit = "**reached**" if TARGET <= reduction <= WINDOW else "off target"
    return (hit, f"{100 * reduction:.1f}%", _parity(run),
            f"{run.get('speedup', 0):.2f}x", f"{run['wall']:.0f} s", _gb(run.get("peak")))


def _peer_cell(run: dict, dense: int) -> tuple[str, ...]:
    """Torch-Pruning's cells, its status marked † where it ran before its classifier was kept."""
    cells = _cell(run, dense)
    if run.get("code") == 0 and not run.get("classifier_kept"):
        cells = (f"{cells[0]} †", *cells[1:])
    return cells


def _parity(run: dict) -> str:
    """Max |onnxruntime - PyTorch| over max(1, max |logit|), as the command checks it (rows
    run before the logits' size was kept: the absolute difference, marked)."""
    if "scale" not in run:
        return f"{run['parity']:.0e} (abs)"
    return f"{run['parity'] / max(1.0, run['scale']):.0e}"


def _gb(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} GB"


def _markdown(rows: list[dict]) -> str:
    timm = all(row["model"].startswith("timm.") for row in rows)
    title = "timm's mobile and hybrid classifiers" if timm else "the torchvision zoo"
    command = "python -m benchmarks.zoo --zoo timm" if timm else "python -m benchmarks.zoo"
    sizes = " (timm's definitions as `timm.create_model(name, num_classes=10)` builds them)" \
        if timm else (" (vit_b_16 at a reduced size: 6 layers of 6 heads, 384 wide, 8 x 8 "
                      "patches; maxvit_t with its widths and depths but 2 x 2 windows and grids, "
                      "its 7 x 7 ones needing 224 x 224 inputs)")
    lines = [
        f"# Benchmark: {title} at 50% fewer FLOPs, one shot, against Torch-Pruning",
        "",
        f"Produced by `make bench` (`{command}`) on {time.strftime('%Y-%m-%d')}. "
        f"Machine: {machine()}. {_provenance(rows)}",
        "",
        f"Every model randomly initialised (10 classes), {SIZE} x {SIZE} inputs{sizes}, "
        f"{SAMPLES} "
        "unlabelled Fashion-MNIST test images resized to 3 channels (a file split 90/10 into "
        "calibration and parity). **Ours**: `compress M.pt2 --target 0.5 --of flops --data "
        f"calib.npy --input-shape 3,{SIZE},{SIZE} --no-latency` (criterion, compensation, "
        "alignment left to the plan). **Torch-Pruning** (its standard recipe): `MetaPruner`, "
        "`MagnitudeImportance(p=2)`, one ratio for every layer, the classifier ignored, the ratio "
        "bisected to the least that removes 50% of the FLOPs, exported by the same exporter. "
        f"Reached: FLOPs removed in [50%, {100 * WINDOW:.0f}%]. Parity: max \\|onnxruntime - "
        "PyTorch\\| of the written file over max(1, max \\|logit\\|), as the command checks "
        "its own (at most 1e-4; randomly initialised deep ResNets without zero-initialised last "
        "BatchNorms give logits in the thousands, resnet152 millions; rows marked (abs) ran "
        "before the logits' size was kept and show the absolute difference; the trained "
        "models of vision.md are where accuracy is measured). Speedup: dense / pruned "
        "onnxruntime latency at batch 8, 1 thread, interleaved. Wall: the whole command "
        "(ours) or prune + bisection + export (Torch-Pruning), each in its own process; "
        "peak: its peak resident memory. Share: the FLOPs of layers our groups reach (their "
        "rows or columns prunable).",
        "",
        "| model | dense FLOPs | share | ours | FLOPs removed | parity | speedup | wall | peak "
        "| Torch-Pruning | FLOPs removed | parity | speedup | wall | peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "ours" not in row:
            lines.append(f"| {row['model']} | {row.get('status', '')} |" + " |" * 13)
            continue
        dense = row["dense_flops"]
        share = row["ours"].get("share")
        lines.append(f"| {row['model']} | {dense / 1e6:.1f} M | "
                     f"{'–' if share is None else f'{100 * share:.0f}%'} | "
                     + " | ".join(_cell(row["ours"], dense)) + " | "
                     + " | ".join(_peer_cell(row["peer"], dense)) + " |")
    if any(run.get("code") == 0 and run.get("peak") is None
           for row in rows for run in (row.get("ours", {}), row.get("peer", {}))):
        lines += ["", "Peak memory (–): not measured validly in this run. Linux carries a "
                  "process's resident memory at fork into its child's reported peak, and this "
                  "script's own process held gigabytes after exporting the large models, so "
                  "every child reported at least that; the children are now started through "
                  "a small launcher (`benchmarks/child.py`), and the next run fills the column."]
    if any("†" in line for line in lines):
        lines += ["", "†: Torch-Pruning ran before its classifier was kept: the layer this "
                  "script told it to ignore was the copy's original, so it also removed some "
                  "of the 10 classes (the classifier's share of the FLOPs is under 0.1% here; "
                  "the rows re-run since moved by at most 0.1 point of FLOPs). The next run of "
                  "those rows drops the mark."]
    lines += ["", *_totals(rows), "", "Errors and refusals:", ""]
    for row in rows:
        for who in ("ours", "peer"):
            run = row.get(who, {})
            if run.get("code", 0) != 0:
                label = "ours" if who == "ours" else "Torch-Pruning"
                why = run.get("error", "") if run["code"] >= -1 else \
                    f"killed by signal {-run['code']} at a peak of {_gb(run.get('peak'))}"
                #     (-1 is a timeout, whose error line says so)
                lines.append(f"- {row['model']} ({label}): {why}")
    return "\n".join(lines) + "\n"


def _provenance(rows: list[dict]) -> str:
    """Which commit each row ran at (a `--resume` run adds rows to those of earlier runs)."""
    where: dict[str, list[str]] = {}
    for row in rows:
        at = f"at commit {row.get('commit', 'unknown')} on {row.get('cpu', 'an unnamed CPU')}"
        where.setdefault(at, []).append(row["model"])
    if len(where) == 1:
        return f"Every row ran {next(iter(where))}."
    most = max(where, key=lambda at: len(where[at]))
    others = "; ".join(f"{', '.join(models)} {at}" for at, models in where.items()
                       if at != most)
    return f"Rows ran {most}, except {others} (speedups are of the CPU each row ran on)."


def _totals(rows: list[dict]) -> list[str]:
    def reached(run: dict, dense: int) -> bool:
        return run.get("code") == 0 and TARGET <= 1 - run["flops"] / dense <= WINDOW

    built = [r for r in rows if "ours" in r]
    ours = sum(reached(r["ours"], r["dense_flops"]) for r in built)
    peer = sum(reached(r["peer"], r["dense_flops"]) for r in built)
    return [f"Totals: {len(built)} models built; ours reached the target on {ours}, "
            f"Torch-Pruning on {peer}."]


if __name__ == "__main__":
    main()
