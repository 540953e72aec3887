"""Latencies timed together, and whether the rounds agree enough to trust their ratio."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import torch

from compressor.io.cores import Load
from compressor.measure import latency
from compressor.measure.latency import SPREAD_LIMIT, Compared, compared_ms
from compressor.report.compress import Latency, Timing, format_table
from tests.conftest import sparse_onnx
from tests.nets import tiny
from tests.report.test_compress import report


def _measured(monkeypatch, dense: list[float], pruned: list[float],
              others: float | None = 0.0) -> Compared:
    """What `compared_ms` says when every round times these seconds (one call per round)
    and other processes kept `others` cores busy meanwhile."""
    def timings(models, samples, **_):
        return [[[t] for t in dense], [[t] for t in pruned]]

    @contextlib.contextmanager
    def watching_load():
        yield Load(others)

    monkeypatch.setattr(latency, "timings", timings)
    monkeypatch.setattr(latency, "watching_load", watching_load)
    model = sparse_onnx(tiny(), torch.randn(8, 20)).SerializeToString()
    return compared_ms([model, model], [torch.randn(8, 20)] * 2, batch=1)


def test_agreeing_rounds_on_a_quiet_machine_are_trusted(monkeypatch):
    found = _measured(monkeypatch, [2.0, 2.1, 2.0], [1.0, 1.05, 1.0])
    assert found.ms == (2000.0, 1000.0) and found.spread == 0.0 and not found.busy


def test_rounds_that_disagree_on_the_speedup_are_not_trusted(monkeypatch):
    found = _measured(monkeypatch, [2.0, 2.0, 2.0], [1.0, 0.5, 1.0])  # speedups 2, 4, 2
    assert found.spread == 1.0 > SPREAD_LIMIT and found.busy


def test_other_work_during_the_timing_makes_it_untrusted(monkeypatch):
    assert _measured(monkeypatch, [2.0, 2.0], [1.0, 1.0], others=0.9).busy


def test_the_table_says_when_a_speedup_is_not_trusted():
    base = report(0.9)
    trusted = Latency(1, 2.0, 0.5, spread=0.04)
    busy = Latency(1, 2.0, 0.5, spread=0.6, busy=True)
    assert "rounds ±2%)" in format_table(replace(base, latency=Timing(1, (trusted,))))
    assert "rounds ±30%: the machine was busy, not trusted)" in \
        format_table(replace(base, latency=Timing(1, (busy,))))
