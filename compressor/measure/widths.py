"""The width multiples onnxruntime's kernels prefer on this machine: measured once, then cached
per CPU and onnxruntime version in the user's cache directory.

onnxruntime runs convolutions in a blocked layout (NCHWc) whose block is the CPU's vector width
in floats, so a convolution's time grows in steps of that many channels. Its Gemm packs the
weights in panels of columns, with steps of its own. A width between two steps pays
for the next one. The probe times the kernel at widths 36 to 100 and finds the step that
explains the times best; a step is used and cached once two probes agree on it."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ..runtime.session import session
from ..runtime.timing import latencies_ms

CANDIDATES = (4, 8, 16, 32)  # 4: no steps at the widths probed (they are multiples of 4)
WIDTHS = tuple(range(36, 101, 4))
DECISIVE = 0.95  # least R² of the step fit, and ...
SMOOTHER = 0.5  # ... at most this share of the squared error the fit without steps leaves
AGREE, PROBES = 2, 3  # a multiple is used and cached once this many of at most PROBES agree
Probe = Callable[[Sequence[int]], list[float]]


class Kernel(str, Enum):
    """What is timed: a 3x3 convolution with w channels in and out on [8, w, 14, 14], or a
    Linear layer 512 -> w (Gemm, ReLU) at batch 256. The value names the cache entry ("gemm
    out": the pair probe of earlier versions, cached as "gemm", timed a different thing)."""

    CONV = "conv"
    GEMM = "gemm out"

    @property
    def power(self) -> int:
        """How the probe's cost grows with the padded width: both conv channel counts move;
        one Gemm dimension per layer moves."""
        return 2 if self is Kernel.CONV else 1


@dataclass(frozen=True)
class WidthMultiple:
    """The step a kind of kernel runs in on this machine, and how that was found."""

    multiple: int | None  # None: the timing was not decisive
    how: str  # "measured", "cached" or "undecided"
    kernel: Kernel = Kernel.CONV

    def describe(self, fallback: int = 1) -> str:
        """One phrase for the report (`fallback`: the multiple used where undecided)."""
        what, op, unit = ("conv channels", "convolutions", "channels") \
            if self.kernel is Kernel.CONV else ("wide Linear layers", "Gemm", "columns")
        if self.multiple is None:
            kept = f"in multiples of {fallback}" if fallback > 1 else "exact"
            return (f"{what} {kept} (timing onnxruntime's {op} on this CPU was not decisive)")
        when = "measured now" if self.how == "measured" else "measured before"
        if self.multiple == 1:
            return f"{what} exact (onnxruntime's {op} on this CPU shows no steps, {when})"
        return (f"{what} in multiples of {self.multiple} (onnxruntime's {op} on this CPU runs "
                f"in steps of {self.multiple} {unit}, {when})")


def preferred_multiple(kernel: Kernel, *, cache: Path | None = None,
                       probe: Probe | None = None) -> WidthMultiple:
    """The width multiple `kernel` runs fastest at on this machine.

    Args:
        kernel: convolutions or Gemm.
        cache: the cache file (default: `compressor/widths.json` in $XDG_CACHE_HOME or
            ~/.cache); a multiple that two probes agree on is stored there under the kernel,
            this CPU and onnxruntime version, and read instead of measuring again.
        probe: milliseconds of the kernel per width (default: `probe_conv` / `probe_gemm`).

    Returns:
        The multiple and whether it was measured now or read from the cache; None where the
        timing was not decisive.
    """
    path = cache or _cache_file()
    key = f"{kernel.value} on {machine_key()}"
    known = _read(path)
    if known.get(key) in (1, *CANDIDATES):
        return WidthMultiple(known[key], "cached", kernel)
    measure = probe or (probe_conv if kernel is Kernel.CONV else probe_gemm)
    chosen = agreed(choose_multiple(WIDTHS, measure(WIDTHS), power=kernel.power)
                    for _ in range(PROBES))
    if chosen is None:
        return WidthMultiple(None, "undecided", kernel)
    with contextlib.suppress(OSError):  # a read-only home only costs the next run a probe
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps({**known, key: chosen}, indent=1, sort_keys=True))
        temporary.replace(path)
    return WidthMultiple(chosen, "measured", kernel)


def agreed(answers: Iterable[int | None]) -> int | None:
    """The first answer that AGREE probes gave, reading no more answers than it needs; None
    (nothing to cache) where no answer is given that often, or where the agreed answer is None.

    One probe's answer turns on the few widths a busy moment slowed, and an answer is cached
    for good, so it has to be one that repeats."""
    seen: list[int | None] = []
    for answer in answers:
        seen.append(answer)
        if seen.count(answer) >= AGREE:
            return answer
    return None


def choose_multiple(widths: Sequence[int], times: Sequence[float], *,
                    power: int = 2) -> int | None:
    """The step (of CANDIDATES) whose staircase fits the times of a kernel at `widths` best,
    time = a + b · (ceil(w / m) · m) ** power, if that fit explains at least DECISIVE of the
    variance and leaves at most SMOOTHER times the squared error of the fit without steps
    (m = 4: the widths are multiples of 4); 1 (no steps worth aligning to) if the fit without
    steps explains DECISIVE of it and no staircase does clearly better; None if neither fits
    (noise)."""
    t = np.asarray(times, dtype=np.float64)
    total = max(float(((t - t.mean()) ** 2).sum()), 1e-30)
    errors = {}
    for m in CANDIDATES:
        padded = np.array([(math.ceil(w / m) * m) ** power for w in widths], dtype=np.float64)
        design = np.stack([np.ones_like(padded), padded], axis=1)
        residual = t - design @ np.linalg.lstsq(design, t, rcond=None)[0]
        errors[m] = float(residual @ residual)
    best = min(CANDIDATES, key=lambda m: (errors[m], m))
    smooth = errors[CANDIDATES[0]]
    if best != CANDIDATES[0] and 1 - errors[best] / total >= DECISIVE and \
            errors[best] <= SMOOTHER * smooth:
        return best
    return 1 if 1 - smooth / total >= DECISIVE else None


def probe_conv(widths: Sequence[int], *, batch: int = 8, size: int = 14) -> list[float]:
    """Milliseconds of a 3x3 convolution (padding 1, then ReLU) with w channels in and out on
    [batch, w, size, size], for each w, one onnxruntime thread, timed in interleaved rounds."""
    generator = np.random.default_rng(0)
    return _time([(_conv_model(w, generator), (batch, w, size, size)) for w in widths])


def probe_gemm(widths: Sequence[int], *, batch: int = 256, features: int = 512) -> list[float]:
    """Milliseconds of Gemm(features -> w) and ReLU at `batch`, for each w, one onnxruntime
    thread, timed in interleaved rounds. Only the output width is varied: a layer's width is
    its own Gemm's output (N, where the kernel packs weight columns in panels) and the next
    Gemm's inner dimension (K, whose time grows smoothly; timed as a pair 256 -> w -> 256, K's
    slope hides the steps of N)."""
    generator = np.random.default_rng(0)
    return _time([(_gemm_model(w, features, generator), (batch, features)) for w in widths])


def _time(models: list[tuple[bytes, tuple[int, ...]]]) -> list[float]:
    generator = np.random.default_rng(1)
    runs = []
    for model, shape in models:
        run, x = session(model, threads=1), generator.random(shape, dtype=np.float32)
        runs.append(lambda run=run, x=x: run.run(None, {"x": x}))
    return latencies_ms(runs, seconds=2.0, rounds=3, min_calls=5, warmup=3)


def machine_key() -> str:
    """What the cache is keyed by: the CPU model, its vector extensions, onnxruntime."""
    name, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            field, _, value = line.partition(":")
            if field.strip() == "model name":
                name = value.strip()
            elif field.strip() in ("flags", "Features"):
                flags = set(value.split())
    vector = sorted(flags & {"avx", "avx2", "avx512f", "amx_tile", "asimd", "sve"})
    return f"{name} [{' '.join(vector)}] {platform.machine()}, onnxruntime {ort.__version__}"


def _cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "compressor" / "widths.json"


def _read(path: Path) -> dict:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _conv_model(width: int, generator: np.random.Generator) -> bytes:
    w = numpy_helper.from_array(generator.standard_normal((width, width, 3, 3), np.float32), "w")
    b = numpy_helper.from_array(np.zeros(width, np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    return _model(nodes, [w, b], [None, width, None, None], [None, width, None, None])


def _gemm_model(width: int, features: int, generator: np.random.Generator) -> bytes:
    w = numpy_helper.from_array(generator.standard_normal((width, features), np.float32), "w")
    b = numpy_helper.from_array(np.zeros(width, np.float32), "b")
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["y"])]
    return _model(nodes, [w, b], [None, features], [None, width])


def _model(nodes: list, tensors: list, x: list, y: list) -> bytes:
    graph = helper.make_graph(nodes, "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y)],
                              tensors)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]) \
        .SerializeToString()
