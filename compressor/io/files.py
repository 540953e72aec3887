"""Files: input archives checked whole before they are read; output paths checked before any
work and written atomically after all of it."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

from ..errors import CompressorError, OutputError, first_line


def zip_members(path: Path, error: type[CompressorError], *, fix: str) -> list[str] | None:
    """The member names of the zip archive at `path` after checking every member's CRC-32,
    or None when the file is not a zip archive.

    torch's own zip reader does not check CRCs, so a damaged byte inside a tensor would load
    as a silently different weight; this reads the whole archive once and raises `error`
    (with `fix` as the advice) instead.
    """
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as zf:
            damaged = zf.testzip()
            names = zf.namelist()
    except Exception as e:  # zipfile raises BadZipFile, UnicodeDecodeError, OSError, ...
        raise error(f"{path} is a corrupt zip archive ({first_line(e)}): {fix}") from e
    if damaged is not None:
        raise error(f"{path} is damaged: member {damaged} fails its CRC check: {fix}")
    return names


def check_output(path: Path, *, inputs: tuple[Path, ...], option: str = "-o/--output") -> Path:
    """Resolve `path` (given with `option`) and make sure it can be written and overwrites
    none of `inputs`."""
    path = Path(path).expanduser()
    resolved = path.resolve()
    for source in inputs:
        if source.exists() and resolved == Path(source).resolve():
            raise OutputError(f"{option} {path} is an input file; pass a different {option} "
                              "(inputs are never overwritten)")
    if resolved.is_dir():
        raise OutputError(f"{option} {path} is a directory: pass a file path such as "
                          f"{path / 'model.onnx'}")
    parent = resolved.parent
    if not parent.is_dir():
        raise OutputError(f"{option} {path}: directory {parent} does not exist: create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: directory {parent} is not writable: choose another "
                          f"{option}")
    return resolved


def files_in(folder: Path, named: dict[str, bytes], *, option: str) -> dict[Path, bytes]:
    """`named` (file name -> bytes) keyed by their paths in `folder` (created if missing),
    each checked as `check_output` checks an output given with `option`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {check_output(folder / name, inputs=(), option=option): data
            for name, data in named.items()}


def write_atomic(files: dict[Path, bytes]) -> None:
    """Write every file to a temporary sibling, then rename them all into place, with the
    permissions any tool gives a new file (0666 less the umask; mkstemp's are 0600)."""
    staged: list[tuple[str, Path]] = []
    mode = 0o666 & ~_umask()
    try:
        for path, data in files.items():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            staged.append((tmp, path))
            os.fchmod(fd, mode)
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


def _umask() -> int:
    """The process umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
