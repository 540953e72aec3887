from __future__ import annotations

import os
import stat

import pytest

from compressor.errors import OutputError
from compressor.io.files import check_output, write_atomic


def test_write_atomic_writes_every_file_and_leaves_no_temporaries(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "a.json"
    a.write_bytes(b"old")
    write_atomic({a: b"model", b: b"{}"})
    assert a.read_bytes() == b"model" and b.read_bytes() == b"{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.onnx"]


def test_a_failed_write_leaves_no_partial_file(tmp_path):
    good = tmp_path / "good.onnx"
    with pytest.raises(OutputError):
        write_atomic({good: b"model", tmp_path / "missing" / "r.json": b"{}"})
    assert list(tmp_path.iterdir()) == []


def test_check_output_refuses_inputs_directories_and_missing_parents(tmp_path):
    model = tmp_path / "m.pt"
    model.write_bytes(b"x")
    with pytest.raises(OutputError, match="is an input file"):
        check_output(tmp_path / "." / "m.pt", inputs=(model,))
    with pytest.raises(OutputError, match="is a directory"):
        check_output(tmp_path, inputs=(model,))
    with pytest.raises(OutputError, match="does not exist"):
        check_output(tmp_path / "nope" / "o.onnx", inputs=(model,))
    assert check_output(tmp_path / "o.onnx", inputs=(model,)) == (tmp_path / "o.onnx").resolve()


def test_check_output_refuses_a_directory_it_cannot_write(tmp_path, monkeypatch):
    monkeypatch.setattr("compressor.io.files.os.access", lambda path, mode: False)
    with pytest.raises(OutputError, match="--junit .* is not writable: choose another --junit"):
        check_output(tmp_path / "j.xml", inputs=(), option="--junit")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_get_the_permissions_the_umask_allows(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_atomic({tmp_path / "a.onnx": b"x", tmp_path / "a.json": b"{}"})
    finally:
        os.umask(old)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == \
        {"a.onnx": mode, "a.json": mode}
