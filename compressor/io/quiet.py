"""Silence the chatter of torch.export, torch.onnx and their helpers."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Iterator


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence torch.export / torch.onnx chatter (warnings, logging, prints)."""
    loggers = [logging.getLogger(n) for n in ("torch", "onnxscript", "onnx_ir", "")]  # "": root
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
