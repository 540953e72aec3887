"""docs/cli.md's option tables say what each command's --help says: the same options, with
the same defaults; the README's links point at files that exist."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from compressor.cli import SUBCOMMANDS, compress_command

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {"`compress MODEL`": compress_command,
            "`compress check MODEL.onnx`": SUBCOMMANDS["check"],
            "`compress bench MODEL.onnx...`": SUBCOMMANDS["bench"],
            "`compress analyze MODEL [--compare PRUNED...]`": SUBCOMMANDS["analyze"]}


def _tables() -> dict[str, dict[str, str]]:
    """Per `## heading` of docs/cli.md: {option: default column} of its option table."""
    tables: dict[str, dict[str, str]] = {}
    heading = None
    for line in (REPO / "docs" / "cli.md").read_text().splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
        elif heading in COMMANDS and line.startswith("| `-"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            for option in re.findall(r"--[a-z][a-z0-9-]*", cells[0]):
                tables.setdefault(heading, {})[option] = cells[1]
    return tables


def _options(command: click.Command) -> dict[str, click.Parameter]:
    return {opt: p for p in command.params if isinstance(p, click.Option)
            for opt in p.opts + p.secondary_opts if opt.startswith("--")} | \
        {"--help": None}


@pytest.mark.parametrize("heading", list(COMMANDS))
def test_every_option_of_the_command_is_documented_and_no_other(heading):
    documented = set(_tables()[heading])
    assert documented == set(_options(COMMANDS[heading])), heading


@pytest.mark.parametrize("heading", list(COMMANDS))
def test_documented_defaults_are_the_real_ones(heading):
    wrong = []
    for option, param in _options(COMMANDS[heading]).items():
        value = None if param is None else param.default
        if param is None or param.is_flag or param.required or \
                not isinstance(value, (int, float, str)):  # no default ("none" in the table)
            continue
        shown = _tables()[heading][option].strip("`")
        expected = {str(value), f"{value:,}" if isinstance(value, int) else str(value)}
        if shown not in expected and not (isinstance(value, float) and
                                          _number(shown) == value):
            wrong.append(f"{option}: documented {shown!r}, --help says {value!r}")
    assert wrong == []


def test_links_in_the_readme_and_docs_point_at_files_that_exist():
    missing = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                missing.append(f"{page.name}: {target}")
    assert missing == []


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
