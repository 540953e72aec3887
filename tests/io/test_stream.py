"""A map-style Dataset from `--data module:callable` (or the API) is read a batch at a time:
nothing is loaded when it is split, the calibration cap and the input layout stay lazy, every
stage reads its batches, and a run on it prunes exactly as a run on the same samples held in
memory. A bad sample is refused in one line when it is read."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import TensorDataset

from compressor.api import compress
from compressor.io.sources import load_data
from compressor.io.stream import Column
from tests.conftest import labelled
from tests.nets import tiny

HERE = "tests.io.test_stream"


class Counted(TorchDataset):
    """`labelled(n)` as a map-style dataset that counts the samples it is asked for."""

    def __init__(self, n: int = 600, bad: int | None = None, label: int | None = None) -> None:
        x, y = labelled(n)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.bad, self.label, self.reads = bad, label, 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        self.reads += 1
        if i == self.bad:
            return self.x[i, :10], self.y[i]
        return self.x[i], self.y[i] if i != self.label else torch.tensor(9)


LAST: list[Counted] = []


def counted() -> Counted:
    LAST[:] = [Counted()]
    return LAST[0]


def one_bad_shape() -> Counted:
    return Counted(bad=455)


def one_bad_label() -> Counted:
    return Counted(label=455)


def test_splitting_reads_nothing_and_reading_a_batch_reads_those_samples():
    data = load_data(f"{HERE}:counted", seed=0)
    source = LAST[0]
    assert isinstance(data.train.x, Column) and data.train.streamed
    assert (len(data.train), len(data.validation), len(data.test)) == (480, 60, 60)
    before = source.reads  # the first sample, read once for its shape and form
    calib = data.train.head(100).x
    assert source.reads == before
    assert calib.shape == (100, 20) and source.reads == before + 1  # its first sample
    batch = calib[10:42]
    assert source.reads == before + 1 + 32
    in_memory = load_data(f"{HERE}:in_memory", seed=0)
    assert torch.equal(batch, in_memory.train.x[10:42])
    assert torch.equal(data.train.y[10:42], in_memory.train.y[10:42])
    assert torch.equal(data.test.labels(), in_memory.test.y)


def in_memory():
    x, y = labelled(600)
    return torch.from_numpy(x), torch.from_numpy(y)


def test_a_streamed_run_prunes_as_a_run_on_the_same_samples_in_memory():
    x, y = in_memory()
    common = {"epochs": 1, "cycles": 2, "latency": False, "seed": 0}
    streamed = compress(tiny(), 0.5, data=TensorDataset(x, y), **common)
    held = compress(tiny(), 0.5, data=(x, y), **common)
    assert streamed.report.kept == held.report.kept
    assert streamed.report.accuracy.after == held.report.accuracy.after


@pytest.mark.parametrize("name, says", [
    ("one_bad_shape", "[455] is (x, y) with x of shape [10], sample 0 (x, y) with [20]"),
    ("one_bad_label", "labels go up to 9 but the model has 4 outputs"),
])
def test_a_bad_sample_is_refused_in_one_line_when_read(run_cli, tiny_files, name, says):
    result = run_cli(tiny_files["model"], "--arch", "tests.nets:tiny", "--target", "0.5",
                     "--data", f"{HERE}:{name}", "--epochs", "1", "--no-latency", "--quiet",
                     "-o", tiny_files["dir"] / "out.onnx")
    assert result.code == 2, result.err
    assert says in result.err and result.err.count("\n") == 1
    assert not (tiny_files["dir"] / "out.onnx").exists()
