"""How every command ends: library errors become one line and an exit code, never a
traceback."""

from __future__ import annotations

import os
import sys

import click

from ..errors import CompressorError, first_line
from ..report.check import CheckResult

BUDGET_BROKEN = 1
USAGE_ERROR = 2


def run_library(job):
    """Run a library call; user errors become one line and exit code 2, never a traceback."""
    try:
        return job()
    except CompressorError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(USAGE_ERROR)
    except KeyboardInterrupt:
        click.echo("Interrupted; nothing was written.", err=True)
        sys.exit(130)
    except Exception as e:  # a bug: one line, the traceback only on request
        if os.environ.get("COMPRESSOR_DEBUG"):
            raise
        click.echo(f"Internal error ({type(e).__name__}: {first_line(e)}); nothing was written. "
                   "Re-run with COMPRESSOR_DEBUG=1 for the traceback and report it.", err=True)
        sys.exit(3)


def broken(result: CheckResult, *, wrote: str = "") -> None:
    rows = "; ".join(f"{row.name} {row.comparison}" for row in result.broken)
    click.echo(f"Budget broken: {rows}" + (f" ({wrote})" if wrote else ""), err=True)
    sys.exit(BUDGET_BROKEN)
