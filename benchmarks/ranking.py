"""`make bench` (ranking part): how long `--criterion error` takes to rank one wide layer,
exact greedy against the blocked greedy, and how much error the blocked order leaves.
Writes benchmarks/ranking.md.

    python -m benchmarks.ranking [--widths 512,1024,2048,4096] [--samples 10000]

The layer is the hidden layer of a 784-W-W/4-10 ReLU MLP with PyTorch's default initial
weights, read on Fashion-MNIST training images (the time does not depend on training; the
error comparison is between two orders on the same layer).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import loaded, machine
from compressor.graph.capture import capture
from compressor.graph.trace import trace
from compressor.io.sources import load_data
from compressor.plan import DEFAULTS
from compressor.prune.error import STEPS, consumer_problems, greedy_errors

REPO = Path(__file__).resolve().parents[1]
RIDGE = DEFAULTS["ridge"]
SHARES = (0.5, 0.75, 0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="512,1024,2048,4096")
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--exact-up-to", type=int, default=4096,
                        help="widest layer the exact greedy is run on (it is O(n^3))")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "ranking.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    x = load_data("fashion-mnist", seed=0).train.x[:args.samples].reshape(args.samples, -1)
    rows = [_row(int(width), x, exact=int(width) <= args.exact_up_to)
            for width in args.widths.split(",")]
    args.out.write_text(_text(args.samples, rows))
    print(args.out.read_text())


def _row(width: int, x: torch.Tensor, *, exact: bool) -> dict:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width // 4),
                        nn.ReLU(), nn.Linear(width // 4, 10))
    gm = capture(loaded(net), x[:2])
    group = trace(gm).groups[0]
    start = time.perf_counter()
    cov, w = consumer_problems(gm, (group,), x)[group.name]
    row = {"width": width, "covariance": time.perf_counter() - start}
    orders = {}
    for name, steps in (("exact", None),) * exact + (("blocked", STEPS),):
        start = time.perf_counter()
        orders[name] = greedy_errors(cov, w, RIDGE, steps=steps).argsort()
        row[name] = time.perf_counter() - start
    total = float(torch.einsum("oi,ij,oj->", w, cov, w))
    for share in SHARES:
        k = int(share * width)
        row[share] = {name: _set_error(cov, w, order[:k]) / total
                      for name, order in orders.items()}
    print(row)
    return row


def _set_error(cov: torch.Tensor, w: torch.Tensor, gone: torch.Tensor) -> float:
    """The consumer's output error after removing `gone` and refitting the rest by least
    squares (with the same ridge): tr(W C Wᵀ) - tr(W C_R (C_RR + λI)⁻¹ C_R Wᵀ)."""
    kept = torch.ones(cov.shape[0], dtype=torch.bool)
    kept[gone] = False
    c_r = cov[:, kept]
    lam = RIDGE * float(torch.diagonal(cov).mean())
    system = cov[kept][:, kept] + lam * torch.eye(int(kept.sum()), dtype=cov.dtype)
    explained = w @ c_r @ torch.linalg.solve(system, c_r.T @ w.T)
    return float(torch.trace(w @ cov @ w.T) - torch.trace(explained))


def _text(samples: int, rows: list[dict]) -> str:
    lines = [
        "# Benchmark: ranking a wide layer by `--criterion error`",
        "",
        f"Produced by `make bench` (`python -m benchmarks.ranking`) on "
        f"{time.strftime('%Y-%m-%d')}. Machine: {machine()}.",
        "",
        "The layer: the first hidden layer (W units) of a 784-W-W/4-10 ReLU MLP with "
        f"PyTorch's default initial weights, on {samples:,} Fashion-MNIST training images; "
        "its consumer is the W/4-wide second layer. **covariance**: the activations' "
        "covariance (what both rankings need; each batch's products in float32 about the "
        "first batch's means, summed in float64). **exact**: greedy "
        "Optimal Brain Surgeon removal, one unit per step (the reference; used up to 512 "
        f"units). **blocked**: ceil(alive/{STEPS}) units per step with a rank-k Schur "
        "complement update of the kept inverse (used above 512 units). Error: the consumer's "
        "output error after removing the first share of each order and refitting the rest by "
        "ridge least squares, as a fraction of its output variance (lower is better).",
        "",
        "| width | covariance | exact | blocked | speed-up | "
        + " | ".join(f"error at {100 * s:.0f}%: exact / blocked" for s in SHARES) + " |",
        "|---|---|---|---|---|" + "---|" * len(SHARES),
    ]
    for r in rows:
        lines.append(
            f"| {r['width']:,} | {r['covariance']:.1f} s | {_s(r, 'exact')} | "
            f"{r['blocked']:.1f} s | "
            + (f"{r['exact'] / r['blocked']:.0f}x | " if "exact" in r else "– | ")
            + " | ".join(f"{_e(r[s], 'exact')} / {r[s]['blocked']:.4f}" for s in SHARES)
            + " |")
    return "\n".join(lines) + "\n"


def _s(row: dict, key: str) -> str:
    return f"{row[key]:.1f} s" if key in row else "not run"


def _e(errors: dict, key: str) -> str:
    return f"{errors[key]:.4f}" if key in errors else "–"


if __name__ == "__main__":
    main()
