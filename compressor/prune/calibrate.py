"""Activation counters (paper Algorithm 2): per unit, how often it fires. A neuron has one
position per sample; a conv channel has one per output pixel and a transformer's hidden unit
one per token, so its count runs over samples x positions, and units are ranked by their
firing rate.

A unit read through a ReLU fires where its output is non-zero (the paper's definition, exact:
a unit that never fires outputs zero everywhere). Other activations (GELU, SiLU, Tanh, ...)
are never exactly zero, so a unit fires where its output's magnitude exceeds `FIRING` times
its group's mean magnitude (measured on the first calibration batch): a unit that never fires
is one whose output stays below 1% of what its neighbours typically output."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import fx

from ..graph.capture import on_device, outputs_of
from ..graph.groups import PrunableGroup
from ..graph.sizes import samples_per_pass
from ..io.cores import batch_starts
from ..io.ranks import mine, size, summed
from .error import ConsumerSums

Progress = Callable[[int, int], None]
FIRING = 0.01  # non-ReLU units fire above this fraction of their group's mean |output|


@dataclass(frozen=True)
class ActivationStats:
    """Per group: `counts` (how often each unit fires, over samples x positions x the group's
    counted nodes), `positions` (positions per sample summed over those nodes), and per unit
    its `means`, mean magnitudes (`magnitudes`, mean |h|) and `squares` (mean h²) over
    `samples` calibration samples and their positions."""

    counts: dict[str, torch.Tensor]
    means: dict[str, torch.Tensor]
    samples: int
    positions: dict[str, int] = field(default_factory=dict)
    magnitudes: dict[str, torch.Tensor] = field(default_factory=dict)
    squares: dict[str, torch.Tensor] = field(default_factory=dict)

    def dead(self, group: str) -> int:
        """Units that never fired anywhere."""
        return int((self.counts[group] == 0).sum())

    def rate(self, group: str) -> torch.Tensor:
        """Per unit, the share of samples x positions on which it fired (float64)."""
        total = max(self.samples, 1) * self.positions.get(group, 1)
        return self.counts[group].double() / total


def count_activations(gm: fx.GraphModule, groups: tuple[PrunableGroup, ...], x: torch.Tensor, *,
                      batch_size: int = 1000, progress: Progress | None = None,
                      device: str = "cpu",
                      consumers: ConsumerSums | None = None) -> ActivationStats:
    """Count, for every unit of every group, the samples of `x` on which it fires.

    Args:
        gm: the working graph.
        groups: the groups whose activation nodes are counted.
        x: calibration inputs.
        batch_size: the most samples per forward pass (fewer where the counted activations
            would not fit `samples_per_pass`'s bound).
        progress: called with (samples done, total) after each batch.
        device: where the forward passes run (counts are kept on the CPU).
        consumers: the error criterion's sums, fed by the same passes (what the consumers
            read is probed beside the activations) instead of passes of their own.

    Returns:
        Counts and mean activations accumulated over all batches (in a torch.distributed
        group, over every process's share of them: the same on every process).
    """
    nodes = list(dict.fromkeys(name for g in groups for name in g.activations))
    probed = list(dict.fromkeys(nodes + (consumers.inputs if consumers else [])))
    probe = outputs_of(gm, probed)
    batch_size = samples_per_pass(gm, probed, batch_size)
    counts = {g.name: torch.zeros(g.size, dtype=torch.int64) for g in groups}
    sums = {key: {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups}
            for key in ("h", "|h|", "h²")}
    positions = {g.name: 0 for g in groups}
    n = int(x.shape[0])
    with torch.no_grad(), on_device(probe, device):
        thresholds = _thresholds(groups, probe, probed, x[:batch_size].to(device)) \
            if size() > 1 and not all(g.relu for g in groups) else {}
        first = True
        for start in mine(batch_starts(n, batch_size)):
            batch = min(batch_size, n - start)
            outputs = dict(zip(probed, probe(x[start:start + batch_size].to(device))))
            for g in groups:
                for k, name in enumerate(g.activations):
                    per_unit = g.units_of(k, outputs[name])  # [B', units, positions]
                    share = batch / per_unit.shape[0]  # 1 unless the batch axis is not first
                    if g.relu:
                        counts[g.name] += (per_unit != 0).sum(dim=(0, 2)).cpu()
                    else:
                        if name not in thresholds:
                            thresholds[name] = _threshold(per_unit)
                        counts[g.name] += (per_unit.abs() > thresholds[name]).sum(
                            dim=(0, 2)).cpu()
                    h = per_unit  # summed in float64, never copied whole in it
                    for key, value in (("h", h), ("|h|", h.abs()), ("h²", h * h)):
                        sums[key][g.name] += (value.sum(dim=2, dtype=torch.float64).sum(dim=0)
                                              / value.shape[2] * share /
                                              len(g.activations)).cpu()
                    if first:
                        positions[g.name] += per_unit.shape[2] * per_unit.shape[0] // batch
            if consumers is not None:
                consumers.add(outputs)
            first = False
            if progress is not None:
                progress(min(start + batch_size, n), n)
    summed(*counts.values(), *(v for by in sums.values() for v in by.values()))
    if size() > 1:  # a process without a batch has no positions; the others all have them
        widest = torch.tensor(list(positions.values()), dtype=torch.int64)
        torch.distributed.all_reduce(widest, op=torch.distributed.ReduceOp.MAX)
        positions = dict(zip(positions, widest.tolist()))
    means = {key: {k: v / max(n, 1) for k, v in by.items()} for key, by in sums.items()}
    return ActivationStats(counts, means["h"], n, positions, means["|h|"], means["h²"])


def _threshold(per_unit: torch.Tensor) -> float:
    return FIRING * float(per_unit.abs().double().mean())


def _thresholds(groups: tuple[PrunableGroup, ...], probe: fx.GraphModule, nodes: list[str],
                first: torch.Tensor) -> dict[str, float]:
    """The firing thresholds of non-ReLU units, from the first calibration batch: in a group of
    processes each reads it, so that all count with the thresholds a single process would."""
    outputs = dict(zip(nodes, probe(first)))
    return {name: _threshold(g.units_of(k, outputs[name])) for g in groups if not g.relu
            for k, name in enumerate(g.activations)}
