"""`make bench`: whether the runtime of a pruned transformer follows its FLOPs at the widths
transformers are deployed at. The shipped ViT of benchmarks/transformer.md is 64 wide: there
the kernels whose cost pruning does not shrink (LayerNorms, residual sums, reshapes, the
attention op's per-head work) are a large share of the time. Here: torchvision
VisionTransformers at DeiT's Tiny, Small and Base widths (192, 384 and 768 wide with 3, 6 and 12
heads, feed-forward 4x), 6 blocks, 64 x 64 inputs in 16 x 16 patches, randomly initialised (no
weights can be downloaded here, so accuracy is not measured: parity is), pruned one shot as
a user would: `compress M.pt2 --target T --of flops --data calib.npy --input-shape 3,64,64`
(the zoo's calibration images), with and without `--prune-stream 0.25`. Writes
benchmarks/widths.md.

    python -m benchmarks.widths [--widths 192,384,768] [--targets 0.3,0.5,0.7]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import commit, cpu, machine
from benchmarks.zoo import SIZE, images, vit

REPO = Path(__file__).resolve().parents[1]
HEAD_SIZE, BLOCKS, PATCH = 64, 6, 16
STREAM = 0.25  # the --prune-stream share of the width rows
BATCHES = (1, 32)
TABLE = ("| FLOPs target | rows | FLOPs removed | stream / heads / feed-forward kept | parity "
         "| b1 1t | b32 1t | efficiency b32 1t |")


def build(width: int) -> torch.nn.Module:
    return vit(image_size=SIZE, patch_size=PATCH, num_layers=BLOCKS,
               num_heads=width // HEAD_SIZE, hidden_dim=width, mlp_dim=4 * width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="192,384,768")
    parser.add_argument("--targets", default="0.3,0.5,0.7")
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per model and cell")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "widths.md")
    args = parser.parse_args()
    targets = [float(t) for t in args.targets.split(",")]
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        np.save(work / "calib.npy", images())
        for width in (int(w) for w in args.widths.split(",")):
            sections.append(_section(width, targets, work, args.seconds))
            args.out.write_text(_markdown(sections, args.seconds))
    print(args.out.read_text())


def _section(width: int, targets: list[float], work: Path, seconds: float) -> list[str]:
    from compressor.export.to_onnx import to_onnx
    from compressor.graph.capture import capture, export_program
    from compressor.io.load import LoadedModel, ModelFormat
    from compressor.measure.latency import latencies_ms

    net = build(width)
    example = torch.rand(2, 3, SIZE, SIZE)
    program = work / f"vit{width}.pt2"
    torch.export.save(export_program(net, example), str(program))
    dense = to_onnx(capture(LoadedModel(program, ModelFormat.PICKLED_MODULE, net), example),
                    example)
    runs = []
    for target in targets:
        for stream in (0.0, STREAM):
            out = work / f"vit{width}_{target}_{stream}.onnx"
            cmd = [str(Path(sys.executable).with_name("compress")), str(program), "--target",
                   str(target), "--of", "flops", "--data", str(work / "calib.npy"),
                   "--input-shape", f"3,{SIZE},{SIZE}", "--no-latency", "-q", "-o", str(out),
                   *(["--prune-stream", str(stream)] if stream else [])]
            subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
            report = json.loads(out.with_suffix(".json").read_text())
            runs.append((target, stream, out.read_bytes(), report))
            print(f"width {width} target {target} stream {stream}: done", file=sys.stderr)
    sample = torch.from_numpy(np.load(work / "calib.npy"))[:32]
    models = [dense, *(r[2] for r in runs)]
    times = {batch: latencies_ms(models, [sample] * len(models), batch=batch, threads=1,
                                 seconds=seconds * len(models)) for batch in BATCHES}
    flops = runs[0][3]["size"]["flops_before"]
    lines = [f"## Width {width}, {width // HEAD_SIZE} heads, feed-forward {4 * width}",
             "", f"{flops:,} FLOPs/sample dense; latency "
             + " and ".join(f"{times[b][0]:.3f} ms at batch {b}" for b in BATCHES)
             + " (1 thread).", "",
             TABLE, "|---|---|---|---|---|---|---|---|"]
    for i, (target, stream, _, report) in enumerate(runs, start=1):
        size = report["size"]
        ratio = size["flops_before"] / size["flops_after"]
        cells = [f"{t[i]:.3f} ms ({t[0] / t[i]:.2f}x)" for t in (times[b] for b in BATCHES)]
        efficiency = times[32][0] / times[32][i] / ratio
        lines.append(
            f"| {target:.0%} | {'FFN + heads + width' if stream else 'FFN + heads'} | "
            f"{size['flop_reduction']:.1%} ({ratio:.2f}x) | {_kept(report['layers'], width)} | "
            f"{report['parity']['max_abs_diff']:.0e} | {' | '.join(cells)} | {efficiency:.2f} |")
    return lines + [""]


def _kept(layers: list[dict], width: int) -> str:
    """The residual width, heads and feed-forward units the file keeps, of the dense ones."""
    heads = sum(r["out_after"] // (3 * HEAD_SIZE) for r in layers if "in_proj" in r["name"])
    ffn = sum(r["out_after"] for r in layers if r["name"].endswith("mlp.0"))
    return (f"{layers[0]['out_after']} / {heads} of {BLOCKS * width // HEAD_SIZE} / "
            f"{ffn} of {BLOCKS * 4 * width}")


def _markdown(sections: list[list[str]], seconds: float) -> str:
    about = " ".join(__doc__.split("Writes")[0].split()[2:])  # after "`make bench`:"
    timing = ("FLOPs: every Conv and Linear and the attention products, as `compress check` "
              "counts them. Latency: onnxruntime CPU, 1 thread, best of 5 interleaved rounds' "
              f"median `run()` time, {seconds:g} s per model and cell, dense and every row of a "
              "width interleaved; speedup = dense latency / latency; **efficiency** = speedup / "
              "FLOP ratio (1.0: every FLOP removed saved its share of time). Parity: max "
              "\\|onnxruntime - PyTorch\\| of the written file on the held-back images, as the "
              "report gives it.")
    peer = ("Torch-Pruning is not run here: configured as its ViT example it needs attention "
            "modules it can name (its rows are in transformer.md), and its pruned torchvision "
            "ViT does not export (zoo.md).")
    produced = (f"Produced by `make bench` (`python -m benchmarks.widths`) at commit {commit()} "
                f"on {cpu()}. Machine: {machine()}.")
    title = "# Benchmark: transformers at deployment widths, one shot: runtime against FLOPs"
    return "\n".join([title, "", produced, "", f"Measures {about}", "", timing, "", peer, "",
                      *(line for s in sections for line in s)])


if __name__ == "__main__":
    main()
