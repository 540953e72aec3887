"""One error family: every message says what is wrong and how to fix it."""

from __future__ import annotations


class CompressorError(Exception):
    """A problem with the user's input or environment; the CLI prints it as one line."""


class ModelError(CompressorError):
    """The model file cannot be loaded, or the model cannot be traced or run."""


class DataError(CompressorError):
    """The data cannot be read, or does not fit the model."""


class NothingToPruneError(CompressorError):
    """The model has no prunable group, or the target cannot be reached."""


class ExportError(CompressorError):
    """ONNX export or verification failed; nothing was written."""


class OutputError(CompressorError):
    """The output path cannot be written."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (for one-line errors that name a cause)."""
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


class UsageError(CompressorError):
    """Options that do not fit together."""


class OptionError(UsageError):
    """An option's value, or options that do not fit together. The message names each option
    by its keyword in backquotes (`factor`); the command line shows the flag (--factor)."""
