from __future__ import annotations

import dataclasses
import json

from compressor.prune.cycles import CycleRow
from compressor.report.compress import (Accuracy, Latency, LayerRow, Parity, PlanRow, Report,
                                       Settings, Sizes, Source, Timing, format_table)


def report(accuracy: float | None) -> Report:
    return Report(
        source=Source("m.pt", "state_dict", "d.npz", "m.onnx", "m.json", calibration_samples=100),
        plan=Settings(0.8, "weights", "neurons", (
            PlanRow("criterion", "activation", "fine-tuned: firing rate behind ReLUs", False),
            PlanRow("compensate", "merge", "given", True))),
        size=Sizes(1000, 190, 2000, 380, 5000, 1200),
        parity=Parity(1e-6, 10, "held-back"),
        accuracy=None if accuracy is None else
        Accuracy(accuracy, accuracy - 0.01, "held-out test split (10 samples)"),
        latency=Timing(1, (Latency(256, 2.0, 0.5),)),
        layers=(LayerRow("fc1", 10, 50, 10, 9, 3, "pruned"),
                LayerRow("out", 50, 10, 9, 10, None, "output layer (never pruned)")),
        cycles=(CycleRow(1, 0.8, 0.81, 41, 3, 0, 30, 0.25, 2, 0.9),),
        kept={"fc1": {"size": 50, "kept": [1]}}, seconds=1.5)


def test_json_has_the_documented_keys_and_derived_values():
    data = json.loads(report(0.9).to_json())
    assert set(data) >= {"source", "plan", "size", "accuracy", "parity", "latency", "layers",
                         "cycles", "kept", "units"}
    assert (data["size"]["reduction"], data["size"]["flop_reduction"]) == (0.81, 0.81)
    assert data["accuracy"] == {"before": 0.9, "after": 0.89,
                                "data": "held-out test split (10 samples)"}
    assert data["latency"]["rows"] == [{"batch": 256, "before_ms": 2.0, "after_ms": 0.5,
                                        "runtime_ms": None, "spread": 0.0, "busy": False,
                                        "speedup": 4.0}]
    assert data["plan"]["choices"]["compensate"] == {"value": "merge", "reason": "given",
                                                     "given": True}
    assert json.loads(report(None).to_json())["accuracy"] is None


def test_table_shows_accuracy_only_when_there_are_labels():
    with_labels, without = format_table(report(0.9)), format_table(report(None))
    assert "-1.00 pt on held-out test split" in with_labels
    assert "accuracy" not in without
    assert "-81.00% (target 80.00%)" in without and "4.0x faster" in without
    assert "output layer (never pruned)" in without


def test_table_lists_the_plan_with_reasons_and_says_what_compensation_did():
    table = format_table(report(0.9)).splitlines()
    plan = table.index("plan")
    assert table[plan + 1].split() == ["criterion", "activation", "fine-tuned:", "firing", "rate",
                                       "behind", "ReLUs"]
    assert table[plan + 2].split() == ["compensate", "merge", "given"]
    assert "30 of 41 removed units merged, compensation took 0.25 s" in table[plan + 3]


def test_parity_is_read_against_the_outputs_size_where_they_exceed_one():
    small, large = (dataclasses.replace(report(0.9), parity=Parity(d, 10, "held-back",
                                                                   max_abs_output=out))
                    for d, out in ((1e-6, 0.5), (4.0, 3e7)))
    assert "(float32 export)" in format_table(small)  # within 1: the difference is absolute
    assert "(float32 export; outputs up to 3e+07, 1e-07 of that)" in format_table(large)
    assert json.loads(large.to_json())["parity"]["max_abs_output"] == 3e7


def test_parity_above_the_tolerance_says_the_model_is_sensitive_to_rounding():
    plain = dataclasses.replace(report(0.9), parity=Parity(1e-6, 10, "held-back"))
    sensitive = dataclasses.replace(report(0.9), parity=Parity(
        0.03, 10, "held-back", max_abs_output=0.6, float32_rounding=0.013))
    assert "sensitive to rounding" not in format_table(plain)
    assert "sensitive to rounding (max |pytorch float32 - float64| = 0.013)" in \
        format_table(sensitive)
    assert json.loads(sensitive.to_json())["parity"]["float32_rounding"] == 0.013
