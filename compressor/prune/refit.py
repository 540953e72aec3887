"""The least-squares refit (`lsq`) of every layer that reads removed units, in one pass.

The calibration samples run through the pruned graph and its unpruned reference side by side,
op by op in graph order; at each layer to refit, its inputs in the pruned graph (every layer
before it already pruned and refitted) are regressed on its outputs in the reference, the
layer takes the fitted weights, and the pass goes on through it. One pass instead of two per
layer; the samples are as many as the activations kept alive at once allow."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import fx

from ..graph import sizes
from ..graph.capture import get_tensor, set_tensor
from ..graph.groups import Slice
from ..graph.ops import CONV
from ..io.memory import give_back
from .lsq import MAX_ROWS, Moments, patch_rows

MAX_COLUMNS = 8192  # a layer reading more kept inputs is refitted by the mean rule (memory)
CHUNK_ROWS = 8192  # regression rows built at a time


@dataclass(frozen=True)
class Refit:
    """A layer to refit: its bias tensor and the input columns (features or channels) that go."""

    bias: str
    dropped: torch.Tensor


def refit_in_order(gm: fx.GraphModule, reference: fx.GraphModule, refits: dict[str, Refit],
                   x: torch.Tensor, *, ridge: float, device: str = "cpu",
                   progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Refit the layers `refits` names (Linear or 2-D convolution nodes) in graph order, each
    on what it reads in `gm` with every earlier refit made, towards its output in `reference`
    (the graph before this round of pruning: same names and shapes). The dropped columns
    become zero. A layer reading more than MAX_COLUMNS kept inputs (per group), or no fewer
    than the regression has rows, is given the mean rule instead: its bias takes up the
    dropped inputs' mean contribution.

    Returns:
        The layers the mean rule compensated.
    """
    nodes = list(gm.graph.nodes)
    samples = _samples(nodes, x.shape[0])
    last = {n.name: i for i, node in enumerate(nodes) for n in node.all_input_nodes}
    ref_nodes = {n.name: n for n in reference.graph.nodes}
    pruned, ref, done, by_mean = {}, {}, 0, []
    with torch.no_grad():
        for i, node in enumerate(nodes):
            if node.op == "placeholder":
                pruned[node.name] = ref[node.name] = x[:samples].to(device)
            elif node.op in ("call_function", "call_method"):
                ref[node.name] = _run(ref_nodes[node.name], reference, ref)
                if node.name in refits:
                    give_back()  # the last layer's sums, before this one's
                    if not _fit(gm, reference, node, refits[node.name], pruned, ref, ridge):
                        by_mean.append(node.name)
                    done += 1
                    if progress is not None:
                        progress(done, len(refits))
                pruned[node.name] = _run(node, gm, pruned)
            elif node.op == "output":
                break
            for gone in [n for n in pruned if last.get(n, -1) <= i]:
                pruned.pop(gone)
                ref.pop(gone, None)
    return by_mean


def _samples(nodes: list[fx.Node], available: int) -> int:
    """How many samples the pass runs: as many as fit PROBE_BYTES with the largest
    activations of both graphs alive (four of them at once, a residual block's worth)."""
    largest = max((sizes.per_sample(node) for node in nodes), default=1)
    bytes_per_sample = 2 * 4 * largest * 4  # two graphs, four tensors, float32
    return max(1, min(available, sizes.PROBE_BYTES // bytes_per_sample))


def _run(node: fx.Node, owner: fx.GraphModule, env: dict[str, object]) -> object:
    """`node` evaluated on `env` (values by node name), its parameters read from `owner` now
    (a refit may have replaced them)."""
    def value(arg):
        if isinstance(arg, fx.Node):
            return get_tensor(owner, arg.target) if arg.op == "get_attr" else env[arg.name]
        if isinstance(arg, (list, tuple)):
            return type(arg)(value(a) for a in arg)
        return arg

    args, kwargs = [value(a) for a in node.args], {k: value(v) for k, v in node.kwargs.items()}
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return node.target(*args, **kwargs)


def _fit(gm: fx.GraphModule, reference: fx.GraphModule, node: fx.Node, refit: Refit,
         pruned: dict, ref: dict, ridge: float) -> bool:
    """Refit `node`'s weights and bias; False where its width asked for the mean rule."""
    param = node.args[1].target
    w = get_tensor(gm, param).detach()
    conv = node.target in CONV
    groups = int(node.args[6]) if conv and len(node.args) > 6 else 1
    taps = math.prod(w.shape[2:]) if conv else 1
    stays = torch.ones(w.shape[1], dtype=torch.bool)
    stays[refit.dropped.to(torch.int64)] = False
    own = Slice(param, 1, taps).entries(stays.nonzero().flatten())  # within a group's weight
    a_all = pruned[node.args[0].name]
    out_ref = ref[node.name]
    outputs = out_ref.shape[1] if conv else out_ref.shape[-1]
    fit_rows = min(MAX_ROWS, out_ref.numel() // max(1, outputs))
    # too wide for the sums' memory, or fewer rows than unknowns (a classifier after global
    # pooling reads one row per sample): least squares would fit the calibration set's noise
    if own.numel() > MAX_COLUMNS or fit_rows <= own.numel():
        w_ref = get_tensor(reference, param).detach().reshape(w.shape[0], -1)
        _mean_rule(gm, node, refit, a_all, w_ref, stays, taps, groups)
        return False
    rows = patch_rows(node, w.shape) if conv else _linear_rows(w.shape[1])
    z_all = (out_ref.movedim(1, -1) if conv else out_ref).reshape(-1, outputs)
    per_sample = z_all.shape[0] // out_ref.shape[0]  # output pixels or tokens
    share = min(1.0, MAX_ROWS / max(1, z_all.shape[0]))
    chosen = None if share >= 1.0 else \
        torch.rand(z_all.shape[0], generator=torch.Generator().manual_seed(0)) < share
    per_in, per_out = w.shape[1], w.shape[0] // groups
    columns = [Slice(param, 1, taps).entries(k * per_in + stays.nonzero().flatten())
               for k in range(groups)]
    outs = [slice(k * per_out, (k + 1) * per_out) for k in range(groups)]
    moments = [Moments(cols.numel(), per_out) for cols in columns]
    step = max(1, CHUNK_ROWS // per_sample)
    for start in range(0, out_ref.shape[0], step):  # a few thousand rows at a time
        rows_here = slice(start * per_sample, (start + step) * per_sample)
        mask = None if chosen is None else chosen[rows_here]
        a = rows(a_all[start:start + step].cpu(), mask)
        z = z_all[rows_here].cpu() if mask is None else z_all[rows_here].cpu()[mask]
        for k, part in enumerate(moments):  # a grouped convolution's groups alone
            part.add(a[:, columns[k]], z[:, outs[k]])
    new = w.to(torch.float64, copy=True).reshape(w.shape[0], -1)  # the priors, then the fit
    priors = [new[outs[k]][:, own].T for k in range(groups)]
    new.zero_()
    bias = torch.zeros(w.shape[0], dtype=torch.float64)
    for k, part in enumerate(moments):
        fitted, bias[outs[k]] = part.solve(priors[k], ridge)
        new[outs[k]].index_copy_(1, own, fitted.T)
    set_tensor(gm, param, new.reshape(w.shape).to(w.dtype))
    set_tensor(gm, refit.bias, bias.to(get_tensor(gm, refit.bias).dtype))
    return True


def _linear_rows(features: int):
    return lambda a, chosen: (a.reshape(-1, features) if chosen is None
                              else a.reshape(-1, features)[chosen])


def _mean_rule(gm: fx.GraphModule, node: fx.Node, refit: Refit, a: torch.Tensor,
               w_ref: torch.Tensor, stays: torch.Tensor, taps: int, groups: int) -> None:
    """The dropped inputs' mean, through the reference weights, into the bias (their columns
    are already zero)."""
    channels = a.shape[1] if node.target in CONV else a.shape[-1]
    mean = (a.movedim(1, -1) if node.target in CONV else a).reshape(-1, channels).double().mean(0)
    dropped = (~stays).nonzero().flatten()
    contribution = torch.zeros(w_ref.shape[0], dtype=torch.float64)
    per_in, per_out = stays.numel(), w_ref.shape[0] // groups
    for k in range(groups):
        outs = slice(k * per_out, (k + 1) * per_out)
        cols = Slice("", 1, taps).entries(dropped)
        inputs = (k * per_in + dropped).repeat_interleave(taps)
        contribution[outs] = w_ref[outs][:, cols].double() @ mean[inputs.cpu()]
    bias = get_tensor(gm, refit.bias)
    set_tensor(gm, refit.bias, (bias.double() + contribution).to(bias.dtype))
