"""Calibration, training and evaluation data: built-in Fashion-MNIST or the user's file."""

from __future__ import annotations

import functools
import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, first_line
from .files import zip_members
from .stream import Column, take

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "COMPRESSOR_FASHION_MNIST"
LOAD_BATCH = 1024  # samples per read of a lazy dataset where no stage sets the batch
VALIDATION_SIZE = 6_000  # the paper: first 6,000 training images are the validation split
_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}


@dataclass(frozen=True)
class Dataset:
    """Inputs (float32, or int64 token ids) and optional integer class labels: tensors, or
    `Column`s that load a user's `Dataset` a batch at a time (`io.stream`)."""

    x: torch.Tensor | Column
    y: torch.Tensor | Column | None = None

    def __len__(self) -> int:
        return len(self.x)  # a Column's length without reading a sample

    @property
    def streamed(self) -> bool:
        return isinstance(self.x, Column)

    def head(self, n: int) -> Dataset:
        return self.take(slice(0, n))

    def take(self, key) -> Dataset:
        """The samples `key` (a slice or index tensor) selects; lazy if this is."""
        return Dataset(take(self.x, key), None if self.y is None else take(self.y, key))

    def with_x(self, x: torch.Tensor | Column) -> Dataset:
        return Dataset(x, self.y)

    def map_x(self, fn) -> Dataset:
        """Inputs `fn(x)`; applied to each batch as it is loaded if this is lazy."""
        return self.with_x(self.x.map(fn) if isinstance(self.x, Column) else fn(self.x))

    def labels(self) -> torch.Tensor | None:
        """Every label as one tensor (for a lazy dataset, read batch by batch)."""
        if not isinstance(self.y, Column):
            return self.y
        return torch.cat([y for _, y in self.batches(LOAD_BATCH)])

    def batches(self, size: int):
        """(x, y) tensors of consecutive samples, `size` at a time (y None without labels)."""
        for start in range(0, len(self), size):
            yield self.x[start:start + size], \
                None if self.y is None else self.y[start:start + size]


@dataclass(frozen=True)
class DataSplits:
    """Disjoint splits: `train` is calibrated and fine-tuned on, `validation` drives early
    stopping and the ONNX parity check, `test` (labelled data only) measures accuracy."""

    name: str
    train: Dataset
    validation: Dataset
    test: Dataset | None

    @property
    def labelled(self) -> bool:
        return self.train.y is not None

    def map_x(self, fn) -> DataSplits:
        test = None if self.test is None else self.test.map_x(fn)
        return DataSplits(self.name, self.train.map_x(fn), self.validation.map_x(fn), test)


def normalized(splits: DataSplits, mean: tuple[float, ...],
               std: tuple[float, ...]) -> DataSplits:
    """Inputs `(x - mean) / std`, one value each for every sample or per channel (axis 1)."""
    x = splits.train.x
    if not x.is_floating_point():
        raise DataError(f"--normalize scales float inputs and {splits.name} holds integer token "
                        "ids: drop --normalize")
    if len(mean) > 1 and (x.ndim < 3 or x.shape[1] != len(mean)):
        raise DataError(f"--normalize gives {len(mean)} channels but {splits.name}'s samples "
                        f"have shape {list(x.shape[1:])} (channels on axis 1): give one MEAN,STD "
                        f"or {x.shape[1] if x.ndim > 2 else 1} of each")
    shape = (1, len(mean)) + (1,) * (x.ndim - 2) if len(mean) > 1 else ()
    m, s = torch.tensor(mean).reshape(shape), torch.tensor(std).reshape(shape)
    return splits.map_x(lambda t: (t - m) / s)


def read_file(path: Path) -> Dataset:
    spec = str(path)
    if not path.exists():
        raise DataError(f"data file {spec} does not exist: pass an existing .npz/.npy/.pt file "
                        "or --data fashion-mnist")
    if path.is_dir():
        raise DataError(f"data path {spec} is a directory: pass a .npz, .npy or .pt file")
    readers = {".npz": _read_npz, ".npy": _read_npy, ".pt": _read_pt}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"data file {spec} has an unknown extension: use .npz (x, optional y), "
                        ".npy (inputs) or .pt (a tensor or a dict with x and optional y)")
    x, y = reader(path)
    return validate(x, y, source=spec)


def validate(x: object, y: object, *, source: str) -> Dataset:
    """Check shapes, dtypes and values; return float32 inputs (bytes, uint8, as the floats
    0..255: image files), int64 for other integers (token ids; `io.inputs` refuses them for a
    model that takes floats) and int64 labels."""
    x = _as_tensor(x, source, "inputs")
    if x.ndim < 2 or x.shape[0] == 0:
        raise DataError(f"{source}: inputs must have shape [N, ...] with N > 0, got {list(x.shape)}")
    if x.is_complex() or x.dtype == torch.bool:
        raise DataError(f"{source}: inputs must be real numbers, got {x.dtype}")
    if x.is_floating_point() or x.dtype == torch.uint8:
        x = x.to(torch.float32)
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise DataError(f"{source}: inputs contain {bad} NaN/Inf values: clean or impute "
                            "them first")
    else:
        x = x.to(torch.int64)
    if y is None:
        return Dataset(x)
    y = _as_tensor(y, source, "labels")
    if y.is_floating_point() and bool((y == y.round()).all()) and bool(torch.isfinite(y).all()):
        y = y.round()
    elif y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise DataError(f"{source}: labels must be integer class indices, got {y.dtype}")
    y = y.to(torch.int64).reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y.to(torch.int64)
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{source}: labels must have shape [{x.shape[0]}] to match the inputs, "
                        f"got {list(y.shape)}")
    if int(y.min()) < 0:
        raise DataError(f"{source}: labels must be class indices >= 0, found {int(y.min())}")
    return Dataset(x, y)


def split(data: Dataset, *, name: str, seed: int) -> DataSplits:
    """Shuffle once with `seed`, then cut train/validation(/test)."""
    n = len(data)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    data = data.take(order)
    n_val = max(1, n // 10)
    n_test = n_val if data.y is not None else 0
    if n - n_val - n_test < 1:
        raise DataError(f"{name}: {n} samples are too few to calibrate and verify: "
                        "give at least 3 (better: thousands)")
    test = data.take(slice(n_val, n_val + n_test)) if n_test else None
    return DataSplits(name, data.take(slice(n_val + n_test, n)), data.head(n_val), test)


def fashion_mnist_dir() -> Path:
    """Where the idx files are: $COMPRESSOR_FASHION_MNIST, else Debian's location."""
    return Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)


def load_fashion_mnist() -> DataSplits:
    """Fashion-MNIST as [N, 1, 28, 28] floats in [0, 1]; the first 6,000 training images are
    the validation split (as in the paper); the official test set is used only for accuracy."""
    root = fashion_mnist_dir()
    missing = [f for f in _FILES.values() if not (root / f).is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST not found in {root} (missing {missing[0]}): install it with "
            f"'apt-get install dataset-fashion-mnist' or set {FASHION_MNIST_ENV} to a directory "
            "with the idx .gz files")
    arrays = {key: _read_idx(root / f) for key, f in _FILES.items()}
    train_x = torch.from_numpy(arrays["train_x"].astype(np.float32)).div_(255).unsqueeze(1)
    test_x = torch.from_numpy(arrays["test_x"].astype(np.float32)).div_(255).unsqueeze(1)
    train_y = torch.from_numpy(arrays["train_y"].astype(np.int64))
    test_y = torch.from_numpy(arrays["test_y"].astype(np.int64))
    return DataSplits(
        "fashion-mnist",
        train=Dataset(train_x[VALIDATION_SIZE:], train_y[VALIDATION_SIZE:]),
        validation=Dataset(train_x[:VALIDATION_SIZE], train_y[:VALIDATION_SIZE]),
        test=Dataset(test_x, test_y),
    )


def _read_idx(path: Path) -> np.ndarray:
    """The array in an idx .gz file; decoded once per process while the file is unchanged
    (the caller must not modify it)."""
    try:
        stat = path.stat()
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror}): reinstall "
                        "dataset-fashion-mnist") from e
    return _decode_idx(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _decode_idx(name: str, mtime_ns: int, size: int) -> np.ndarray:
    path = Path(name)
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path} is not a readable gzip idx file ({e}): reinstall "
                        "dataset-fashion-mnist") from e
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte idx file: reinstall dataset-fashion-mnist")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated ({body.size} of {int(np.prod(dims))} bytes): "
                        "reinstall dataset-fashion-mnist")
    array = body.reshape(dims).copy()  # writable, so torch can own it
    array.flags.writeable = False  # shared by every caller
    return array


def _read_npz(path: Path) -> tuple[object, object]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz.files:
                raise DataError(f"{path} has no array 'x' (found {npz.files}): save inputs as x "
                                "and optional labels as y, e.g. np.savez(path, x=x, y=y)")
            return npz["x"], npz["y"] if "y" in npz.files else None
    except DataError:
        raise
    except Exception as e:  # numpy's parsers raise many types for damaged files
        raise DataError(f"{path} is not a readable .npz file ({first_line(e)}): write it with "
                        "np.savez") from e


def _read_npy(path: Path) -> tuple[object, object]:
    try:
        return np.load(path, allow_pickle=False), None
    except Exception as e:  # numpy's parsers raise many types for damaged files
        raise DataError(f"{path} is not a readable .npy array ({first_line(e)}): write it with "
                        "np.save") from e


def _read_pt(path: Path) -> tuple[object, object]:
    zip_members(path, DataError, fix="save the data again with torch.save")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise DataError(f"{path} holds Python objects besides tensors, and loading them could "
                        "run code from the file (data loads with weights_only=True): save only "
                        "a tensor or a dict {'x': ..., 'y': ...}") from e
    except Exception as e:  # the unpickler raises many types for damaged files
        raise DataError(f"{path} is not a tensor file loadable with weights_only=True "
                        f"({first_line(e)}): save a tensor or a dict {{'x': ..., 'y': ...}} "
                        "with torch.save") from e
    if isinstance(obj, torch.Tensor):
        return obj, None
    if isinstance(obj, dict) and "x" in obj:
        return obj["x"], obj.get("y")
    raise DataError(f"{path} holds a {type(obj).__name__}: save a tensor or a dict with keys "
                    "'x' and optional 'y'")


def _as_tensor(value: object, source: str, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return torch.from_numpy(np.ascontiguousarray(value))
    raise DataError(f"{source}: {what} must be a numeric array, got "
                    f"{getattr(value, 'dtype', type(value).__name__)}")
