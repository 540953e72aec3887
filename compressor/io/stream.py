"""A user's map-style `Dataset` read in batches instead of held in memory.

`Column` stands where a tensor of inputs or labels would: it has a length, a shape and a dtype,
and indexing it (a slice, an index tensor) loads those samples from the user's dataset and
returns a tensor. Every stage already reads its data in batches (`x[start:start + size]`), so
each holds one batch at a time; `head` and `take` give lazy views (the calibration cap, the
split's shuffle), `map` applies a per-batch function (the input layout, `--normalize`)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import DataError

Batch = tuple[torch.Tensor, torch.Tensor | None]
Check = Callable[..., object]  # `io.data.validate`: (x, y, source=) -> checked Dataset


class Items:
    """Samples `dataset[i]` (each `x` or `(x, y)`), loaded a batch at a time and checked by
    `check` as a data file's are; the last batch is kept, so its labels come without a second
    load."""

    def __init__(self, dataset: torch.utils.data.Dataset, *, source: str, check: Check) -> None:
        self.dataset, self.source, self.check = dataset, source, check
        self._last: tuple[tuple[int, ...], Batch] | None = None
        first = self._item(0)
        self.labelled = first[1] is not None
        self.sample_shape = tuple(first[0].shape)

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, index: torch.Tensor) -> Batch:
        key = tuple(index.tolist())
        if self._last is None or self._last[0] != key:
            self._last = (key, self._load(key))
        return self._last[1]

    def _item(self, i: int) -> Batch:
        try:
            item = self.dataset[i]
        except Exception as e:  # the user's dataset code may raise anything
            raise DataError(f"{self.source}[{i}] raised {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}") from e
        pair = item if isinstance(item, (tuple, list)) else (item,)
        if len(pair) not in (1, 2):
            raise DataError(f"{self.source}[{i}] has {len(pair)} parts: give x or (x, y) per "
                            "sample")
        try:
            x = torch.as_tensor(pair[0])
            y = torch.as_tensor(pair[1]) if len(pair) == 2 else None
        except (TypeError, ValueError, RuntimeError) as e:
            raise DataError(f"{self.source}[{i}] must be tensors or arrays ({e})") from e
        return x, y

    def _load(self, key: tuple[int, ...]) -> Batch:
        items = [self._item(i) for i in key]
        for i, (x, y) in zip(key, items):
            if tuple(x.shape) != self.sample_shape or (y is None) == self.labelled:
                raise DataError(
                    f"{self.source}[{i}] is {'x' if y is None else '(x, y)'} with x of shape "
                    f"{list(x.shape)}, sample 0 {'(x, y)' if self.labelled else 'x'} with "
                    f"{list(self.sample_shape)}: give samples of one shape and form (resize or "
                    "crop them to the model's input)")
        if self.labelled and any(y.numel() != 1 for _, y in items):
            i, y = next((i, y) for i, (_, y) in zip(key, items) if y.numel() != 1)
            raise DataError(f"{self.source}[{i}]'s label has shape {list(y.shape)}: "
                            "give one integer class index per sample")
        x = torch.stack([x for x, _ in items])
        y = torch.stack([y.reshape(()) for _, y in items]) if self.labelled else None
        data = self.check(x, y, source=f"{self.source}[{key[0]}..{key[-1]}]")
        return data.x, data.y


class Column:
    """The inputs (`labels=False`) or labels of `items` at `index`, through `fn` (inputs
    only): indexing returns a tensor, loaded then."""

    def __init__(self, items: Items, *, labels: bool = False, index: torch.Tensor | None = None,
                 fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.items, self.labels, self.fn = items, labels, fn
        self.index = torch.arange(len(items)) if index is None else index
        self._probe: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.index.numel())

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, int):
            return self[key:key + 1][0] if key >= 0 else self[len(self) + key]
        index = self.index[key]
        x, y = self.items.batch(index)
        if self.labels:
            return y
        return x if self.fn is None else self.fn(x)

    def _one(self) -> torch.Tensor:
        """The first sample as this column gives it (its shape and dtype)."""
        if self._probe is None:
            self._probe = self[:1]
        return self._probe

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self._one().shape[1:]))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self) -> torch.dtype:
        return self._one().dtype

    def is_floating_point(self) -> bool:
        return self._one().is_floating_point()

    def head(self, n: int) -> Column:
        return self.take(slice(0, n))

    def take(self, key) -> Column:
        """The samples `key` (a slice or index tensor) selects, still lazy."""
        return Column(self.items, labels=self.labels, index=self.index[key], fn=self.fn)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Column:
        """Inputs with `fn` applied to each batch after what is applied already."""
        before = self.fn
        return Column(self.items, index=self.index,
                      fn=fn if before is None else (lambda t: fn(before(t))))

    def joined(self, other: Column) -> Column:
        """This column's samples followed by `other`'s (views of the same samples)."""
        if other.items is not self.items or other.fn is not self.fn:
            raise ValueError("only views of one column can be joined")
        return Column(self.items, labels=self.labels, index=torch.cat([self.index, other.index]),
                      fn=self.fn)


def streamed(dataset: torch.utils.data.Dataset, *, source: str,
             check: Check) -> tuple[Column, Column | None]:
    """Inputs and labels (None if the samples have none) of a map-style dataset, lazy; each
    batch checked by `check` as it is read."""
    if len(dataset) == 0:
        raise DataError(f"{source} is empty: give at least a few samples")
    items = Items(dataset, source=source, check=check)
    return Column(items), Column(items, labels=True) if items.labelled else None


def take(values, key):
    """`values[key]` for a tensor, a lazy view for a Column."""
    return values.take(key) if isinstance(values, Column) else values[key]


def apply(values, fn: Callable[[torch.Tensor], torch.Tensor]):
    """`fn(values)` for a tensor; for a Column, `fn` applied to each batch it loads (checked on
    its first sample now, so that an error shows before any work)."""
    if not isinstance(values, Column):
        return fn(values)
    mapped = values.map(fn)
    mapped.shape  # noqa: B018 (runs fn on the first sample)
    return mapped
