"""`compress check`'s result as a table, JSON and JUnit."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from compressor.measure.budgets import BudgetRow
from compressor.report.check import CheckResult, format_check


def test_json_and_junit_say_the_same_as_the_table():
    rows = (BudgetRow("size", 100, 200, True, "bytes on disk"),
            BudgetRow("latency", 2.5, 1.0, False, "batch 1"))
    result = CheckResult("m.onnx", rows)
    data = json.loads(result.to_json())
    assert data["passed"] is False and [b["name"] for b in data["budgets"]] == ["size", "latency"]
    assert [b["unit"] for b in data["budgets"]] == ["bytes", "ms"]
    suite = ET.fromstring(result.to_junit()).find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    failures = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failures == ["latency"]
    table = format_check(result)
    assert "FAIL" in table and table.endswith("1 of 2 budgets broken: latency")
