"""Random and mutated bytes fed to every loader: the only acceptable failure is a clean
CompressorError (one line at the CLI), never another exception type or a crash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compressor.errors import DataError, ModelError
from compressor.export.to_onnx import to_onnx
from compressor.io.load import load_model
from compressor.io.sources import load_data
from compressor.measure.onnx_file import flops_per_sample, load_onnx, parameter_count
from tests.conftest import labelled
from tests.helpers import graph_of, save_model
from tests.nets import tiny

HEADERS = [b"", b"PK\x03\x04", b"PK\x05\x06", b"\x80\x02", b"\x93NUMPY\x01\x00", b"\x08\x07\x12"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, bytes]:
    """One valid file of every kind the loaders read."""
    d = tmp_path_factory.mktemp("sources")
    net, x = tiny().eval(), torch.randn(2, 20)
    for kind, name in (("ts", "m.ts"), ("pt2", "m.pt2"), ("sd", "m.pt")):
        save_model(net, d / name, kind, x)
    inputs, labels = labelled(50)
    np.savez(d / "d.npz", x=inputs, y=labels)
    np.save(d / "d.npy", inputs)
    torch.save({"x": torch.from_numpy(inputs), "y": torch.from_numpy(labels)}, d / "d.pt")
    found = {p.name: p.read_bytes() for p in d.iterdir()}
    found["m.onnx"] = to_onnx(graph_of(net, x), x)
    return found


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        out[position % len(out)] = value
    return bytes(out[:cut])


EDITS = st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 255)), min_size=1, max_size=8)
CUTS = st.none() | st.integers(1, 4096)


def load_any_model(path: Path) -> None:
    arch = "tests.nets:tiny" if path.suffix == ".pt" else None
    try:
        load_model(path, arch=arch).run(torch.randn(2, 20))
    except ModelError:
        pass


def load_any_data(path: Path) -> None:
    try:
        splits = load_data(str(path))
    except DataError:
        return
    assert torch.isfinite(splits.train.x).all()  # what loads is validated


def load_any_onnx(path: Path) -> None:
    try:
        model = load_onnx(path)
    except ModelError:
        return
    assert parameter_count(model.proto) >= 0 and flops_per_sample(model.proto)[0] >= 0


LOADERS = {"m.ts": load_any_model, "m.pt2": load_any_model, "m.pt": load_any_model,
           "d.npz": load_any_data, "d.npy": load_any_data, "d.pt": load_any_data,
           "m.onnx": load_any_onnx}


@settings(max_examples=700)
@given(kind=st.sampled_from(sorted(LOADERS)), edits=EDITS, cut=CUTS)
def test_mutated_files_fail_cleanly(sources, tmp_path, kind, edits, cut):
    path = tmp_path / kind
    path.write_bytes(mutate(sources[kind], edits, cut))
    LOADERS[kind](path)


@settings(max_examples=200)
@given(head=st.sampled_from(HEADERS), body=st.binary(max_size=2048),
       suffix=st.sampled_from([".pt", ".pt2", ".ts", ".npz", ".npy", ".onnx"]))
def test_random_bytes_fail_cleanly_in_every_loader(tmp_path, head, body, suffix):
    path = tmp_path / f"f{suffix}"
    path.write_bytes(head + body)
    if suffix in (".npz", ".npy", ".pt"):
        load_any_data(path)
    load_any_onnx(path)
    load_any_model(path)


def test_a_flipped_byte_inside_a_weight_is_refused_not_loaded(sources, tmp_path):
    data = bytearray(sources["m.pt"])
    start = bytes(data).find(np.float32(tiny().state_dict()["0.weight"][0, 0]).tobytes())
    assert start > 0
    data[start] ^= 0x01  # torch's reader does not check CRCs: this would load as a new weight
    path = tmp_path / "m.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="fails its CRC check"):
        load_model(path, arch="tests.nets:tiny")
