"""`make bench` (transformer part): the example ViT (GELU feed-forward), its SwiGLU variant
and the token-id text classifier at 30%, 50% and 70% fewer FLOPs (`--of flops`), fine-tuned
and one shot: ours with the feed-forward units only (attention heads kept whole: the
control), with the heads as well (the default) and with a quarter of the residual width too
(`--prune-stream 0.25`), against Torch-Pruning 1.6 configured as its own ViT example (heads
and feed-forward units, its group magnitude; and with the hidden width as well), bisected to
the FLOPs ours reached (or fewer) and fine-tuned by our recipe. Writes benchmarks/transformer.md.

    python -m benchmarks.transformer [--models vit,vit_swiglu,text] [--targets 0.3,0.5,0.7]

Needs the benchmark extra: pip install -e '.[bench]' (make bench installs it).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

from benchmarks.common import (CELLS, Result, commit, cpu, flat, flops_of, machine, measured,
                               model_sections, time_cells)
from compressor.graph.capture import capture, run_batched
from compressor.io.inputs import fit_data
from compressor.io.load import load_model
from compressor.io.sources import load_data
from compressor.plan.rules import CNN_SCHEDULE
from compressor.prune.config import FinetuneConfig
from compressor.prune.finetune import finetune

REPO = Path(__file__).resolve().parents[1]
MODELS = {  # name: (title, data, FLOP targets: None for --targets)
    "vit": ("ViT, GELU feed-forward 64-256-64, 4 blocks of 4 heads", "fashion-mnist", None),
    "vit_swiglu": ("ViT, SwiGLU feed-forward 64-172-64 (w1, w3 gated, w2), 4 blocks of 4 heads",
                   "fashion-mnist", None),
    # 196 tokens make each of its runs several times a ViT's: one budget shows ids end to end
    "text": ("Text classifier: token ids (Fashion-MNIST 14 x 14, 16 grey levels), 2 blocks of "
             "4 heads, feed-forward 64-256-64", "models.transformer:fashion_mnist_ids", (0.5,)),
}
FIRST = ("ffn.fc1", "ffn.w1", "ffn.w3")  # the layers whose outputs are the FFN hidden units
SEED = 0
TIMING_ROUNDS = 10  # a section's thirty-odd files interleaved: more rounds, each one shorter
FFN_ONLY = "--ffn-only"  # the control: `compress` with attention heads kept whole
STREAM_SHARE = 0.25  # SliceGPT's headline share of the width, at every budget
OURS = {"ffn": "ours, FFN only", "heads": "ours, FFN + heads (default)",
        "width": f"ours, FFN + heads + width ({STREAM_SHARE:g})"}
PEERS = {False: "Torch-Pruning, heads + FFN", True: "Torch-Pruning, heads + FFN + width"}


def main() -> None:
    if sys.argv[1:2] == [FFN_ONLY]:
        _ffn_only_cli(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--targets", default="0.3,0.5,0.7", help="fractions of FLOPs removed")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="timing per file and latency cell")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "transformer.md")
    parser.add_argument("--modes", default="fine-tuned,one-shot",
                        help="fine-tuned, one-shot or both (one shot alone skips the control)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    targets = [float(t) for t in args.targets.split(",")]
    modes = [tuned for mode, tuned in (("fine-tuned", True), ("one-shot", False))
             if mode in args.modes.split(",")]
    titles = {f"## {title}": name for name, (title, *_) in MODELS.items()}
    sections = model_sections(args.out, titles)  # models not re-run keep theirs
    for name in args.models.split(","):  # written after each model: a long run shows progress
        sections[name] = _model_section(name, targets, args.seconds, modes)
        args.out.write_text(_header(args.seconds)
                            + "\n".join(sections[n] for n in MODELS if n in sections))
    print(args.out.read_text())


def _ffn_only_cli(argv: list[str]) -> None:
    """`compress ARGV` with attention left whole: the tracer finds no heads, as before heads
    were pruned (a benchmark control, not an option of the command)."""
    import compressor.graph.trace as trace_module
    from compressor.cli import main as cli_main

    trace_module.find_heads = lambda gm, sample: []
    cli_main(argv)


def _model_section(name: str, targets: list[float], seconds: float, modes: list[bool]) -> str:
    path = REPO / "models" / f"{name}.pt"
    loaded = load_model(path, arch=f"models.transformer:{name}")
    splits, _ = fit_data(loaded, load_data(MODELS[name][1], seed=SEED))
    sample = splits.validation.x[:256]
    module = loaded.run.eval()
    teacher = run_batched(capture(loaded, sample[:2]), splits.train.x)
    dense = measured("dense", module, splits.test, sample, _module_widths(module))
    control = measured("dense, fine-tuned alike (no pruning)", _tuned(module, splits, teacher),
                       splits.test, sample, _module_widths(module)) if True in modes else None
    rows = []
    for tuned in modes:
        for target in MODELS[name][2] or targets:
            with tempfile.TemporaryDirectory() as tmp:
                results = [_ours(path, name, target, tuned, Path(tmp), variant=variant)
                           for variant in OURS]
            results += [_torch_pruning(module, dense.flops, _matched(target, results, width,
                                                                     dense.flops),
                                       tuned, splits, sample, teacher, width=width)
                        for width in PEERS]
            rows.append((target, tuned, results))
            print(f"{name} {target} {'fine-tuned' if tuned else 'one-shot'}: "
                  + ", ".join(f"{r.who} {100 * r.accuracy:.2f}%" for r in results),
                  file=sys.stderr)
    # every file of the section in the same rounds as one dense run: a speedup never divides
    # by a dense latency timed in other minutes than the file's own
    dense = replace(dense, latency={})
    time_cells([dense, *(r for *_, results in rows for r in results if r.onnx)], sample,
               seconds, rounds=TIMING_ROUNDS)
    return _table(name, dense, control, rows)


def _ours(path: Path, name: str, target: float, tuned: bool, tmp: Path, *,
          variant: str, seed: int = SEED) -> Result:
    out = tmp / f"{variant}.onnx"
    run = [str(Path(sys.executable).with_name("compress"))] if variant != "ffn" else \
        [sys.executable, "-m", "benchmarks.transformer", FFN_ONLY]
    cmd = [*run, str(path), "--arch", f"models.transformer:{name}", "--target", str(target),
           "--of", "flops", "--data", MODELS[name][1], "-o", str(out),
           *([] if tuned else ["--epochs", "0"]),
           *(["--prune-stream", str(STREAM_SHARE)] if variant == "width" else []),
           *(["--seed", str(seed)] if seed != SEED else [])]
    who = OURS[variant]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode:
        return Result(who, b"", 0, 0, 0.0, wall, done.stderr.strip().splitlines()[-1])
    report = flat(json.loads(out.with_suffix(".json").read_text()))
    return Result(who, out.read_bytes(), report["flops_after"], report["weights_after"],
                  report["accuracy_after"], wall, _report_widths(report["layers"]))


def _report_widths(layers: list[dict]) -> str:
    """The stream's width, then heads and FFN width per block, from the report's layers
    (qkv: 3 x heads x 16)."""
    qkv = [layer for layer in layers if layer["name"].endswith("qkv")]
    ffn = [layer["out_after"] for layer in layers if layer["name"].endswith(FIRST[:2])]
    return f"{qkv[0]['in_after']}: " + " ".join(f"{q['out_after'] // 48}h/{f}"
                                                 for q, f in zip(qkv, ffn))


def _tuned(module: nn.Module, splits, teacher: torch.Tensor, seed: int = SEED) -> nn.Module:
    """`module` fine-tuned by our recipe: the epochs of one cycle for token models, Adam 1e-3
    with cosine decay, distillation from the dense logits, best validation epoch kept; the
    batch order seeded as `compress --seed` seeds its first cycle's."""
    model = copy.deepcopy(module)
    finetune(model, splits.train, splits.validation, FinetuneConfig(max_epochs=CNN_SCHEDULE[1]),
             teacher=teacher, seed=seed + 1)
    return model.eval()


def _matched(target: float, ours: list[Result], width: bool, flops: int) -> float:
    """The share of FLOPs Torch-Pruning must remove at least: the target, or what its like
    among our rows removed where our width steps went past the target (the comparison is at
    the same FLOPs; the CNN rows hold ours to Torch-Pruning's FLOPs the same way)."""
    like = OURS["width" if width else "heads"]
    reached = [1 - r.flops / flops for r in ours if r.who == like and r.onnx]
    return max([target, *reached])


def _torch_pruning(dense: nn.Module, flops: int, target: float, tuned: bool, splits,
                   sample: torch.Tensor, teacher: torch.Tensor, *, width: bool,
                   seed: int = SEED) -> Result:
    """Torch-Pruning as its ViT example configures it: `num_heads` per qkv layer,
    `prune_num_heads=True` (whole heads, head width kept), group L2 magnitude, one ratio for
    heads and feed-forward units alike (and, with `width`, the hidden width too: only the
    classifier ignored; else the residual stream held: the embedding and each block's output
    projections ignored too, as ours holds it by default). The ratio is bisected to the least
    that removes `target` of the FLOPs (`_matched`); then our fine-tuning recipe."""
    who = PEERS[width]
    best = None
    lo, hi = 0.0, 0.95
    for _ in range(8):
        ratio = (lo + hi) / 2
        model = _tp_pruned(dense, ratio, sample, width)
        if 1 - flops_of(model, sample) / flops >= target:
            best, hi = model, ratio
        else:
            lo = ratio
    if best is None:
        return Result(who, b"", 0, 0, 0.0, None, f"cannot reach {target:.0%} fewer FLOPs")
    if tuned:
        best = _tuned(best, splits, teacher, seed)
    return measured(who, best.eval(), splits.test, sample, _module_widths(best))


def _tp_pruned(dense: nn.Module, ratio: float, sample: torch.Tensor,
               width: bool) -> nn.Module:
    model = copy.deepcopy(dense)
    attention = [m for m in model.modules() if hasattr(m, "qkv") and hasattr(m, "heads")]
    ignored = [model.head] if width else \
        [m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Embedding))
         and not n.endswith((*FIRST, "qkv"))]
    pruner = tp.pruner.MetaPruner(
        model, sample[:2], importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio, head_pruning_ratio=ratio, ignored_layers=ignored,
        num_heads={m.qkv: m.heads for m in attention}, prune_num_heads=True,
        prune_head_dims=False, unwrapped_parameters=[(model.position, 2)])
    pruner.step()
    for m in attention:
        m.heads = pruner.num_heads[m.qkv]
    return model


def _module_widths(module: nn.Module) -> str:
    attention = [m for m in module.modules() if hasattr(m, "qkv") and hasattr(m, "heads")]
    ffn = [m.out_features for n, m in module.named_modules() if n.endswith(FIRST[:2])]
    return f"{attention[0].qkv.in_features}: " + " ".join(
        f"{m.heads}h/{f}" for m, f in zip(attention, ffn))


def _header(seconds: float) -> str:
    cycles, epochs = CNN_SCHEDULE
    return "\n".join([
        "# Benchmark: transformers on Fashion-MNIST at 30%, 50% and 70% fewer FLOPs: "
        "feed-forward units, attention heads and the residual width",
        "",
        "Produced by `make bench` (`python -m benchmarks.transformer`); each section says when, "
        "at which commit and on which CPU its rows ran (latencies are per CPU; a run of some "
        f"models keeps the others' sections). Machine of the latest run: {machine()}, "
        f"Torch-Pruning {tp.__version__}.",
        "",
        "The models (`models/transformer.py`, trained by `make train`): the ViTs take 7x7 "
        "patches -> 16 tokens of width 64; the text classifier takes 196 token ids through an "
        "Embedding; pre-LayerNorm blocks of 4-head attention (one fused qkv Linear, SDPA) and a "
        "feed-forward block, mean over tokens, LayerNorm, Linear.",
        "",
        "**Ours**: `compress models/M.pt --arch models.transformer:M --target T --of flops "
        "--data D`, every other option at its default (one global ranking by the error "
        "criterion, refitted by least squares; fine-tuned: the refit held near the trained "
        f"weights, then {cycles} cycle of at most {epochs} epochs with distillation; one shot: "
        "`--epochs 0`). "
        "*FFN + heads* is the command as it is (heads ranked with the FFN "
        "units, a head costing its q, k, v rows, output columns and attention products); *FFN "
        "only* is the same command with the tracer's head finder switched off (a benchmark "
        "control: attention left whole, as before heads were pruned); *FFN + heads + width* "
        f"adds `--prune-stream {STREAM_SHARE:g}` (the residual width cut by that share at every "
        "budget, rotated to its principal directions first: docs/method.md, the residual "
        "stream), heads and FFN units meeting the target around it.",
        "",
        "**Torch-Pruning**: configured as its ViT example: `MetaPruner`, "
        "`MagnitudeImportance(p=2)`, `num_heads` per qkv Linear, `prune_num_heads=True`, "
        "`prune_head_dims=False`, one ratio for heads and FFN units (`head_pruning_ratio` = "
        "`pruning_ratio`); *heads + FFN*: every block's output projections, the embedding and "
        "the classifier ignored (the stream held); *heads + FFN + width*: the classifier alone "
        "ignored, so the same ratio also cuts the hidden width (the example's default; the "
        "position table given as an unwrapped parameter); the ratio bisected to the least that "
        "removes the target's FLOPs, or what our like row removed where our width steps went "
        "past the target (FLOPs counted as ours are; the same FLOPs or fewer); each "
        "`Attention.heads` set from `pruner.num_heads` after. Fine-tuned by the very function "
        "ours uses (Adam 1e-3 with cosine decay, batch 128, distillation 0.5 at temperature 4 "
        "from the dense logits, best validation epoch kept), exported by the same capture and "
        "exporter. **Control**: the dense model fine-tuned by the same recipe without pruning.",
        "",
        "Widths: the residual width, then heads/FFN units per block. Accuracy: the "
        "10,000-sample test set in onnxruntime. FLOPs: every Conv and Linear and the "
        "attention products QKᵀ and AV, as `compress check` counts them. Latency: onnxruntime "
        f"CPU, best of {TIMING_ROUNDS} rounds' median `run()` time, {seconds:g} s per file and "
        "cell, every file of a section interleaved with the dense file in each round (one "
        "dense latency per section); speedup = dense latency / latency; **efficiency** = "
        "speedup at batch 32, 1 thread / FLOP ratio. Wall: the whole `compress` command.",
        "", "",
    ])


def _table(name: str, dense: Result, control: Result | None, rows: list) -> str:
    lat = dense.latency
    lines = [
        f"## {MODELS[name][0]}",
        "",
        f"Rows: {time.strftime('%Y-%m-%d')} at commit {commit()} on {cpu()}.",
        "",
        f"Dense: {dense.weights:,} weights, {dense.flops:,} FLOPs/sample, test accuracy "
        f"{100 * dense.accuracy:.2f}%, widths {dense.widths}; latency {lat[1, 1]:.3f} ms at "
        f"batch 1 and {lat[32, 1]:.2f} ms at batch 32 (1 thread). Control (dense fine-tuned "
        f"alike): {f'{100 * control.accuracy:.2f}%' if control else 'not run (one shot only)'}.",
        "",
        "| FLOPs target | mode | method | widths | FLOPs (ratio) | test acc | Δ acc (pt) | b1 1t "
        "| b32 1t | b1 2t | b32 2t | efficiency b32 1t | wall |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for target, tuned, results in rows:
        mode = "fine-tuned" if tuned else "one-shot"
        for r in results:
            if not r.onnx:
                lines.append(f"| {100 * target:.0f}% | {mode} | {r.who} | refused: {r.widths} "
                             "|" + " |" * 9)
                continue
            ratio = dense.flops / r.flops
            speed = {cell: dense.latency[cell] / r.latency[cell] for cell in CELLS}
            lines.append(
                f"| {100 * target:.0f}% | {mode} | {r.who} | {r.widths} | "
                f"{r.flops:,} ({ratio:.2f}x) | {100 * r.accuracy:.2f}% | "
                f"{100 * (r.accuracy - dense.accuracy):+.2f} | "
                + " | ".join(f"{r.latency[c]:.3f} ms ({speed[c]:.2f}x)" for c in CELLS)
                + f" | {speed[32, 1] / ratio:.2f} | "
                + (f"{r.wall:.0f} s |" if r.wall is not None else "– |"))
    lines += ["", *_goals(dense, rows, name == "vit"), ""]
    return "\n".join(lines)


GOALS = {(0.5, True): 1.0, (0.7, True): 3.0, (0.5, False): 3.0}  # allowed drop (pt), ViT


def _versus(peer: float, ours: float) -> str:
    """Where the peer's test accuracy stands against ours (to the table's 0.01 pt)."""
    if round(peer, 4) == round(ours, 4):
        return "level with"
    return "behind" if peer < ours else "ahead of"


def _goals(dense: Result, rows: list, accuracy_goals: bool) -> list[str]:
    """Ours against dense and Torch-Pruning per row group, heads + FFN against its like and
    with the width against its like, with the issue's accuracy goals (set for the ViT) and
    efficiency goal, met or not."""
    lines = []
    for target, tuned, results in rows:
        by_who = {r.who: r for r in results}
        mode = "fine-tuned" if tuned else "one shot"
        for kind, peer in ((OURS["heads"], PEERS[False]), (OURS["width"], PEERS[True])):
            ours, peer = by_who[kind], by_who[peer]
            what = f"{100 * target:.0f}% {mode}, {kind.removeprefix('ours, ')}"
            if not ours.onnx:
                lines.append(f"- {what}: ours refused ({ours.widths}).")
                continue
            allowed = GOALS.get((target, tuned)) if accuracy_goals else None
            drop = 100 * (dense.accuracy - ours.accuracy)
            verdict = "" if allowed is None else (
                f"goal ≥ dense − {allowed:.1f} pt: "
                f"**{'met' if round(drop, 2) <= allowed else 'not met'}**; ")
            versus = f"{peer.who} refused" if not peer.onnx else \
                (f"{peer.who} {100 * peer.accuracy:.2f}% "
                 f"({_versus(peer.accuracy, ours.accuracy)} ours)")
            efficiency = (dense.latency[32, 1] / ours.latency[32, 1]) / (dense.flops / ours.flops)
            shown = f"{efficiency:.3f}" if round(efficiency, 3) != 0.8 else f"{efficiency:.4f}"
            lines.append(f"- {what}: ours {100 * ours.accuracy:.2f}% ({-drop:+.2f} pt); "
                         f"{verdict}{versus}; efficiency {shown} "
                         f"(goal ≥ 0.8: {'met' if efficiency >= 0.8 else 'not met'}).")
    return lines


if __name__ == "__main__":
    main()
