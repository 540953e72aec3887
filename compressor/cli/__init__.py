"""Command line: parses options, builds configs, calls one library function per command.
Nothing outside this package imports click."""

from __future__ import annotations

import difflib
import os
import sys

import click

from .analyze import analyze_command
from .bench import bench_command
from .check import check_command
from .common import USAGE_ERROR
from .compress import compress_command

# Subcommands by name (`compress check ...`); anything else is the main job, `compress MODEL`.
SUBCOMMANDS: dict[str, click.Command] = {"check": check_command, "bench": bench_command,
                                         "analyze": analyze_command}


def main(argv: list[str] | None = None) -> None:
    """Console entry point `compress`."""
    args = sys.argv[1:] if argv is None else list(argv)
    command, name = compress_command, "compress"
    if args and args[0] in SUBCOMMANDS:
        command, name, args = SUBCOMMANDS[args[0]], f"compress {args[0]}", args[1:]
    elif args and _misspelt(args[0]):
        click.echo(f"Error: {args[0]!r} is neither a model file nor a command: did you mean "
                   f"'compress {_misspelt(args[0])}'? (see 'compress --help')", err=True)
        sys.exit(USAGE_ERROR)
    try:
        code = command.main(args, prog_name=name, standalone_mode=False)
    except click.UsageError as e:  # one line, not click's three
        click.echo(f"Error: {e.format_message()} (see '{name} --help')", err=True)
        code = USAGE_ERROR
    except click.Abort:
        click.echo("Aborted.", err=True)
        code = 1
    sys.exit(code or 0)


def _misspelt(word: str) -> str | None:
    """The subcommand `word` is probably a typo of, unless `word` is an option or a file."""
    if word.startswith("-") or os.path.exists(word):
        return None
    close = difflib.get_close_matches(word, SUBCOMMANDS, n=1, cutoff=0.6)
    return close[0] if close else None
