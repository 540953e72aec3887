"""torch's threads kept to the cores other work leaves free."""

from __future__ import annotations

import pytest
import torch

from compressor.io import cores
from compressor.io.cores import _Look, batch_starts, free_threads, kept_to_free_cores, \
    others_busy


@pytest.mark.parametrize("usable, others, threads", [
    (2, 0.0, 2), (2, 0.2, 2), (2, 0.5, 1), (2, 1.0, 1), (2, 2.0, 1), (8, 3.0, 5), (1, 0.0, 1)])
def test_threads_are_the_cores_left_free(usable, others, threads):
    assert free_threads(usable, others) == threads


def test_other_work_is_all_cpu_time_on_our_cores_less_our_own():
    before, after = _Look(10.0, 100.0, 5.0), _Look(12.0, 103.0, 6.5)  # 3 s busy, 1.5 s ours
    assert others_busy(before, after) == pytest.approx(0.75)
    assert others_busy(before, _Look(12.0, None, 6.5)) is None


def test_a_fixed_count_is_used_and_torch_restored_after():
    before = torch.get_num_threads()
    with kept_to_free_cores(1) as use:
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before and use.fixed and use.most == 1


def test_following_drops_to_the_free_cores_when_other_work_starts(monkeypatch):
    """A machine of 2 cores on which other work takes a whole core after the start."""
    clock = {"busy": 0.0, "wall": 0.0}
    monkeypatch.setattr(cores, "usable_cores", lambda: 2)
    monkeypatch.setattr(cores, "_look", lambda: _Look(clock["wall"], clock["busy"], 0.0))
    monkeypatch.setattr(cores.time, "sleep", lambda s: clock.update(wall=clock["wall"] + s))
    monkeypatch.setattr(cores.time, "perf_counter", lambda: clock["wall"])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with kept_to_free_cores(None) as use:
            assert torch.get_num_threads() == 2  # nothing else ran during the first look
            clock.update(wall=clock["wall"] + 1, busy=clock["busy"] + 1)  # one core taken
            list(batch_starts(10, 5))
            assert torch.get_num_threads() == 1
            clock.update(wall=clock["wall"] + 1)  # free again
            list(batch_starts(10, 5))
            assert torch.get_num_threads() == 2
        assert (use.fixed, use.least, use.most, use.others) == (False, 1, 2, 1.0)
    finally:
        torch.set_num_threads(before)


def test_outside_a_run_batches_change_nothing():
    threads = torch.get_num_threads()
    assert list(batch_starts(10, 4)) == [0, 4, 8] and torch.get_num_threads() == threads
