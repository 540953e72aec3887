from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from compressor.errors import DataError
from compressor.io.data import FASHION_MNIST_ENV, VALIDATION_SIZE, load_fashion_mnist
from compressor.io.sources import load_data


def test_npz_with_labels_splits_into_disjoint_train_validation_test(tmp_path):
    x = np.arange(200 * 3, dtype=np.float32).reshape(200, 3)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(200) % 5)
    splits = load_data(str(tmp_path / "d.npz"))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (160, 20, 20)
    rows = torch.cat([splits.train.x, splits.validation.x, splits.test.x])[:, 0].tolist()
    assert sorted(rows) == x[:, 0].tolist()
    assert splits.labelled and splits.train.y.dtype == torch.int64


def test_npy_and_pt_inputs_without_labels(tmp_path):
    np.save(tmp_path / "d.npy", np.ones((50, 4), dtype=np.float64))
    torch.save(torch.ones(50, 4), tmp_path / "t.pt")
    torch.save({"x": torch.ones(50, 4), "y": torch.zeros(50, dtype=torch.long)}, tmp_path / "xy.pt")
    for name in ("d.npy", "t.pt"):
        splits = load_data(str(tmp_path / name))
        assert not splits.labelled and splits.test is None
        assert splits.train.x.dtype == torch.float32 and len(splits.validation) == 5
    assert load_data(str(tmp_path / "xy.pt")).labelled


@pytest.mark.parametrize("x, y, message", [
    (np.array([[1.0, np.nan], [0.0, 1.0]] * 5), None, "NaN/Inf"),
    (np.array([[1.0, np.inf], [0.0, 1.0]] * 5), None, "NaN/Inf"),
    (np.zeros((0, 3)), None, "N > 0"),
    (np.zeros((1, 3)), None, "too few"),
    (np.zeros((2, 3)), np.zeros(2), "too few"),
    (np.zeros(10), None, r"shape \[N, ...\]"),
    (np.zeros((10, 3)), np.zeros(9), "labels must have shape"),
    (np.zeros((10, 3)), -np.ones(10), ">= 0"),
    (np.zeros((10, 3)), np.full(10, 0.5), "integer class indices"),
])
def test_bad_arrays_are_clear_errors(tmp_path, x, y, message):
    path = tmp_path / "d.npz"
    np.savez(path, **({"x": x} if y is None else {"x": x, "y": y}))
    with pytest.raises(DataError, match=message):
        load_data(str(path))


def test_unreadable_files_are_clear_errors(tmp_path):
    cases = {"d.csv": "unknown extension", "d.npz": "not a readable .npz",
             "d.npy": "not a readable .npy", "d.pt": "weights_only=True"}
    for name, message in cases.items():
        (tmp_path / name).write_bytes(b"garbage")
        with pytest.raises(DataError, match=message):
            load_data(str(tmp_path / name))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="not a readable .npy"):
        load_data(str(tmp_path / "obj.npy"))
    np.savez(tmp_path / "nox.npz", inputs=np.zeros((4, 2)))
    with pytest.raises(DataError, match="no array 'x'"):
        load_data(str(tmp_path / "nox.npz"))
    with pytest.raises(DataError, match="does not exist"):
        load_data(str(tmp_path / "missing.npz"))


def write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_fashion_mnist_reads_idx_files_from_the_env_directory(tmp_path, monkeypatch):
    n_train = VALIDATION_SIZE + 10
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.full((n_train, 28, 28), 255))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(n_train) % 10)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((7, 28, 28)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(7))
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    splits = load_fashion_mnist()
    assert splits.train.x.shape == (10, 1, 28, 28) and float(splits.train.x.max()) == 1.0
    assert len(splits.validation) == VALIDATION_SIZE
    assert splits.test.y.tolist() == list(range(7))


def test_missing_or_truncated_fashion_mnist_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1])))
    with pytest.raises(DataError, match="truncated"):
        load_fashion_mnist()


def test_the_installed_fashion_mnist_has_the_official_sizes():
    splits = load_fashion_mnist()
    assert splits.train.x.shape == (54_000, 1, 28, 28)
    assert len(splits.validation) == 6_000 and len(splits.test) == 10_000
    assert 0.0 <= float(splits.test.x.min()) and float(splits.test.x.max()) <= 1.0
