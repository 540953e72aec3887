"""Output paths: checked before any work, written atomically after all of it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import OutputError


def check_output(path: Path, *, inputs: tuple[Path, ...]) -> Path:
    """Resolve `path` and make sure it can be written and overwrites none of `inputs`."""
    path = Path(path).expanduser()
    resolved = path.resolve()
    for source in inputs:
        if source.exists() and resolved == Path(source).resolve():
            raise OutputError(f"output {path} is the input file; pass a different -o/--output "
                              "(the input is never overwritten)")
    if resolved.is_dir():
        raise OutputError(f"output {path} is a directory: pass a file path such as "
                          f"{path / 'model.onnx'}")
    parent = resolved.parent
    if not parent.is_dir():
        raise OutputError(f"output directory {parent} does not exist: create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {parent} is not writable: choose another -o/--output")
    return resolved


def write_atomic(files: dict[Path, bytes]) -> None:
    """Write every file to a temporary sibling, then rename them all into place."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in staged:
            os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
