"""What the plan is decided from besides the options: facts about the model (read off its trace),
about the data, and about the machine (measured only when a decision needs them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import fx

from ..graph import count
from ..graph.capture import get_tensor
from ..graph.groups import PrunableGroup
from ..graph.ops import HOMOGENEOUS
from ..graph.trace import Trace
from ..io.cores import usable_cores
from ..measure.widths import Kernel, WidthMultiple, preferred_multiple
from ..prune.factor import candidates
from ..prune.error import ranks_by_error, read_by_one_linear


@dataclass(frozen=True)
class GroupFacts:
    """One prunable group: its width, what its units are, and how they are read."""

    name: str
    width: int
    conv: bool  # convolution channels (else Linear neurons)
    tokens: bool  # features of tokens, each unit counted once per token
    relu: bool  # read through ReLUs only
    mergeable: bool  # neuron merging is exact for it
    activation: str  # the activation the units are read through (for messages)
    one_linear: bool = True  # read by one Linear layer directly (what the error criterion needs)


@dataclass(frozen=True)
class LayerFacts:
    """A Linear layer that factoring could split: its name and shape."""

    name: str
    in_features: int
    out_features: int


@dataclass(frozen=True)
class ModelFacts:
    """What the plan needs to know about the model.

    Attributes:
        groups: the prunable groups the criterion ranks.
        linear: every group's units are read by one Linear layer directly (what the error
            criterion needs).
        weights: weight entries of every Linear and Conv layer.
        factorable: pruned Linear layers whose inputs no group owns (an MLP's first layer).
        stream: the residual stream, where the trace followed it (`--prune-stream`: it is
            cut by its own share, not ranked with the groups).
        flops: FLOPs per sample of the model as it is (`count.flops`).
    """

    groups: tuple[GroupFacts, ...]
    linear: bool
    weights: int
    factorable: tuple[LayerFacts, ...] = ()
    stream: GroupFacts | None = None
    flops: int = 0

    @property
    def channels(self) -> bool:
        return any(g.conv for g in self.groups)

    @property
    def tokens(self) -> bool:
        return any(g.tokens for g in self.groups)

    @property
    def relu(self) -> bool:
        return all(g.relu for g in self.groups)


@dataclass(frozen=True)
class DataFacts:
    """Whether there is data, and labels to fine-tune on."""

    present: bool
    labelled: bool = False


@dataclass(frozen=True)
class ThreadFacts:
    """What decides torch's thread count: the cores this process may use, and a setting of
    the user's own (OMP_NUM_THREADS, or torch.set_num_threads before the run)."""

    usable: int
    user: int | None = None  # the user's own thread count, if they set one
    how: str = ""  # how they set it


class Machine(Protocol):
    """The machine's facts the plan may ask for."""

    def width_step(self, kernel: Kernel) -> WidthMultiple:
        """The step `kernel` runs in on this machine."""

    def threads(self) -> ThreadFacts:
        """The cores for torch, and the user's own thread setting."""


class ThisMachine:
    """This machine: width steps measured by `compressor.measure.widths` on first use (then
    cached per CPU); the cores it may use now."""

    def __init__(self) -> None:
        self._steps: dict[Kernel, WidthMultiple] = {}

    def width_step(self, kernel: Kernel) -> WidthMultiple:
        if kernel not in self._steps:
            self._steps[kernel] = preferred_multiple(kernel)
        return self._steps[kernel]

    def threads(self) -> ThreadFacts:
        usable, current = usable_cores(), torch.get_num_threads()
        if os.environ.get("OMP_NUM_THREADS"):
            return ThreadFacts(usable, current, "OMP_NUM_THREADS")
        if current != _affinity():  # torch starts with one thread per core it may run on
            return ThreadFacts(usable, current, "torch.set_num_threads")
        return ThreadFacts(usable)


def model_facts(gm: fx.GraphModule, found: Trace) -> ModelFacts:
    """The facts of the working graph `gm` and its trace."""
    facts = {g.name: GroupFacts(g.name, g.size, get_tensor(gm, g.weights[0].param).ndim > 2,
                                g.tokens, g.relu, g.mergeable, _read_through(g),
                                read_by_one_linear(gm, g)) for g in found.groups}
    ranked = tuple(g for g in found.groups if not g.stream)
    stream = next((replace(facts[g.name], conv=False)  # read by Linear layers, token by token
                   for g in found.groups if g.stream), None)
    layers = {layer.name: layer for layer in found.layers}
    factorable = tuple(LayerFacts(name, layers[name].in_features, layers[name].out_features)
                       for name in candidates(gm, found))
    return ModelFacts(tuple(facts[g.name] for g in ranked), ranks_by_error(gm, ranked),
                      count.weights(gm, found), factorable, stream, count.flops(gm, found))


def _read_through(group: PrunableGroup) -> str:
    """What a group's units pass on their way to the next layers, as messages name it: the
    first activation merging is not exact for, else an unfolded BatchNorm, else the
    activation."""
    inexact = [k for k in group.kinds if k not in HOMOGENEOUS]
    if inexact:
        return inexact[0]
    return "an unfolded BatchNorm" if group.carried else group.kinds[0]


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cuda_available() -> bool:
    return torch.cuda.is_available()
