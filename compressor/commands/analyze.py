"""`compress analyze`: per Linear and Conv layer of a model (and of pruned models made from it),
the weight matrix's singular values, ranks and zeros, and with data its units' firing rates
and the PCA dimension of their activations."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from ..errors import NothingToPruneError
from ..export.formats import densify
from ..graph.capture import capture, get_tensor, outputs_of, run_batched
from ..graph.sizes import samples_per_pass
from ..graph.trace import trace
from ..io.files import files_in, write_atomic
from ..io.inputs import example, fit_data, random_inputs
from ..io.load import load_model
from ..io.sources import load_data
from ..measure.onnx_file import fit_input, load_onnx, predictions
from ..measure.spectra import pca_dims, weight_stats
from ..prune.calibrate import count_activations
from ..prune.error import ranks_by_error
from ..prune.lsq import Moments
from ..prune.pca import pca_projected
from ..report.analyze import Analysis, FiringStats, LayerAnalysis, ModelAnalysis, PcaRow
from ..report.plots import analyze_plots, require_matplotlib
from .compress import prepared

Log = Callable[[str], None]
CALIBRATION = 10_000  # samples firing rates and activation covariances are measured on
BATCH = 1_000


@dataclass(frozen=True)
class AnalyzeInputs:
    """What `compress analyze` reads.

    Args:
        model: the model to analyse (any file `compress` takes, or an ONNX file).
        compare: pruned models made from it (ONNX files `compress` wrote, or PyTorch files).
        data: data for firing rates and activation PCA (PyTorch models only).
        arch: builds state_dict files (`module:callable`).
        trust_pickle: allow whole pickled modules.
        input_shape: one sample's shape (as `compress --input-shape`).
        calibration_samples: most samples firing rates and covariances use.
    """

    model: Path
    compare: tuple[Path, ...] = ()
    data: str | None = None
    arch: str | None = None
    trust_pickle: bool = False
    input_shape: tuple[int, ...] | None = None
    calibration_samples: int = CALIBRATION


def analyze(inputs: AnalyzeInputs, *, out: Path | None = None,
            log: Log | None = None) -> Analysis:
    """Analyse `inputs.model` and every `inputs.compare` model; refuse a main model with no
    Linear or Conv layer (NothingToPruneError, exit 2). With `out`, also write
    `analysis.json` and the PNGs (`report.plots.analyze_plots`) into that folder, all or
    none."""
    log = log or (lambda _: None)
    if out is not None:
        require_matplotlib("--out")
    loaded = []
    for path in (inputs.model, *inputs.compare):
        found = _onnx(path) if Path(path).suffix == ".onnx" else _torch(path, inputs, log)
        if not found.analysis.layers and not loaded:
            raise NothingToPruneError(f"nothing to analyse in {path}: it has no Linear, Conv, "
                                      "Gemm or MatMul layer with constant weights")
        loaded.append(found)
    baseline = _pca_baseline(loaded, inputs, log)
    analysis = Analysis(models=tuple(m.analysis for m in loaded), data=inputs.data,
                        pca_baseline=baseline)
    if out is not None:
        log(f"writing analysis.json and PNGs into {out}")
        named = {"analysis.json": analysis.to_json().encode(),
                 **analyze_plots(analysis, [m.matrices for m in loaded])}
        write_atomic(files_in(out, named, option="--out"))
    return analysis


@dataclass(frozen=True)
class _Loaded:
    analysis: ModelAnalysis
    matrices: dict[str, np.ndarray]  # per layer, its weights as [outputs, inputs]
    predict: Callable[[torch.Tensor], torch.Tensor]  # top-1 classes of inputs in MODEL's layout
    graph: tuple | None = None  # PyTorch models: (graph, trace, data splits or None)


def _pca_baseline(loaded: list[_Loaded], inputs: AnalyzeInputs, log: Log) -> tuple[PcaRow, ...]:
    """Per --compare model: test accuracy of the model, of the compared one, and of the model
    with every prunable layer projected on as many principal components as the compared
    layer's rank (labelled data and a PyTorch MODEL whose layers are each read by one Linear
    only; else nothing)."""
    main = loaded[0]
    if main.graph is None or main.graph[2] is None or not main.graph[2].labelled \
            or len(loaded) < 2:
        return ()
    gm, found, splits = main.graph
    groups = [g for g in found.groups if "heads" not in g.kinds]  # projected per feature
    if not groups or not ranks_by_error(gm, groups):
        return ()
    test = splits.test or splits.validation
    calib = splits.train.head(inputs.calibration_samples).x
    index = {layer.name: i for i, layer in enumerate(found.layers)}
    labels = test.labels()
    dense = _accuracy(main.predict(test.x), labels)
    rows = []
    for other in loaded[1:]:
        layers = other.analysis.layers
        if len(layers) != len(found.layers):
            continue
        ranks = {g.name: layers[index[g.name]].weights.rank for g in groups}
        log(f"PCA baseline at the ranks of {other.analysis.path}")
        projected = pca_projected(gm, groups, calib, ranks)
        rows.append(PcaRow(other.analysis.path, ranks, round(dense, 6),
                           round(_accuracy(other.predict(test.x), labels), 6),
                           round(_accuracy(run_batched(projected, test.x).argmax(1), labels),
                                 6)))
    return tuple(rows)


def _accuracy(classes: torch.Tensor, y: torch.Tensor) -> float:
    return float((classes == y).double().mean())


def _torch(path: Path, inputs: AnalyzeInputs, log: Log) -> _Loaded:
    model = prepared(load_model(path, arch=inputs.arch, trust_pickle=inputs.trust_pickle),
                     owned=True)
    calib = splits = None
    if inputs.data is None:
        probe, _ = random_inputs(model, seed=0, shape=inputs.input_shape)
    else:
        splits, _ = fit_data(model, load_data(inputs.data, seed=0), shape=inputs.input_shape)
        calib = splits.train.head(inputs.calibration_samples).x
        probe = calib
    gm = capture(model, example(probe))
    found = trace(gm, example(probe))  # with a sample: heads found too
    if calib is not None and found.groups:
        log(f"{path}: firing rates and activation covariances on {len(calib):,} samples")
    units = [g for g in found.groups if "heads" not in g.kinds]  # heads: no firing of their own
    firing, pca = ({}, {}) if calib is None else _activations(gm, units, calib)
    matrices = {layer.name: get_tensor(gm, layer.weight).detach().numpy().reshape(
        layer.out_features, -1) for layer in found.layers}
    layers = tuple(LayerAnalysis(layer.name, layer.kind, weight_stats(matrices[layer.name]),
                                 firing.get(layer.name), pca.get(layer.name))
                   for layer in found.layers)
    notes = tuple(f"{name}: no firing rates ({why})" for name, why in found.dense
                  if calib is not None)
    notes += tuple(f"{g.name}: no firing rates (attention heads: pruned as heads, ranked by "
                   "the error they leave)" for g in found.groups
                   if "heads" in g.kinds and calib is not None)
    return _Loaded(ModelAnalysis(str(path), "pytorch", layers, notes), matrices,
                   lambda x: run_batched(gm, x).argmax(1), (gm, found, splits))


def _activations(gm, groups, x: torch.Tensor) -> tuple[dict[str, FiringStats], dict]:
    """Per prunable group (by its producing layer's name): firing statistics, and the PCA
    dimensions of its units' activations (every sample and position a row)."""
    if not groups:
        return {}, {}
    stats = count_activations(gm, groups, x, batch_size=BATCH)
    firing = {g.name: FiringStats.of(stats.rate(g.name)) for g in groups}
    names = [g.activations[0] for g in groups]
    probe = outputs_of(gm, names)
    batch = samples_per_pass(gm, names, BATCH)
    moments = [Moments(g.size) for g in groups]
    with torch.no_grad():
        for start in range(0, x.shape[0], batch):
            out = probe(x[start:start + batch])
            for g, m, a in zip(groups, moments, out if isinstance(out, tuple) else (out,)):
                m.add(g.units_of(0, a).transpose(1, 2).reshape(-1, g.size))
    return firing, {g.name: pca_dims(m.mean_cov()[1]) for g, m in zip(groups, moments)}


_FLOAT_OPS = {"Gemm", "MatMul", "Conv"}


def _onnx(path: Path) -> _Loaded:
    """The weight matrices of an ONNX file's Gemm, MatMul and Conv nodes, in graph order
    (sparse initializers densified; int8 nodes named and skipped)."""
    model = load_onnx(path)
    proto = densify(model.proto)
    constants = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    layers, notes, matrices = [], [], {}
    for node in proto.graph.node:
        if node.op_type not in _FLOAT_OPS:
            if "Integer" in node.op_type or node.op_type.startswith("QLinear"):
                notes.append(f"{node.name or node.op_type}: int8 weights, not analysed "
                             "(analyse the float file)")
            continue
        w = constants.get(node.input[1])
        if w is None or w.dtype.kind != "f" or w.ndim < 2:
            continue
        name = node.name or node.input[1]
        rows = _rows_are_outputs(node, w)
        matrices[name] = rows.reshape(rows.shape[0], -1)
        kind = "conv" if node.op_type == "Conv" else "linear"
        layers.append(LayerAnalysis(name, kind, weight_stats(matrices[name])))
    notes += [] if layers else ["no float Gemm, MatMul or Conv with constant weights"]
    return _Loaded(ModelAnalysis(str(path), "onnx", tuple(layers), tuple(notes)), matrices,
                   lambda x: predictions(model.runnable(), fit_input(model, x, source=path))[0])


def _rows_are_outputs(node: onnx.NodeProto, w: np.ndarray) -> np.ndarray:
    """`w` as [outputs, inputs...]: Gemm's B is [in, out] unless transB, MatMul's always."""
    if node.op_type == "Conv":
        return w
    if node.op_type == "Gemm":
        trans = next((helper.get_attribute_value(a) for a in node.attribute
                      if a.name == "transB"), 0)
        return w if trans else w.T
    return np.moveaxis(w, -1, 0).reshape(w.shape[-1], -1)
