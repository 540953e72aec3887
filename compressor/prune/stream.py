"""The residual stream's cut (`--prune-stream`): its share of the width, decided apart from the
other groups' ranking (its units are read through normalizations over them, which no other
group's criterion models), in its principal directions where it was rotated
(`compressor.prune.rotate`), else in its own features by their energy."""

from __future__ import annotations

import math

import torch
from torch import fx

from ..graph.groups import PrunableGroup, unit_rows
from . import rotate
from .calibrate import ActivationStats


def principal_directions(gm: fx.GraphModule, groups: tuple[PrunableGroup, ...],
                         calib: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Per residual stream read through RMSNorms alone (made so by `rotate.make_invariant`
    before pruning, or so written), rotated to its principal directions: their eigenvalues.
    A stream read through LayerNorms (it could not be made invariant) keeps its features."""
    out = {}
    for g in groups:
        if g.stream and calib is not None and rotate.why_not(gm, g) is None and \
                all(n.target is rotate.RMS_NORM for n in rotate.norms_of(gm, g)):
            out[g.name] = rotate.rotate(gm, g, calib)
    return out


def stream_cuts(gm: fx.GraphModule, groups: tuple[PrunableGroup, ...],
                stats: ActivationStats | None, original: dict[str, int], share: float,
                align: int | dict[str, int],
                principal: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per residual stream, the units to remove so that it keeps 1 - `share` of its
    `original` width (rounded to its `align` multiple): the lowest eigenvalues where it was
    rotated (`principal`), else the lowest root mean square over every token where it is
    counted, else (no calibration data) the lowest norm of their rows."""
    cuts = {}
    for g in groups:
        if not g.stream:
            continue
        multiple = align.get(g.name, 1) if isinstance(align, dict) else align
        keep = min(width(original[g.name], share, multiple), g.size)
        scores = principal.get(g.name)
        if scores is None:
            scores = torch.linalg.vector_norm(unit_rows(gm, g), dim=1) if stats is None \
                else stats.squares[g.name].sqrt()
        order = sorted(range(g.size), key=lambda u, s=scores: (float(s[u]), u))
        cuts[g.name] = torch.tensor(sorted(order[:g.size - keep]), dtype=torch.int64)
    return cuts


def width(original: int, share: float, multiple: int) -> int:
    """The width a stream keeps when it loses `share` of `original`: the nearest multiple of
    `multiple` (halfway: the wider; at least one multiple)."""
    step = multiple if multiple > 1 and original >= multiple else 1
    return max(step, math.floor(original * (1 - share) / step + 0.5) * step)
