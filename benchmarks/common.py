"""What the peer benchmarks share: a measured model, its export and scoring as `compress`
does them, interleaved onnxruntime timing, and the machine line."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime
import torch

from compressor.export.to_onnx import to_onnx
from compressor.export.verify import run_onnx
from compressor.graph import count
from compressor.graph.capture import capture
from compressor.graph.trace import trace
from compressor.io.load import LoadedModel, ModelFormat
from compressor.measure.latency import latencies_ms
from compressor.plan import DataFacts, Options, Plan, ThisMachine, model_facts, plan
from compressor.prune.finetune import accuracy
from compressor.runtime import session

CELLS = ((1, 1), (32, 1), (1, 2), (32, 2))  # (batch, onnxruntime threads)


@dataclass
class Result:
    """One model: who made it, its export, and the measurements."""

    who: str  # "dense", "ours", "Torch-Pruning", ...
    onnx: bytes
    flops: int
    weights: int
    accuracy: float
    wall: float | None = None  # seconds for the whole `compress` command (ours)
    widths: str = ""
    latency: dict[tuple[int, int], float] = field(default_factory=dict)


def loaded(module: torch.nn.Module) -> LoadedModel:
    return LoadedModel(Path("benchmark"), ModelFormat.STATE_DICT, module.eval())


def flops_of(module: torch.nn.Module, sample: torch.Tensor) -> int:
    """FLOPs per sample as `compress check` counts them."""
    gm = capture(loaded(module), sample[:2])
    return count.flops(gm, trace(gm))


def measured(who: str, module: torch.nn.Module, test, sample: torch.Tensor,
             widths: str = "") -> Result:
    """`module` exported as `compress` exports (BatchNorm folded at capture) and scored in
    onnxruntime on `test` (a split with x and y)."""
    gm = capture(loaded(module), sample[:2])
    found = trace(gm)
    onnx_bytes = to_onnx(gm, sample[:2])
    predicted = run_onnx(session(onnx_bytes), test.x)
    return Result(who, onnx_bytes, count.flops(gm, found), count.weights(gm, found),
                  accuracy(predicted, test.y), widths=widths)


def time_cells(results: list[Result], sample: torch.Tensor, seconds: float,
               rounds: int = 5) -> None:
    """Every (batch, threads) cell timed with the models interleaved, so that a busy moment
    slows all alike; `seconds` per model and cell, split into `rounds`."""
    for batch, threads in CELLS:
        found = latencies_ms([r.onnx for r in results], [sample] * len(results), batch=batch,
                             threads=threads, seconds=seconds * len(results), rounds=rounds)
        for r, ms in zip(results, found):
            r.latency[batch, threads] = ms


def recipe(module: torch.nn.Module, sample: torch.Tensor, target: float, **options) -> Plan:
    """The plan `compress` follows for `module` with labelled data at `target`: the
    fine-tuning recipe a peer is given too."""
    gm = capture(loaded(module), sample[:2])
    return plan(Options(target, **options), model_facts(gm, trace(gm)), DataFacts(True, True),
                ThisMachine())


def flat(report: dict) -> dict:
    """The fields of a `compress` JSON report the benchmarks read, by one name each."""
    size, accuracy, choices = report["size"], report["accuracy"] or {}, \
        report["plan"]["choices"]
    return {**size, "accuracy_before": accuracy.get("before"),
            "accuracy_after": accuracy.get("after"), "layers": report["layers"],
            "cycles": report["cycles"], "options": report["plan"]["config"],
            **{name: choice["value"] for name, choice in choices.items()}}


def commit() -> str:
    """The short hash of the checkout's HEAD, for a row's or a section's provenance."""
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parents[1],
                          text=True, capture_output=True, check=False)
    return done.stdout.strip() or "unknown"


def cpu() -> str:
    """This machine's CPU model."""
    return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                 .splitlines() if line.startswith("model name")), platform.processor())


def machine() -> str:
    """'N cores (CPU model), no GPU; versions' for a benchmark's header."""
    return (f"{os.cpu_count()} cores ({cpu()}), no GPU; torch {torch.__version__} (2 threads), "
            f"onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}")


def model_sections(out: Path, titles: dict[str, str]) -> dict[str, str]:
    """The sections `out` already has, by model name (`titles`: heading line -> name); a
    section runs to the next heading, and headings not in `titles` (a hand-written reading)
    end the one before them and are dropped."""
    if not out.exists():
        return {}
    found: dict[str, list[str]] = {}
    current = None
    for line in out.read_text().splitlines():
        if line.startswith("## "):
            current = titles.get(line)
        if current is not None:
            found.setdefault(current, []).append(line)
    return {name: "\n".join(lines).rstrip("\n") + "\n" for name, lines in found.items()}
