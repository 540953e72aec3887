"""The model's inputs: how data must be shaped for it, inputs to check it on when there is no
data, and labels that fit its outputs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import DataError, ModelError, first_line
from .data import LOAD_BATCH, DataSplits
from .load import LoadedModel, output_tensor

PARITY_SAMPLES = 1_000  # inputs every export is checked on


@dataclass(frozen=True)
class InputLayout:
    """How data must be shaped for a model."""

    reshape: Callable[[torch.Tensor], torch.Tensor]
    shape: tuple[int, ...]  # one sample's shape after `reshape`
    classes: int  # outputs per sample
    also: tuple[tuple[int, ...], ...] = ()  # other sample shapes the model takes as well

    def describe_also(self) -> str:
        """`[batch, 784], [batch, 28, 28]`: the other shapes, for the report."""
        return ", ".join(_batch_shape(s, "batch") for s in self.also)


def find_input_layout(model: LoadedModel, x: torch.Tensor, *,
                      shape: tuple[int, ...] | None = None) -> InputLayout:
    """Find how `x` must be shaped for the model: in `shape` (one sample's, when given: from
    `--input-shape` or a `.pt2` program's signature), else as given, flattened or without its
    channel axis, the first the model takes; the others it takes too are recorded, so that the
    report can say the choice was not the only one.
    """
    if shape is not None:
        if math.prod(shape) != math.prod(x.shape[1:]):
            raise DataError(f"the data's samples have shape {_batch_shape(x.shape[1:])} "
                            f"({math.prod(x.shape[1:]):,} values) and the model's input shape "
                            f"{_batch_shape(shape)} has {math.prod(shape):,}: give data or "
                            "--input-shape that match")
        candidates = [("in the model's input shape", lambda t: t.reshape(t.shape[0], *shape))]
    else:
        candidates = [("as given", lambda t: t)]
        if x.ndim > 2:
            candidates.append(("flattened", lambda t: t.flatten(1)))
        if x.ndim == 4 and x.shape[1] == 1:
            candidates.append(("without the channel axis", lambda t: t.squeeze(1)))
    _refuse_fixed_batch(model, x, candidates)
    taken, first_error, returned = _try_layouts(model, x, candidates)
    if taken:
        (layout, chosen, classes), *others = taken
        return InputLayout(layout, chosen, classes, tuple(s for _, s, _ in others))
    _refuse_dtype(model, x, candidates)
    if len(returned) == len(candidates):  # it ran on the data: its output is what is wrong
        raise ModelError(f"the model returns {returned[0]} for a batch of "
                         f"{min(2, x.shape[0])}, not one row of logits per sample "
                         "[batch, classes]: outputs per token or per pixel (a language model's "
                         "or a segmentation head) are not supported; give a model that ends "
                         "in a classifier (`...ForSequenceClassification`, or pool over its "
                         "tokens), or name the logits among several outputs with --logits")
    tried = ", ".join(name for name, _ in candidates)
    raise DataError(f"the model cannot take the data (inputs of shape "
                    f"{_batch_shape(x.shape[1:])}, tried {tried}): {first_error}; give data in "
                    "the shape the model expects")


def _try_layouts(model: LoadedModel, x: torch.Tensor,
                 candidates: list) -> tuple[list, str | None, list[list[int]]]:
    """The layouts of `candidates` the model takes `x` in (with the sample shape and classes
    each gives), the first error of those it does not, and the output shapes of those it ran
    on but whose outputs are not [batch, classes]."""
    taken, first_error, returned = [], None, []
    for _, layout in candidates:
        try:
            with torch.no_grad():
                raw = model.run(layout(x[:2]))
        except ModelError:  # about the model, whatever the layout (--logits)
            raise
        except Exception as e:  # the user's model code may raise anything
            first_error = first_error or first_line(e)
            continue
        out = output_tensor(raw)  # a tuple or dict of outputs: say --logits, not the layout
        if out.ndim == 2 and out.shape[0] == min(2, x.shape[0]):
            taken.append((layout, tuple(layout(x[:1]).shape[1:]), int(out.shape[1])))
        else:
            first_error = first_error or \
                f"it returned shape {list(out.shape)}, not [batch, classes]"
            returned.append(list(out.shape))
    return taken, first_error, returned


def _refuse_fixed_batch(model: LoadedModel, x: torch.Tensor, candidates: list) -> None:
    """Say so in one line when a `.pt2` program exported for a fixed batch size B kept B in
    its ops (a reshape to [B, ...]) and so runs on batches of B alone: compressor runs other
    batch sizes (calibration, validation, parity). A program that runs them is let through."""
    fixed = program_batch(model)
    if fixed is None:
        return
    other = 1 if fixed != 1 else 2
    for _, layout in candidates:
        if _runs(model, layout(_batch(x, fixed)), fixed) and \
                not _runs(model, layout(_batch(x, other)), other):
            raise ModelError(f"the .pt2 program runs on batches of {fixed} only (it was "
                             f"exported with a fixed batch size, which its ops keep): export "
                             "it again with dynamic_shapes=({0: torch.export.Dim('batch')},)")


def _batch(x: torch.Tensor, n: int) -> torch.Tensor:
    """`n` samples of `x` (repeated where it holds fewer)."""
    return x[:n] if x.shape[0] >= n else x[:1].repeat(n, *[1] * (x.ndim - 1))


def _runs(model: LoadedModel, x: torch.Tensor, n: int) -> bool:
    """Whether the model maps the batch `x` of `n` samples to [n, classes]."""
    try:
        with torch.no_grad():
            out = model.run(x)
    except Exception:  # noqa: BLE001 - the user's model may raise anything; it did not run
        return False
    return isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[0] == n


def _refuse_dtype(model: LoadedModel, x: torch.Tensor, candidates: list) -> None:
    """Say so in one line when the model takes `x` only in the other dtype (token ids for
    floats or floats for ids), or `x` holds ids and the model has no Embedding to read them
    (whatever else is wrong with their shape); ids out of the Embedding's range likewise."""
    vocab = token_vocabulary(model)
    x = x[:LOAD_BATCH]  # the first samples tell the dtype (and a lazy dataset stays unread)
    if not x.is_floating_point() and vocab is not None and \
            (int(x.min()) < 0 or int(x.max()) >= vocab):
        raise DataError(f"the data's token ids go from {int(x.min())} to {int(x.max())} and the "
                        f"model's Embedding has {vocab:,} rows: give ids in 0..{vocab - 1}")
    other = x.long() if x.is_floating_point() else x.float()
    if (x.is_floating_point() or vocab is not None) and \
            not _try_layouts(model, other[:2], candidates)[0]:
        return
    if x.is_floating_point():
        raise DataError(f"the model takes integer token ids and the data holds "
                        f"{str(x.dtype).removeprefix('torch.')} inputs: give x as int64 ids "
                        "[N, T]")
    raise DataError(f"the data holds integer inputs ({str(x.dtype).removeprefix('torch.')}) and "
                    "the model takes float inputs: give float32 inputs (integer token ids are "
                    "for a model that starts with an Embedding)")


def token_vocabulary(model: LoadedModel) -> int | None:
    """The rows of the model's token Embedding (the ids it takes are 0..rows - 1): its first
    `nn.Embedding` (a .pt2 program's first embedding lookup); None if it has none."""
    if model.program is not None:
        for node in model.program.graph.nodes:
            if node.op == "call_function" and "embedding" in str(node.target):
                return int(node.args[0].meta["val"].shape[0])
        return None
    if not isinstance(model.run, torch.nn.Module):
        return None
    first = next((m for m in model.run.modules()
                  if getattr(m, "original_name", type(m).__name__) == "Embedding"), None)
    return None if first is None else int(first.weight.shape[0])


def _batch_shape(shape, batch: str = "N") -> str:
    return "[" + ", ".join([batch, *map(str, shape)]) + "]"


def fit_data(model: LoadedModel, splits: DataSplits, *,
             shape: tuple[int, ...] | None = None) -> tuple[DataSplits, InputLayout]:
    """`splits` with inputs in the layout the model takes (in `shape` when given, else a
    `.pt2` program's own), and that layout; labels checked against its outputs."""
    layout = find_input_layout(model, splits.train.x, shape=shape or program_shape(model))
    splits = splits.map_x(layout.reshape)
    for part in (splits.train, splits.validation, splits.test):
        if part is not None and part.y is not None:  # a lazy one's first batch; the rest as read
            check_labels(part.y[:LOAD_BATCH] if part.streamed else part.y, layout.classes,
                         source=splits.name)
    return splits, layout


def check_labels(y: torch.Tensor, classes: int, *, source: str) -> None:
    """Refuse labels a model with `classes` outputs cannot predict."""
    if int(y.max()) >= classes:
        raise DataError(f"{source}: labels go up to {int(y.max())} but the model has {classes} "
                        f"outputs: give labels 0..{classes - 1}")


def random_inputs(model: LoadedModel, *, seed: int,
                  shape: tuple[int, ...] | None = None) -> tuple[torch.Tensor, InputLayout]:
    """Inputs to check the export on when there is no data: uniform [0, 1) in `shape` (per
    sample), else the model's input shape (from a .pt2 program's signature, else the first
    Linear's input features); token ids drawn uniformly from the vocabulary for a model that
    starts with an Embedding (`shape` then gives the sequence length); with their layout."""
    given = shape or program_shape(model)
    generator = torch.Generator().manual_seed(seed)
    vocab = token_vocabulary(model)
    if vocab is not None:
        if given is None:
            raise DataError(f"the model takes token ids (its Embedding has "
                            f"{vocab:,} rows): pass --input-shape T (the sequence length) or "
                            "--data with int64 ids [N, T]")
        x = torch.randint(0, vocab, (PARITY_SAMPLES, *given), generator=generator)
        return x, find_input_layout(model, x, shape=given)
    shape = given or _first_linear_shape(model)
    x = torch.rand((PARITY_SAMPLES, *shape), generator=generator)
    try:
        layout = find_input_layout(model, x, shape=given)
    except DataError as e:
        raise DataError(f"without --data the model is checked on random inputs of shape "
                        f"{_batch_shape(shape)}, and it does not take them: pass "
                        "--input-shape (e.g. 1,28,28) or --data with inputs in the shape it "
                        "expects") from e
    return layout.reshape(x), layout


def program_shape(model: LoadedModel) -> tuple[int, ...] | None:
    """One sample's shape as a `.pt2` program declares it (None for other formats)."""
    shape = _program_input_shape(model)
    return None if shape is None else tuple(int(d) for d in shape[1:])


def program_batch(model: LoadedModel) -> int | None:
    """The batch size a `.pt2` program was exported for, where it is fixed (None where the
    batch axis is dynamic, and for other formats)."""
    shape = _program_input_shape(model)
    return shape[0] if shape is not None and isinstance(shape[0], int) else None


def _program_input_shape(model: LoadedModel) -> tuple | None:
    if model.program is None:
        return None
    names = set(model.program.graph_signature.user_inputs)
    for node in model.program.graph.nodes:
        if node.op == "placeholder" and node.name in names and "val" in node.meta:
            return tuple(node.meta["val"].shape)
    return None


def _first_linear_shape(model: LoadedModel) -> tuple[int, ...]:
    first = next((p for _, p in model.run.named_parameters() if p.ndim >= 2), None)
    if first is not None and first.ndim == 2:
        return (int(first.shape[1]),)
    raise DataError("cannot tell the model's input shape without data: pass --input-shape "
                    "(one sample's shape, e.g. 1,28,28) or --data")


def example(x: torch.Tensor) -> torch.Tensor:
    """Two samples to trace with (torch.export treats a batch of one as a fixed size), in
    their own storage: a view into a larger tensor adds symbols to the exported metadata, so
    the file would depend on how the data was held."""
    return x[:2].clone() if x.shape[0] >= 2 else x[:1].repeat(2, *[1] * (x.ndim - 1))
