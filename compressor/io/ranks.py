"""Work shared by the processes of a torch.distributed group (`torchrun --nproc-per-node N -m
compressor ...`, or the API called inside a group the caller initialised).

Every process runs the whole pipeline on the same data. Calibration passes read every N-th
batch (`mine`) and sum their statistics over the group (`summed`), so every process selects the
same units; fine-tuning runs under DistributedDataParallel, each process reading its share of
every epoch (DistributedSampler); rank 0 alone exports, verifies, measures and writes.
torch.distributed does all communication; without a group everything here is the identity."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist

from ..errors import OptionError

_JOINED = False  # whether `join` initialised the group this process is in


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def lead() -> bool:
    """Whether this process is the one that reports and writes (rank 0)."""
    return rank() == 0


def join(device: str) -> bool:
    """Join the group torchrun describes in the environment (WORLD_SIZE > 1) unless one is
    initialised already: gloo on the CPU, nccl with `device` cuda (each process on the GPU
    of its LOCAL_RANK). Returns whether this process is in a group of more than one."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return size() > 1
    if not dist.is_initialized():
        cuda = device.startswith("cuda")
        if cuda:
            if not torch.cuda.is_available():
                raise OptionError("--device cuda: no CUDA device is available here: drop "
                                  "--device or run on a machine with GPUs")
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # imported once the group is up, torch._dynamo (torch.export's tracer, and
        # DistributedDataParallel's) keeps the group alive past destroy_process_group, and
        # its gloo threads still running at exit could abort the process ("terminate called
        # without an active exception")
        from torch import _dynamo  # noqa: F401
        dist.init_process_group("nccl" if cuda else "gloo")
        global _JOINED
        _JOINED = True
    return size() > 1


def leave() -> None:
    """Leave the group `join` initialised (one the caller initialised stays), all its
    processes together, so that none exits while another still talks to it. Called after
    the group's work only; after an error nobody waits here (torchrun ends the others)."""
    global _JOINED
    if _JOINED and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _JOINED = False


def mine(starts: Iterable[int]) -> Iterator[int]:
    """This process's share of a pass's batch starts: every size()-th, from its rank."""
    r, n = rank(), size()
    for i, start in enumerate(starts):
        if i % n == r:
            yield start


def summed(*tensors: torch.Tensor) -> None:
    """Each tensor replaced in place by its sum over the group (no-op alone)."""
    if size() == 1:
        return
    nccl = dist.get_backend() == "nccl"
    for t in tensors:
        if not t.numel():
            continue
        moved = t.cuda() if nccl else t
        dist.all_reduce(moved)
        if moved is not t:
            t.copy_(moved)


def total(value: float) -> float:
    """`value` summed over the group."""
    if size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    summed(t)
    return float(t)


def from_lead(value):
    """Rank 0's `value` on every process (a picklable object; itself alone). Selections are
    sent so, so that a float rounded differently on one process can never give the processes
    models of different widths."""
    if size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
