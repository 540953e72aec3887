"""`compress check`'s result: one row per budget, for people (a table), programs (JSON) and CI
systems (JUnit XML)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

from ..measure.budgets import SPECS, BudgetRow
from .table import align


@dataclass(frozen=True)
class CheckResult:
    """Every budget's row for one model."""

    model: str
    rows: tuple[BudgetRow, ...]

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    @property
    def broken(self) -> tuple[BudgetRow, ...]:
        return tuple(row for row in self.rows if not row.passed)

    def to_json(self) -> str:
        rows = [{**asdict(row), "unit": row.unit, "comparison": row.comparison}
                for row in self.rows]
        return json.dumps({"model": self.model, "passed": self.passed, "budgets": rows},
                          indent=2) + "\n"

    def to_junit(self) -> bytes:
        """A JUnit XML report: one test case per budget, a <failure> for each broken one."""
        suite = ET.Element("testsuite", name="compress check", tests=str(len(self.rows)),
                           failures=str(len(self.broken)), errors="0")
        for row in self.rows:
            case = ET.SubElement(suite, "testcase", name=row.name, time="0",
                                 classname=f"compress.check.{Path(self.model).name}")
            ET.SubElement(case, "system-out").text = f"{row.comparison}; {row.detail}".rstrip("; ")
            if not row.passed:
                ET.SubElement(case, "failure", message=f"{row.name}: {row.comparison}",
                              type="budget").text = row.detail
        root = ET.Element("testsuites", tests=str(len(self.rows)), failures=str(len(self.broken)))
        root.append(suite)
        ET.indent(root)
        return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def format_check(result: CheckResult) -> str:
    """The rows as an aligned table with a verdict line."""
    rows = [("budget", "value", "limit", "result", "")]
    for row in result.rows:
        fmt = SPECS[row.name][2]
        op = "<=" if SPECS[row.name][1] == "max" else ">="
        rows.append((row.name, fmt(row.value), f"{op} {fmt(row.limit)}",
                     "pass" if row.passed else "FAIL", row.detail))
    lines = align(rows)
    n = len(result.broken)
    verdict = (f"all {len(result.rows)} budgets hold" if n == 0 else
               f"{n} of {len(result.rows)} budget{'s' if len(result.rows) > 1 else ''} broken: "
               + ", ".join(r.name for r in result.broken))
    return "\n".join([f"check {result.model}", "", *lines, "", verdict])
