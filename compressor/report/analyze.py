"""What `compress analyze` found, as a table and as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch

from ..measure.spectra import EPS, WeightStats
from .table import align

QUANTILES = (0.1, 0.5, 0.9)


@dataclass(frozen=True)
class FiringStats:
    """Firing rates of a layer's units on the data (share of samples x positions where the
    unit fires: non-zero behind a ReLU)."""

    dead: int  # units that never fire
    mean: float
    quantiles: dict[str, float]  # "10%", "50%", "90%"
    rates: tuple[float, ...]  # per unit

    @staticmethod
    def of(rates: torch.Tensor) -> FiringStats:
        r = rates.double()
        q = torch.quantile(r, torch.tensor(QUANTILES, dtype=torch.float64)).tolist()
        return FiringStats(int((r == 0).sum()), round(float(r.mean()), 6),
                           {f"{round(100 * p)}%": round(v, 6) for p, v in zip(QUANTILES, q)},
                           tuple(round(float(v), 6) for v in r))


@dataclass(frozen=True)
class LayerAnalysis:
    name: str
    kind: str  # linear or conv
    weights: WeightStats
    firing: FiringStats | None = None  # with data, for layers whose units are prunable
    pca: dict[str, int] | None = None  # principal components keeping 95% / 99% of the variance


@dataclass(frozen=True)
class ModelAnalysis:
    path: str
    format: str  # pytorch or onnx
    layers: tuple[LayerAnalysis, ...]
    notes: tuple[str, ...] = ()  # what was not analysed, and why


@dataclass(frozen=True)
class PcaRow:
    """The PCA rank-reduction baseline (paper §3.4) at a compared model's ranks: test accuracy
    of the model, of the compared model, and of the model with each prunable layer's output
    projected on that many principal components."""

    compared: str
    ranks: dict[str, int]  # per prunable layer of the model: the compared layer's rank
    accuracy_model: float
    accuracy_compared: float
    accuracy_pca: float


@dataclass(frozen=True)
class Analysis:
    models: tuple[ModelAnalysis, ...]  # the model, then each --compare model
    data: str | None = None
    pca_baseline: tuple[PcaRow, ...] = ()  # labelled data and --compare only

    def to_json(self) -> str:
        data = asdict(self)
        data["rank_tolerance"] = f"sigma_max x max(rows, columns) x {EPS:.3g} (float32 eps)"
        return json.dumps(data, indent=2) + "\n"


def format_analysis(a: Analysis) -> str:
    """One table per model: shape, ranks, energy ranks, zeros and (with data) firing rates
    and activation PCA dimensions per layer."""
    out = []
    for model in a.models:
        rows = [("layer", "shape", "rank", "eff. rank", "k90%", "k99%", "zeros", "zero rows",
                 "zero cols", "dead", "firing", "PCA 95%", "PCA 99%")]
        for layer in model.layers:
            w, f, p = layer.weights, layer.firing, layer.pca
            rows.append((layer.name, f"{w.shape[0]}x{w.shape[1]}", str(w.rank),
                         f"{w.effective_rank:.1f}", str(w.energy_ranks["90%"]),
                         str(w.energy_ranks["99%"]), f"{100 * w.zero_fraction:.1f}%",
                         str(w.zero_rows), str(w.zero_columns),
                         "-" if f is None else str(f.dead),
                         "-" if f is None else f"{100 * f.mean:.1f}%",
                         "-" if p is None else str(p["95%"]), "-" if p is None else str(p["99%"])))
        out += [f"{model.path} ({model.format})", "", *align(rows, free_last=False), ""]
        out += [f"note: {n}" for n in model.notes]
        out += [""] * bool(model.notes)
    if a.pca_baseline:
        rows = [("compared model", "ranks", "model", "compared", "PCA at its ranks")]
        rows += [(r.compared, "-".join(map(str, r.ranks.values())),
                  f"{100 * r.accuracy_model:.2f}%", f"{100 * r.accuracy_compared:.2f}%",
                  f"{100 * r.accuracy_pca:.2f}%") for r in a.pca_baseline]
        out += ["PCA baseline: every prunable layer's output projected on as many principal "
                "components as the compared model's layer has rank (test accuracy)", "",
                *align(rows, free_last=False), ""]
    out.append("rank: singular values above sigma_max x max(shape) x float32 eps; eff. rank: "
               "exp of the entropy of the normalised singular values; kN%: singular values "
               "holding N% of the squared sum; firing: mean share of samples (x positions) a "
               "unit fires on; PCA N%: principal components keeping N% of the activations' "
               "variance" + ("" if a.data else " (firing and PCA need --data)") + ".")
    return "\n".join(out) + "\n"
