"""How every command ends: library errors become one line and an exit code, never a
traceback."""

from __future__ import annotations

import os
import re
import sys

import click

from ..errors import CompressorError, first_line
from ..io import ranks
from ..report.check import CheckResult

BUDGET_BROKEN = 1
USAGE_ERROR = 2


def flag_names(command: click.Command, **extra: str) -> dict[str, str]:
    """Each option's keyword (the library's name for it) and its flag, e.g. factor -> --factor;
    `extra` adds keywords whose flag has another name."""
    names = {p.name: max(p.opts, key=len) for p in command.params
             if isinstance(p, click.Option) and p.name}
    return names | extra


def with_flags(text: str, flags: dict[str, str]) -> str:
    """`text` with each option the library names by keyword (`factor`) named by its flag."""
    return re.sub(r"`([a-z_]+)`", lambda m: flags.get(m.group(1), m.group(0)), text)


def run_library(job, *, flags: dict[str, str] | None = None):
    """Run a library call; user errors become one line and exit code 2, never a traceback."""
    try:
        return job()
    except CompressorError as e:
        click.echo(f"Error{_which()}: {with_flags(str(e), flags or {})}", err=True)
        sys.exit(USAGE_ERROR)
    except KeyboardInterrupt:
        click.echo("Interrupted; nothing was written.", err=True)
        sys.exit(130)
    except Exception as e:  # a bug: one line, the traceback only on request
        if os.environ.get("COMPRESSOR_DEBUG"):
            raise
        click.echo(f"Internal error{_which()} ({type(e).__name__}: {first_line(e)}); nothing was "
                   "written. "
                   "Re-run with COMPRESSOR_DEBUG=1 for the traceback and report it.", err=True)
        sys.exit(3)


def _which() -> str:
    """Which process of a torchrun group failed (torchrun then stops the others)."""
    return f" (rank {ranks.rank()} of {ranks.size()})" if ranks.size() > 1 else ""


def broken(result: CheckResult, *, wrote: str = "") -> None:
    rows = "; ".join(f"{row.name} {row.comparison}" for row in result.broken)
    click.echo(f"Budget broken: {rows}" + (f" ({wrote})" if wrote else ""), err=True)
    sys.exit(BUDGET_BROKEN)
