"""Models that read int64 token ids through an Embedding: integer data is calibrated on as ids,
the exported file takes int64 ids and is checked on them, a run without data draws ids from the
vocabulary, and ids given to a float model (or floats to an id model) are refused in one line
naming the dtype the model takes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor.io.sources import load_data
from tests.conftest import assert_refused
from tests.helpers import save_model

VOCAB, LENGTH = 12, 10


class Words(nn.Module):
    """Embedding + positions, one pre-norm block (2 heads, feed-forward 32), mean, Linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, 16)
        self.position = nn.Parameter(0.1 * torch.randn(1, LENGTH, 16))
        self.norm1, self.norm2 = nn.LayerNorm(16), nn.LayerNorm(16)
        self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.position
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, 2, c // 2).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
                          .reshape(b, t, c))
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return self.head(x.mean(1))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Words as a state_dict, and ids [N, 10] labelled by which of tokens 1, 2, 3 is most
    frequent (int64 .npz, int32 .npy, the same ids as float32)."""
    g = np.random.default_rng(0)
    ids = g.integers(0, VOCAB, (400, LENGTH))
    y = np.stack([(ids == t).sum(1) for t in (1, 2, 3)], 1).argmax(1)
    np.savez(tmp_path / "ids.npz", x=ids, y=y)
    np.save(tmp_path / "ids32.npy", ids.astype(np.int32))
    np.savez(tmp_path / "floats.npz", x=ids.astype(np.float32), y=y)
    np.savez(tmp_path / "far.npz", x=ids + VOCAB, y=y)
    torch.save(Words().state_dict(), tmp_path / "words.pt")
    return {"dir": tmp_path, "model": tmp_path / "words.pt", **{
        p.stem: p for p in tmp_path.iterdir() if p.suffix in (".npz", ".npy")}}


ARCH = ("--arch", "tests.cli.test_token_ids:Words")


def _compress(run_cli, files, data: str | None, *extra) -> tuple[dict, Path]:
    out = files["dir"] / "out.onnx"
    given = ("--data", files[data]) if data else ()
    result = run_cli(files["model"], *ARCH, "--target", "0.5", "--epochs", "0", *given, "-o",
                     out, "--no-latency", "--quiet", *extra)
    assert result.code == 0, result.err
    return json.loads(out.with_suffix(".json").read_text()), out


@pytest.mark.parametrize("data", ["ids", "ids32"])
def test_integer_ids_calibrate_and_the_file_takes_int64_ids(run_cli, files, data):
    report, out = _compress(run_cli, files, data, "--of", "flops")
    assert report["source"]["input"]["dtype"] == "int64"
    assert report["parity"]["max_abs_diff"] < 1e-4
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(int64)"
    ids = np.load(files["ids"])["x"][:5]
    assert sess.run(None, {sess.get_inputs()[0].name: ids})[0].shape == (5, 3)
    assert report["size"]["flops_after"] < report["size"]["flops_before"]


def test_without_data_ids_are_drawn_from_the_vocabulary_in_the_length_given(run_cli, files):
    args = [files["model"], *ARCH, "--target", "0.5", "--no-latency", "--quiet"]
    assert_refused(run_cli, args, files["dir"])
    assert "Embedding has 12 rows" in run_cli(*args).err and "--input-shape T" in \
        run_cli(*args).err
    report, _ = _compress(run_cli, files, None, "--input-shape", str(LENGTH))
    assert report["source"]["input"]["dtype"] == "int64"
    assert report["parity"]["max_abs_diff"] < 1e-4


def test_a_program_file_takes_ids_in_its_own_length(run_cli, files):
    program = save_model(Words(), files["dir"] / "words.pt2", "pt2",
                         torch.zeros(2, LENGTH, dtype=torch.int64))
    out = files["dir"] / "p.onnx"
    result = run_cli(program, "--target", "0.5", "-o", out, "--no-latency", "--quiet")
    assert result.code == 0, result.err
    assert json.loads(out.with_suffix(".json").read_text())["source"]["input"]["dtype"] == \
        "int64"


@pytest.mark.parametrize("data, extra, says", [
    ("floats", (), "takes integer token ids and the data holds float32"),
    ("far", (), "token ids go from 12 to 23 and the model's Embedding has 12 rows"),
    ("ids", ("--normalize", "0.5,0.2"), "holds integer token ids: drop --normalize"),
])
def test_data_the_id_model_cannot_take_is_refused_in_one_line(run_cli, files, data, extra, says):
    args = [files["model"], *ARCH, "--target", "0.5", "--data", files[data], *extra,
            "--no-latency", "--quiet"]
    assert_refused(run_cli, args, files["dir"])
    assert says in run_cli(*args).err


@pytest.mark.parametrize("width", [LENGTH, LENGTH + 3])
def test_ids_given_to_a_float_model_are_refused_naming_its_dtype(run_cli, files, tmp_path,
                                                                  width):
    """Also where the ids' length is not the model's input width either: the dtype is
    named first, not the error torch raised on the ids as given."""
    mlp = nn.Sequential(nn.Linear(width, 8), nn.ReLU(), nn.Linear(8, 3))
    model = save_model(mlp, tmp_path / "mlp.pt", "pickle", torch.zeros(2, width))
    args = [model, "--trust-pickle", "--target", "0.5", "--data", files["ids"], "--quiet"]
    assert_refused(run_cli, args, files["dir"])
    assert "data holds integer inputs (int64) and the model takes float inputs" in \
        run_cli(*args).err


def test_check_and_bench_feed_the_file_ids(run_cli, files):
    _, out = _compress(run_cli, files, "ids")
    check = run_cli("check", out, "--data", files["ids"], "--min-accuracy", "0")
    assert check.code == 0, check.err
    wrong = run_cli("check", out, "--data", files["floats"], "--min-accuracy", "0")
    assert wrong.code == 2 and "takes token ids (int64)" in wrong.err
    bench = run_cli("bench", out, "--batch", "1", "--seconds", "0.05", "--no-memory")
    assert bench.code == 0, bench.err


def test_the_example_id_data_are_fashion_mnists_splits_as_ids():
    data = load_data("models.transformer:fashion_mnist_ids", seed=0)
    images = load_data("fashion-mnist", seed=0)
    assert (len(data.train), len(data.validation), len(data.test)) == \
        (len(images.train), len(images.validation), len(images.test))
    assert data.train.x.dtype == torch.int64 and data.train.x.shape[1:] == (196,)
    assert int(data.train.x.min()) == 0 and int(data.train.x.max()) == 15
    assert torch.equal(data.test.y, images.test.y)
