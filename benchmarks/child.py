"""A benchmark's command in a child process: exit code, wall seconds, peak memory, last error.

The peak is the command's own. Linux carries a process's resident memory at fork into the
peak its child reports after exec, so a child forked from a benchmark that holds gigabytes
(a model it exported itself) would report at least that. The command is therefore started by
a small launcher process, whose fork copies almost nothing, and the launcher reports the peak
of what it waited for (the largest of the command's own processes: torchrun's workers).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

LAUNCHER = """
import json, os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump([os.waitstatus_to_exitcode(status), usage.ru_maxrss], out)
"""


@dataclass(frozen=True)
class Child:
    code: int  # exit code; -1: no answer within the timeout
    wall: float  # seconds
    peak: float | None  # GB resident at most (None after a timeout)
    error: str  # the last line of its stderr when it failed


def run(cmd: list[str], *, cwd: str | os.PathLike, env: dict[str, str] | None = None,
        timeout: float | None = None) -> Child:
    """Run `cmd` (stdout discarded) and measure it."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile("w+") as err:
        result = os.path.join(tmp, "usage.json")
        process = subprocess.Popen([sys.executable, "-c", LAUNCHER, result, *cmd], cwd=cwd,
                                   env={**os.environ, **(env or {})},
                                   stdout=subprocess.DEVNULL, stderr=err,
                                   start_new_session=True)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return Child(-1, round(time.perf_counter() - start, 1), None,
                         f"no answer in {timeout:g} s")
        wall = round(time.perf_counter() - start, 1)
        with open(result) as usage:
            code, kilobytes = json.load(usage)
        err.seek(0)
        lines = [line for line in err.read().splitlines() if line.strip()]
    return Child(code, wall, round(kilobytes / 1e6, 2),
                 lines[-1][:200] if code and lines else "")
