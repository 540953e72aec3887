"""What the README promises about security, tested through the CLI."""

from __future__ import annotations

import socket
from pathlib import Path

import torch

from tests.conftest import labelled


class Payload:
    """Unpickling this creates the file `marker`: code run from a data or model file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_code_in_data_and_model_files_is_refused_without_running_it(run_cli, tiny_files):
    marker = tiny_files["dir"] / "code-ran"
    x, y = labelled()
    data = tiny_files["dir"] / "evil.pt"
    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y), "p": Payload(marker)}, data)
    model = tiny_files["dir"] / "evil_model.pt"
    torch.save({**torch.load(tiny_files["model"]), "p": Payload(marker)}, model)
    for args in ([tiny_files["model"], "--data", data], [model, "--data", tiny_files["data"]]):
        result = run_cli(*args, "--arch", "tests.nets:tiny", "--target", "0.5", "--no-latency")
        assert result.code == 2, result.err
        assert "weights_only" in result.err or "--trust-pickle" in result.err
        assert not marker.exists()


def test_compress_and_check_open_no_network_connection(run_cli, tiny_files, monkeypatch,
                                                       fixed_latency):
    fixed_latency(1.0)
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a test")

    for name in ("create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, name, refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    out = tiny_files["dir"] / "m.onnx"
    result = run_cli(tiny_files["model"], "--arch", "tests.nets:tiny", "--target", "0.5",
                     "--data", tiny_files["data"], "--cycles", "1", "--epochs", "1", "-o", out)
    assert result.code == 0, result.err
    result = run_cli("check", out, "--max-size", "1MB", "--min-accuracy", "0", "--data",
                     tiny_files["data"], "--max-latency", "100")
    assert result.code == 0, result.err
    assert attempts == []
