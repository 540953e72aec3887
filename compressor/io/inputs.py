"""The model's inputs: how data must be shaped for it, inputs to check it on when there is no
data, and labels that fit its outputs."""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import DataError, first_line
from .data import DataSplits
from .load import LoadedModel, output_tensor

PARITY_SAMPLES = 1_000  # inputs every export is checked on


def find_input_layout(model: LoadedModel, x: torch.Tensor) -> tuple[Callable, int]:
    """Find how `x` must be shaped for the model (as is, flattened, or without its channel axis).

    Returns:
        The reshaping function and the model's number of outputs per sample.
    """
    candidates = [("as given", lambda t: t)]
    if x.ndim > 2:
        candidates.append(("flattened", lambda t: t.flatten(1)))
    if x.ndim == 4 and x.shape[1] == 1:
        candidates.append(("without the channel axis", lambda t: t.squeeze(1)))
    first_error = None
    for _, layout in candidates:
        try:
            with torch.no_grad():
                out = output_tensor(model.run(layout(x[:2])))
        except Exception as e:  # the user's model code may raise anything
            first_error = first_error or first_line(e)
            continue
        if out.ndim == 2 and out.shape[0] == min(2, x.shape[0]):
            return layout, int(out.shape[1])
        first_error = first_error or f"it returned shape {list(out.shape)}, not [batch, classes]"
    tried = ", ".join(name for name, _ in candidates)
    raise DataError(f"the model cannot take the data (inputs of shape [N, "
                    f"{', '.join(map(str, x.shape[1:]))}], tried {tried}): {first_error}; "
                    "give data in the shape the model expects")


def fit_data(model: LoadedModel, splits: DataSplits) -> DataSplits:
    """`splits` with inputs in the layout the model takes; labels checked against its outputs."""
    layout, classes = find_input_layout(model, splits.train.x)
    splits = splits.map_x(layout)
    for part in (splits.train, splits.validation, splits.test):
        if part is not None and part.y is not None:
            check_labels(part.y, classes, source=splits.name)
    return splits


def check_labels(y: torch.Tensor, classes: int, *, source: str) -> None:
    """Refuse labels a model with `classes` outputs cannot predict."""
    if int(y.max()) >= classes:
        raise DataError(f"{source}: labels go up to {int(y.max())} but the model has {classes} "
                        f"outputs: give labels 0..{classes - 1}")


def random_inputs(model: LoadedModel, *, seed: int,
                  shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Inputs to check the export on when there is no data: uniform [0, 1) in `shape` (per
    sample), else the model's input shape (from a .pt2 program's signature, else the first
    Linear's input features)."""
    shape = shape or _input_shape(model)
    x = torch.rand((PARITY_SAMPLES, *shape), generator=torch.Generator().manual_seed(seed))
    try:
        layout, _ = find_input_layout(model, x)
    except DataError as e:
        raise DataError(f"without --data the model is checked on random inputs of shape "
                        f"[N, {', '.join(map(str, shape))}], and it does not take them: pass "
                        "--input-shape (e.g. 1,28,28) or --data with inputs in the shape it "
                        "expects") from e
    return layout(x)


def _input_shape(model: LoadedModel) -> tuple[int, ...]:
    if model.program is not None:
        names = set(model.program.graph_signature.user_inputs)
        for node in model.program.graph.nodes:
            if node.op == "placeholder" and node.name in names and "val" in node.meta:
                return tuple(int(d) for d in node.meta["val"].shape[1:])
    first = next((p for _, p in model.run.named_parameters() if p.ndim >= 2), None)
    if first is not None and first.ndim == 2:
        return (int(first.shape[1]),)
    raise DataError("cannot tell the model's input shape without data: pass --input-shape "
                    "(one sample's shape, e.g. 1,28,28) or --data")


def example(x: torch.Tensor) -> torch.Tensor:
    """Two samples to trace with: torch.export treats a batch of one as a fixed size."""
    return x[:2] if x.shape[0] >= 2 else x.repeat(2, *[1] * (x.ndim - 1))
