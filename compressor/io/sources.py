"""Data from Python: a `Dataset`, a `DataLoader`, an iterable of batches, tensors, or what a
`module:callable` returns (`--data module:callable`), as the in-memory `Dataset` the pipeline
takes. A dict of them per split (`train`, `val`/`validation`, `test`) keeps the user's split."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from .callables import call, looks_like_spec
from .data import Dataset, DataSplits, load_fashion_mnist, read_file, split, validate
from .stream import streamed

SPLITS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}


def load_data(spec: str, *, seed: int = 0) -> DataSplits:
    """Load `fashion-mnist`, a `.npz`/`.npy`/`.pt` file or what `module:callable` returns,
    and split it.

    Args:
        spec: `fashion-mnist`, a path to a data file, or `module:callable`.
        seed: seed of the shuffle that splits a user's data.

    Returns:
        The splits; user data is split 80/10/10 (train/validation/test) when labelled,
        90/10 (train/validation) otherwise, unless a callable returns its own splits.
    """
    if spec == "fashion-mnist":
        return load_fashion_mnist()
    if _is_callable(spec):
        return from_callable(spec, seed=seed)
    path = Path(spec)
    return split(read_file(path), name=path.name, seed=seed)


def load_eval_data(spec: str) -> tuple[Dataset, str]:
    """Data to evaluate a finished model on: Fashion-MNIST's official test set, every sample
    of a data file or of what a callable returns (its `test` split if it returns splits).

    Returns:
        The data and a description for reports (name and sample count).
    """
    if spec == "fashion-mnist":
        data, name = load_fashion_mnist().test, "fashion-mnist test"
    elif _is_callable(spec):
        returned = call(spec, option="--data", error=DataError, example="mydata:calibration")
        if isinstance(returned, dict):
            key = next((k for k in ("test", "val", "validation") if k in returned), None)
            if key is None:
                raise DataError(f"--data {spec}() returned splits {sorted(returned)} without "
                                "test or val: give one to evaluate on")
            returned, spec = returned[key], f"{spec}()[{key!r}]"
        data, name = as_dataset(returned, source=spec), spec
    else:
        data, name = read_file(Path(spec)), Path(spec).name
    return data, f"{name} ({len(data):,} samples)"


def _is_callable(spec: str) -> bool:
    """`module:callable`, unless a file of that name exists."""
    return looks_like_spec(spec) and not Path(spec).exists()


def from_callable(spec: str, *, seed: int) -> DataSplits:
    """The data `module:callable` returns, split as a file is (80/10/10 with labels, 90/10
    without) or as its dict of splits says (a validation split cut from `train` if missing)."""
    returned = call(spec, option="--data", error=DataError, example="mydata:calibration")
    if not isinstance(returned, dict):
        return split(as_dataset(returned, source=f"{spec}()"), name=spec, seed=seed)
    unknown = set(returned) - set(SPLITS)
    if unknown or "train" not in returned:
        raise DataError(f"--data {spec}() returned a dict with keys {sorted(map(str, returned))}: "
                        "give train and optionally val (or validation) and test")
    parts = {SPLITS[k]: as_dataset(v, source=f"{spec}()[{k!r}]") for k, v in returned.items()}
    if "validation" not in parts:
        cut = split(parts["train"], name=spec, seed=seed)
        parts["train"], parts["validation"] = _joined(cut.train, cut.test), cut.validation
    for name, part in parts.items():
        if (part.y is None) != (parts["train"].y is None) or \
                part.x.shape[1:] != parts["train"].x.shape[1:]:
            raise DataError(f"--data {spec}(): the {name} split's samples have shape "
                            f"{list(part.x.shape[1:])}{' and no labels' * (part.y is None)}, "
                            f"the train split's {list(parts['train'].x.shape[1:])}"
                            f"{' and no labels' * (parts['train'].y is None)}: give every split "
                            "in the same form")
    return DataSplits(spec, parts["train"], parts["validation"], parts.get("test"))


def _joined(a: Dataset, b: Dataset | None) -> Dataset:
    if b is None:
        return a
    if a.streamed:
        return Dataset(a.x.joined(b.x), None if a.y is None else a.y.joined(b.y))
    return Dataset(torch.cat([a.x, b.x]), None if a.y is None else torch.cat([a.y, b.y]))


def as_dataset(data: Any, *, source: str) -> Dataset:
    """`data` (tensor, (x, y), Dataset, DataLoader or an iterable of x or (x, y) batches)
    checked. A map-style `Dataset` (or a `DataLoader` that batches one with the default
    collation) is streamed: read a batch at a time, never held whole; the others are held in
    memory."""
    if isinstance(data, torch.utils.data.DataLoader) and _map_style(data.dataset) and \
            data.collate_fn is torch.utils.data.default_collate:
        data = data.dataset
    if _map_style(data) and not isinstance(data, Dataset):
        return Dataset(*streamed(data, source=source, check=validate))
    x, y = as_tensors(data, source=source)
    return validate(x, y, source=source)


def _map_style(data: Any) -> bool:
    return isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__") and \
        not isinstance(data, torch.utils.data.IterableDataset)


def as_tensors(data: Any, *, source: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inputs and labels (or None) of any form `as_dataset` takes, in memory."""
    if isinstance(data, torch.Tensor):
        return data, None
    if isinstance(data, Dataset):
        if data.streamed:
            return data.x[:], None if data.y is None else data.y[:]
        return data.x, data.y
    if isinstance(data, (tuple, list)) and len(data) == 2 and \
            all(isinstance(t, torch.Tensor) for t in data):
        return data[0], data[1]
    if _map_style(data):
        return _stack([data[i] for i in range(len(data))], f"{source}'s items", batched=False)
    if isinstance(data, (torch.utils.data.DataLoader, Iterable)) and \
            not isinstance(data, (str, bytes, dict)):
        return _stack(list(data), f"{source}'s batches", batched=True)
    raise DataError(f"{source} is a {type(data).__name__}: give a tensor, (x, y), a Dataset, a "
                    "DataLoader or an iterable of x or (x, y) batches")


def _stack(items: list, what: str, *, batched: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inputs (and labels) of a list of items or batches: each `x` or `(x, y)`."""
    if not items:
        raise DataError(f"{what} are empty: give at least a few samples")
    pairs = [item if isinstance(item, (tuple, list)) else (item,) for item in items]
    if any(len(p) not in (1, 2) for p in pairs) or len({len(p) for p in pairs}) != 1:
        raise DataError(f"{what} must each be x or (x, y)")
    try:
        xs = [torch.as_tensor(p[0]) for p in pairs]
        ys = [torch.as_tensor(p[1]) for p in pairs] if len(pairs[0]) == 2 else None
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataError(f"{what} must be tensors or arrays ({e})") from e
    shapes = {tuple(x.shape[batched:]) for x in xs}
    if len(shapes) != 1 or (batched and any(x.ndim < 1 for x in xs)):
        raise DataError(f"{what} have samples of different shapes "
                        f"({', '.join(str(list(s)) for s in sorted(shapes)[:3])}): give samples "
                        "of one shape (resize or crop them to the model's input)")
    join = torch.cat if batched else torch.stack
    return join(xs), None if ys is None else join(ys)
