"""`--data module:callable`: the callable's Dataset, DataLoader, batches or tensors become the
data, split as a file is, or as the dict of splits it returns says; a callable that cannot
be found, called or read is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from compressor.errors import DataError
from compressor.io.sources import load_data, load_eval_data
from tests.conftest import assert_refused, labelled

HERE = "tests.io.test_sources"


def _tensors(n: int = 600) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = labelled(n)
    return torch.from_numpy(x), torch.from_numpy(y)


def dataset() -> TensorDataset:
    return TensorDataset(*_tensors())


def loader() -> DataLoader:
    return DataLoader(dataset(), batch_size=64)


def batches():
    x, y = _tensors()
    return ((x[i:i + 100], y[i:i + 100]) for i in range(0, 600, 100))


def inputs() -> torch.Tensor:
    return _tensors()[0]


def splits() -> dict:
    x, y = _tensors()
    return {"train": TensorDataset(x[:400], y[:400]), "val": (x[400:500], y[400:500]),
            "test": loader_of(x[500:], y[500:])}


def train_only() -> dict:
    return {"train": dataset()}


def loader_of(x, y) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=32)


def number() -> int:
    return 3


def ragged():
    return [torch.zeros(4, 20), torch.zeros(4, 20), torch.zeros(4, 21)]


def odd_keys() -> dict:
    return {"training": dataset()}


def mixed_splits() -> dict:
    x, y = _tensors()
    return {"train": (x, y), "val": x[:50]}


def fails():
    raise OSError("no such folder: /data/images")


@pytest.mark.parametrize("name", ["dataset", "loader", "batches"])
def test_every_form_gives_the_same_samples_split_as_a_file(name):
    data = load_data(f"{HERE}:{name}", seed=0)
    reference = load_data(f"{HERE}:dataset", seed=0)
    assert data.name == f"{HERE}:{name}"
    assert (len(data.train), len(data.validation), len(data.test)) == (480, 60, 60)
    assert data.train.streamed == (name != "batches")  # a Dataset is read a batch at a time
    assert torch.equal(data.train.x[:], reference.train.x[:])
    assert torch.equal(data.test.y[:], reference.test.y[:])


def test_inputs_alone_are_unlabelled():
    data = load_data(f"{HERE}:inputs", seed=0)
    assert data.train.y is None and data.test is None and len(data.validation) == 60


def test_a_dict_keeps_the_users_splits():
    data = load_data(f"{HERE}:splits", seed=0)
    x, y = _tensors()
    assert torch.equal(data.train.x[:], x[:400]) and torch.equal(data.validation.y, y[400:500])
    assert torch.equal(data.test.x[:], x[500:])


def test_a_dict_without_validation_has_one_cut_from_train():
    data = load_data(f"{HERE}:train_only", seed=0)
    assert len(data.validation) == 60 and len(data.train) == 540 and data.test is None


def test_check_evaluates_on_the_test_split_or_every_sample():
    test, about = load_eval_data(f"{HERE}:splits")
    assert len(test) == 100 and "['test']" in about
    assert len(load_eval_data(f"{HERE}:loader")[0]) == 600


@pytest.mark.parametrize("name, says", [
    ("nowhere", "cannot find --data"),
    ("number", "is a int: give a tensor, (x, y), a Dataset"),
    ("ragged", "samples of different shapes ([20], [21])"),
    ("odd_keys", "keys ['training']: give train"),
    ("mixed_splits", "the validation split's samples have shape [20] and no labels"),
    ("fails", "failed (no such folder: /data/images)"),
])
def test_a_callable_that_cannot_give_data_is_refused_in_one_line(name, says):
    with pytest.raises(DataError) as refused:
        load_data(f"{HERE}:{name}", seed=0)
    assert says in str(refused.value) and "\n" not in str(refused.value)


def test_compress_reads_a_callable_and_names_it(run_cli, tiny_files):
    out = tiny_files["dir"] / "out.onnx"
    result = run_cli(tiny_files["model"], "--arch", "tests.nets:tiny", "--target", "0.5",
                     "--data", f"{HERE}:loader", "--epochs", "0", "-o", out, "--no-latency",
                     "--quiet")
    assert result.code == 0, result.err
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["source"]["data"] == f"{HERE}:loader"
    assert report["accuracy"]["before"] is not None
    assert_refused(run_cli, [tiny_files["model"], "--arch", "tests.nets:tiny", "--target",
                             "0.5", "--data", f"{HERE}:number", "--quiet"], tiny_files["dir"])


def test_a_file_named_like_a_callable_is_read_as_a_file(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"x": torch.rand(30, 20)}, tmp_path / "mod:fn")
    with pytest.raises(DataError, match="unknown extension"):
        load_data("mod:fn", seed=0)
