"""The cores this process can use now, and torch's intra-op threads kept to them.

An intra-op thread that waits for a core another process holds stalls every parallel op it
takes part in, so on a shared machine more threads than free cores is much slower than one.
`kept_to_free_cores` starts torch with as many threads as cores are free, and the pruning loops
call `tick()` between batches: at most every `INTERVAL` seconds it reads how much CPU time
other processes took since the last look (from /proc/stat, minus this process's own) and sets
torch's thread count to the cores they left free."""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

INTERVAL = 0.5  # seconds between looks at the load
MARGIN = 0.3  # a core other work holds less than this share of still counts as free
FIRST_LOOK = 0.1  # seconds the load is sampled for before the first choice


def usable_cores() -> int:
    """Cores this process may run on: its affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cores, math.ceil(quota))) if quota else max(1, cores)


def _cgroup_quota() -> float | None:
    """CPUs a cgroup allows this process (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), or None."""
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    with contextlib.suppress(OSError, ValueError):
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    return None


@dataclass
class _Look:
    """CPU time of the machine's cores (this process's affinity) and of this process."""

    wall: float
    busy: float | None  # seconds all processes ran on those cores (None: not readable)
    own: float  # seconds this process ran


def _look() -> _Look:
    return _Look(time.perf_counter(), _busy_seconds(), time.process_time())


def _busy_seconds() -> float | None:
    """Seconds the cores this process may use have been busy since boot, from /proc/stat."""
    try:
        cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        lines = Path("/proc/stat").read_text().splitlines()
    except (AttributeError, OSError):
        return None
    ticks = 0
    for line in lines:
        name, *values = line.split()
        if name in cpus:  # user nice system idle iowait irq softirq steal ...
            numbers = [int(v) for v in values[:8]]
            ticks += sum(numbers) - numbers[3] - numbers[4]
    return ticks / os.sysconf("SC_CLK_TCK")


def others_busy(before: _Look, after: _Look) -> float | None:
    """Cores other processes kept busy between two looks (None where /proc/stat is
    unreadable): all the CPU time spent on this process's cores, less its own."""
    if before.busy is None or after.busy is None or after.wall <= before.wall:
        return None
    others = (after.busy - before.busy) - (after.own - before.own)
    return max(0.0, others / (after.wall - before.wall))


def free_threads(usable: int, others: float) -> int:
    """Threads for `usable` cores of which other work keeps `others` busy: the cores left,
    a core held less than MARGIN of the time counting as free; at least one."""
    return max(1, min(usable, math.floor(usable - others + MARGIN)))


@dataclass
class ThreadUse:
    """How many torch threads a run used: `fixed` (given, or the user's own setting) or
    following the free cores; the least and the most it used, their time-weighted mean, and
    the most cores other work held at one look (None where the load cannot be read)."""

    fixed: bool
    least: int
    most: int
    mean: float
    others: float | None = None


class _Follower:
    """Sets torch's threads to the free cores, at most every INTERVAL seconds."""

    def __init__(self, usable: int) -> None:
        self.usable, self.last = usable, _look()
        self.threads = min(usable, torch.get_num_threads())
        torch.set_num_threads(self.threads)
        self.use = ThreadUse(False, self.threads, self.threads, float(self.threads))
        self.start = self.since = self.last.wall
        self.weighted = 0.0

    def tick(self, *, force: bool = False) -> None:
        if not force and time.perf_counter() - self.last.wall < INTERVAL:
            return
        look = _look()
        others = others_busy(self.last, look)
        self.last = look
        if others is None:
            return
        self.use.others = max(self.use.others or 0.0, others)
        self._set(free_threads(self.usable, others), look.wall)

    def _set(self, threads: int, now: float) -> None:
        self.weighted += self.threads * (now - self.since)
        self.since = now
        self.use.least = min(self.use.least, threads)
        self.use.most = max(self.use.most, threads)
        if threads != self.threads:
            torch.set_num_threads(threads)
            self.threads = threads

    def finish(self) -> ThreadUse:
        now = time.perf_counter()
        self.weighted += self.threads * (now - self.since)
        self.use.mean = round(self.weighted / max(now - self.start, 1e-9), 2)
        return self.use


@dataclass
class Load:
    """Cores other processes kept busy during a block (None where that cannot be read)."""

    others: float | None = None


@contextlib.contextmanager
def watching_load() -> Iterator[Load]:
    """How busy other processes kept this process's cores during the block (filled in when
    the block ends)."""
    load, before = Load(), _look()
    try:
        yield load
    finally:
        load.others = others_busy(before, _look())


_FOLLOWER: _Follower | None = None


def tick() -> None:
    """Between batches: keep torch's threads to the free cores (no-op unless a run follows
    them)."""
    if _FOLLOWER is not None:
        _FOLLOWER.tick()


def batch_starts(n: int, batch_size: int) -> Iterator[int]:
    """range(0, n, batch_size), keeping torch's threads to the free cores between batches."""
    for start in range(0, n, batch_size):
        tick()
        yield start


@contextlib.contextmanager
def kept_to_free_cores(fixed: int | None) -> Iterator[ThreadUse]:
    """torch's intra-op threads inside the block: `fixed`, or following the cores free now
    (None); torch's setting is restored after. Yields how many threads were used (filled in
    when the block ends)."""
    global _FOLLOWER
    before = torch.get_num_threads()
    if fixed is not None:
        torch.set_num_threads(fixed)
        use = ThreadUse(True, fixed, fixed, float(fixed))
        try:
            yield use
        finally:
            torch.set_num_threads(before)
        return
    follower = _Follower(usable_cores())
    time.sleep(FIRST_LOOK)
    follower.tick(force=True)
    follower.use.least = follower.use.most = follower.threads  # before the load was seen
    _FOLLOWER = follower
    try:
        yield follower.use
    finally:
        _FOLLOWER = None
        follower.finish()
        torch.set_num_threads(before)
