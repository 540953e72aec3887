"""The one table formatter: every table compressor prints is aligned here."""

from __future__ import annotations

from typing import Sequence


def align(rows: Sequence[Sequence[str]], *, free_last: bool = True) -> list[str]:
    """Rows as aligned lines: the first column left-aligned, the others right-aligned; with
    `free_last`, the last column is free text (left-aligned, not padded). Trailing spaces are
    dropped."""
    n = len(rows[0])
    widths = [max(len(row[i]) for row in rows) for i in range(n)]

    def cell(i: int, text: str) -> str:
        if i == 0:
            return text.ljust(widths[i])
        if free_last and i == n - 1:
            return text
        return text.rjust(widths[i])

    return ["  ".join(cell(i, c) for i, c in enumerate(row)).rstrip() for row in rows]
