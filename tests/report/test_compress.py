from __future__ import annotations

import json

from compressor.prune.cycles import CycleRow
from compressor.report.compress import Latency, LayerRow, Report, format_table


def report(accuracy: float | None) -> Report:
    return Report(
        model="m.pt", model_format="state_dict", data="d.npz", output="m.onnx", report="m.json",
        target=0.8, scope="global", criterion="activation", compensate="merge",
        calibration_samples=100,
        weights_before=1000, weights_after=190, flops_before=2000, flops_after=380,
        onnx_bytes_before=5000, onnx_bytes=1200, accuracy_before=accuracy,
        accuracy_after=None if accuracy is None else accuracy - 0.01,
        accuracy_data=None if accuracy is None else "held-out test split (10 samples)",
        parity_max_abs_diff=1e-6, parity_samples=10, parity_inputs="held-back", latency_threads=1,
        latency=(Latency(256, 2.0, 0.5),),
        layers=(LayerRow("fc1", 10, 50, 10, 9, 3, "pruned"),
                LayerRow("out", 50, 10, 9, 10, None, "output layer (never pruned)")),
        cycles=(CycleRow(1, 0.8, 0.81, 41, 3, 0, 30, 0.25, 2, 0.9),), plan={"fc1": {"size": 50, "kept": [1]}},
        seconds=1.5)


def test_json_has_the_documented_keys_and_derived_values():
    data = json.loads(report(0.9).to_json())
    for key in ("weights_before", "weights_after", "reduction", "accuracy_before",
                "accuracy_after", "parity_max_abs_diff", "onnx_bytes", "layers", "plan"):
        assert key in data
    assert data["reduction"] == 0.81
    assert data["latency"] == [{"batch": 256, "before_ms": 2.0, "after_ms": 0.5, "runtime_ms": None,
                               "speedup": 4.0}]


def test_table_shows_accuracy_only_when_there_are_labels():
    with_labels, without = format_table(report(0.9)), format_table(report(None))
    assert "-1.00 pt on held-out test split" in with_labels
    assert "accuracy" not in without
    assert "-81.00% (target 80.00%)" in without and "4.0x faster" in without
    assert "output layer (never pruned)" in without


def test_table_says_how_many_neurons_were_merged_and_how_long_compensation_took():
    table = format_table(report(0.9))
    assert "criterion activation, compensation merge (30 of 41 removed neurons merged) in 0.25 s" \
        in table
