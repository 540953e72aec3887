"""Peak memory of loading and running an ONNX file, measured in a child process (Linux)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..runtime import SparseModel, session, stored_kernels
from .onnx_file import load_onnx, random_input


def peak_memory_mb(path: Path, *, batch: int, runtime: bool = False) -> float | None:
    """Peak resident memory (MB) that loading `path` and running it at `batch` adds to a fresh
    Python process that has already imported everything (Linux: the peak is reset through
    /proc/self/clear_refs, then read from VmHWM). None where that cannot be measured."""
    code = "from compressor.measure.memory import _peak_child; _peak_child()"
    try:
        done = subprocess.run([sys.executable, "-c", code, str(path), str(batch),
                               str(int(runtime))], capture_output=True, text=True, timeout=300,
                              check=True)
        return round(float(done.stdout.strip().splitlines()[-1]), 1)
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def _peak_child() -> None:
    path, batch, runtime = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    model = load_onnx(Path(path)).runnable()
    x = random_input(model, batch).numpy()
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS (Linux)
    before = _high_water_kb()
    if runtime:
        run = SparseModel.load(model.data, batch=batch, kernels="stored" if
                               stored_kernels(model.proto) else "measure").run
    else:
        sess = session(model.data)
        run = lambda x: sess.run(None, {model.input_name: x})  # noqa: E731
    for _ in range(10):
        run(x)
    print((_high_water_kb() - before) / 1024)


def _high_water_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise OSError("no VmHWM in /proc/self/status")
