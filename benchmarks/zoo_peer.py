"""Torch-Pruning on one model of the zoo, in its own process (`benchmarks.zoo` runs it):

    python -m benchmarks.zoo_peer NAME WORK

reads WORK/NAME.module.pt and WORK/calib.npy; writes WORK/NAME.peer.onnx and NAME.peer.json."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks.zoo import TARGET


def prune(name: str, work: Path) -> None:
    """Torch-Pruning 1.6 with its standard recipe: MetaPruner, group L2 magnitude, one ratio
    for every layer, the classifier ignored; the ratio bisected so that the model keeps 50% of
    its FLOPs (counted as ours are); exported as ours are."""
    from models.vision import import_torchvision

    import_torchvision()  # before torch-pruning and the unpickled model import it
    import torch_pruning as tp

    from benchmarks.common import flops_of
    from compressor.export.to_onnx import to_onnx
    from compressor.export.verify import run_onnx
    from compressor.graph.capture import capture
    from compressor.io.load import LoadedModel, ModelFormat
    from compressor.runtime import session

    net = torch.load(work / f"{name}.module.pt", weights_only=False)
    x = torch.from_numpy(np.load(work / "calib.npy"))
    example = x[:2]
    base = flops_of(net, example)
    lo, hi, best = 0.0, 0.95, None
    for _ in range(10):
        ratio = (lo + hi) / 2
        candidate = copy.deepcopy(net)
        head = _classifier(candidate)  # its own
        tp.pruner.MetaPruner(candidate, example, importance=tp.importance.MagnitudeImportance(p=2),
                             pruning_ratio=ratio, ignored_layers=[head]).step()
        if head.weight.shape[0] != 10:
            raise SystemExit("Torch-Pruning pruned the classifier's classes")
        reduction = 1 - flops_of(candidate, example) / base
        if reduction >= TARGET:
            best, hi = (candidate, reduction), ratio
        else:
            lo = ratio
    if best is None:
        raise SystemExit(f"Torch-Pruning cannot reach {TARGET:.0%} fewer FLOPs")
    model, reduction = best
    onnx_bytes = to_onnx(capture(LoadedModel(Path(name), ModelFormat.PICKLED_MODULE,
                                             model.eval()), example), example)
    (work / f"{name}.peer.onnx").write_bytes(onnx_bytes)
    with torch.no_grad():
        reference = model(x)
    parity = float((run_onnx(session(onnx_bytes), x) - reference).abs().max())
    (work / f"{name}.peer.json").write_text(json.dumps(
        {"flops": round((1 - reduction) * base), "parity": parity,
         "scale": float(reference.abs().max()), "classifier_kept": True}))


def _classifier(net: torch.nn.Module) -> torch.nn.Module:
    """The layer that writes the 10 classes: the last Linear, or the last convolution where there
    is none (SqueezeNet's)."""
    layers = [m for m in net.modules() if isinstance(m, torch.nn.Linear)] or \
        [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    return layers[-1]


if __name__ == "__main__":
    prune(sys.argv[1], Path(sys.argv[2]))
