"""`module:callable` specs (`--arch`, `--data`): imported from the current directory or
PYTHONPATH and called without arguments."""

from __future__ import annotations

import importlib
import re
import sys
from typing import Any

from ..errors import first_line

SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def looks_like_spec(text: str) -> bool:
    """Whether `text` is written `module:callable` (a path never is: no `/`, no suffix)."""
    return bool(SPEC.match(text))


def call(spec: str, *, option: str, error: type[Exception], example: str) -> Any:
    """Import `module:callable` and return what calling it returns; every failure is `error`
    with one line naming `option` (`--arch`, `--data`)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise error(f"{option} {spec!r} must look like module:callable, e.g. {example}")
    importable_from_here()
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as e:
        raise error(f"cannot find {option} {spec} ({first_line(e)}): run from the directory "
                    "that holds the module or add it to PYTHONPATH") from e
    try:
        return target()
    except Exception as e:  # the user's code may raise anything
        raise error(f"{option} {spec}() failed ({first_line(e)}): it must work without "
                    "arguments") from e


def importable_from_here() -> None:
    """Modules in the current directory become importable (as `python -c` would have them)."""
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
