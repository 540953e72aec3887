"""`make bench` (part): the fine-tuning schedule on the shipped paper MLP. The default (at most
--epochs per cycle, the last cycle 3 x longer and more past 0.85) against the paper's retrain-until-recovered rule
(`--recover PTS`), through the real CLI, over seeds; writes benchmarks/schedule.md.

    python -m benchmarks.schedule [--seeds 0,1,2] [--out benchmarks/schedule.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import flat
from compressor.plan import Options
from compressor.plan.rules import final_epochs

REPO = Path(__file__).resolve().parents[1]
MODEL, ARCH = REPO / "models" / "paper_mlp.pt", "models.mlp:paper_mlp"
TARGETS = (0.85, 0.95)
SCHEDULES = {"default": [], "--recover 0.5": ["--recover", "0.5"],
             "--recover 0": ["--recover", "0"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "schedule.md")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in TARGETS:
            for name, options in SCHEDULES.items():
                runs = [_run(Path(tmp), target, options, seed) for seed in seeds]
                rows.append({"target": target, "schedule": name, "runs": runs})
    text = _markdown(rows, seeds)
    args.out.write_text(text)
    print(text)


def _run(tmp: Path, target: float, options: list[str], seed: int) -> dict:
    out = tmp / "m.onnx"
    cmd = [str(Path(sys.executable).with_name("compress")), str(MODEL), "--arch", ARCH,
           "--target", str(target), "--data", "fashion-mnist", "--seed", str(seed),
           "--no-latency", "-o", str(out), *options]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    report = flat(json.loads(out.with_suffix(".json").read_text()))
    print(f"{target} {options} seed {seed}: {report['accuracy_after']:.4f}, {wall:.0f} s",
          file=sys.stderr)
    return {"accuracy": report["accuracy_after"], "dense": report["accuracy_before"],
            "epochs": [c["epochs"] for c in report["cycles"]], "wall": wall}


def _markdown(rows: list[dict], seeds: list[int]) -> str:
    dense = rows[0]["runs"][0]["dense"]
    lines = ["# Fine-tuning schedule: fixed epochs or retrain until recovered", "",
             f"`python -m benchmarks.schedule` (part of `make bench`) on "
             f"{time.strftime('%Y-%m-%d')}: {os.cpu_count()} cores "
             f"({platform.processor() or 'CPU'}), torch {torch.__version__}. Each run: `compress "
             "models/paper_mlp.pt --arch models.mlp:paper_mlp --target T --data fashion-mnist "
             "--seed S --no-latency` plus the schedule's option; every other option at its "
             "default (5 cycles, at most 6 epochs per cycle and in the last "
             f"{', '.join(f'{final_epochs(Options(t), 6)[0]} at {t}' for t in TARGETS)}, patience 3, "
             "distillation 0.5). `--recover PTS`: every cycle but the last trains until its "
             "validation accuracy is within PTS points of the input model's (at most the last "
             "cycle's epochs); the last cycle is the same in every schedule. Seeds: "
             f"{', '.join(map(str, seeds))}. Dense test accuracy {100 * dense:.2f}%.", "",
             "| target | schedule | test % per seed | mean ± sd | epochs per cycle (seed 0) | "
             "wall s (mean) |", "|---|---|---|---|---|---|"]
    for row in rows:
        acc = [r["accuracy"] for r in row["runs"]]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        lines.append(f"| {row['target']} | {row['schedule']} | "
                     f"{' / '.join(f'{100 * a:.2f}' for a in acc)} | "
                     f"{100 * statistics.mean(acc):.2f} ± {100 * sd:.2f} | "
                     f"{'-'.join(map(str, row['runs'][0]['epochs']))} | "
                     f"{statistics.mean(r['wall'] for r in row['runs']):.0f} |")
    lines += [""]
    for target in TARGETS:
        means = {r["schedule"]: statistics.mean(x["accuracy"] for x in r["runs"])
                 for r in rows if r["target"] == target}
        best = max(means, key=means.get)
        lines.append(f"- {target}: best mean {best} ({100 * means[best]:.2f}%); default "
                     f"{100 * means['default']:.2f}%.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
