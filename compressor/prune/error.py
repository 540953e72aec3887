"""The error criterion: per unit, the output error its consumer is left with when units are
removed greedily with least-squares refits (Optimal Brain Surgeon on one Linear consumer), from
the covariance of the units' activations on calibration data (`ConsumerSums`, taken in its own
pass or in the counting pass)."""

from __future__ import annotations

import torch
from torch import fx

from ..graph.capture import get_tensor, on_device, outputs_of
from ..graph.groups import PrunableGroup
from ..graph.ops import LINEAR
from ..graph.sizes import samples_per_pass
from ..io.cores import batch_starts
from ..io.ranks import mine
from .lsq import Moments

Problems = dict[str, tuple[torch.Tensor, torch.Tensor]]  # per group: covariance, weights


def removal_errors(gm: fx.GraphModule, groups: tuple[PrunableGroup, ...], x: torch.Tensor, *,
                   ridge: float, batch_size: int = 1000, device: str = "cpu",
                   problems: Problems | None = None) -> dict[str, torch.Tensor]:
    """Per group, per unit: the error its consumer's output is left with if units are removed
    greedily, cheapest first, each removal followed by the optimal least-squares refit of the
    remaining columns (Optimal Brain Surgeon on the consumer: removing unit p costs
    ‖W[:, p]‖² / [H⁻¹]ₚₚ, H the covariance of the group's activations). Groups of up to
    EXACT_UP_TO units are ranked one unit per step, wider ones in blocks (`greedy_errors`).

    A unit's score is the cumulative error at its turn, as a fraction of the consumer's output
    variance, so scores grow along each group's greedy order and compare across groups. Where
    every group is over tokens (a transformer's feed-forward units and heads, whose consumers
    all write into the one residual stream), the error stays in the stream's own units: a
    fraction of the attention's output would otherwise weigh as much as the same fraction of a
    feed-forward block's, whatever each adds to the stream (measured in docs/method.md).

    `problems`, where given, are the covariances and weights already taken
    (`ConsumerSums.problems`); else a pass over `x` takes them."""
    if problems is None:
        problems = consumer_problems(gm, groups, x, batch_size=batch_size, device=device)
    blocks = {g.name: g.consumers[0].block for g in groups}
    stream = all(g.tokens for g in groups)
    scores = {}
    for name, (cov, w) in problems.items():
        scores[name] = greedy_errors(cov, w, ridge, steps=None if w.shape[1] <= EXACT_UP_TO
                                     else STEPS) if blocks[name] == 1 else \
            greedy_block_errors(cov, w, ridge, blocks[name])
        if stream:
            scores[name] = scores[name] * _output_energy(cov, w)
    return scores


def _output_energy(cov: torch.Tensor, w: torch.Tensor) -> float:
    """tr(W cov Wᵀ): the consumer's output energy, what `greedy_errors` divides by."""
    return max(float(torch.einsum("oi,ij,oj->", w, cov, w)), torch.finfo(cov.dtype).tiny)


class ConsumerSums:
    """The sums the error criterion needs, per group: the second moments of what its one
    Linear consumer reads (a row per sample and token; a unit of `block` columns has `block`
    of them). `inputs` names the nodes whose outputs `add` takes, so that a pass taken for
    another reason (counting activations) can feed it."""

    def __init__(self, gm: fx.GraphModule, groups: tuple[PrunableGroup, ...]) -> None:
        for g in groups:
            if not read_by_one_linear(gm, g):
                raise ValueError(f"the error criterion cannot rank the units of {g.name}: it "
                                 "needs exactly one Linear that reads them directly")
        self.groups = groups
        self.inputs = [_node(gm, g.consumer_nodes[0]).args[0].name for g in groups]
        self.columns = [g.consumers[0].entries(torch.arange(g.size)) for g in groups]
        self.moments = [Moments(c.numel()) for c in self.columns]

    def add(self, outputs: dict[str, torch.Tensor]) -> None:
        """Add one batch: `outputs` holds at least the value of every node in `inputs`."""
        for m, name, c in zip(self.moments, self.inputs, self.columns):
            a = outputs[name]
            rows = a.cpu().reshape(-1, a.shape[-1])[:, c]  # a row per sample and token
            m.add(rows)

    def problems(self, gm: fx.GraphModule) -> Problems:
        """Per group: the covariance of its units' activations (float64; summed over a
        torch.distributed group) and its consumer's weights [outputs, units x block]. The
        sums are spent."""
        problems = {}
        for g, m, c in zip(self.groups, self.moments, self.columns):
            m.reduce()
            s = g.consumers[0]
            w = get_tensor(gm, s.param).detach().double().movedim(s.axis, -1)
            problems[g.name] = (m.covariance(), w.reshape(-1, w.shape[-1])[:, c])
        return problems


def consumer_problems(gm: fx.GraphModule, groups: tuple[PrunableGroup, ...], x: torch.Tensor,
                      *, batch_size: int = 1000, device: str = "cpu") -> Problems:
    """`ConsumerSums.problems` over `x`, in a pass of its own; the consumer must be one
    Linear."""
    sums = ConsumerSums(gm, groups)
    probe = outputs_of(gm, sums.inputs)
    batch_size = samples_per_pass(gm, sums.inputs, batch_size)
    with torch.no_grad(), on_device(probe, device):
        for start in mine(batch_starts(x.shape[0], batch_size)):
            sums.add(dict(zip(sums.inputs, probe(x[start:start + batch_size].to(device)))))
    return sums.problems(gm)


def ranks_by_error(gm: fx.GraphModule, groups: tuple[PrunableGroup, ...]) -> bool:
    """Whether the error ranking applies: every group's units are read by one Linear layer
    directly (not a convolution, a Flatten or a residual join)."""
    return all(read_by_one_linear(gm, g) for g in groups)


def read_by_one_linear(gm: fx.GraphModule, g: PrunableGroup) -> bool:
    """Whether one Linear layer reads the group's units directly."""
    return len(g.consumers) == 1 and g.consumers[0].parts == 1 and \
        _node(gm, g.consumer_nodes[0]).target is LINEAR and \
        (g.consumers[0].block == 1 or "heads" in g.kinds)


EXACT_UP_TO = 512  # wider groups are ranked in blocks
STEPS = 64  # the blocked ranking removes about 1/STEPS of the remaining units per step


def greedy_errors(cov: torch.Tensor, w: torch.Tensor, ridge: float, *,
                   steps: int | None = STEPS) -> torch.Tensor:
    """Greedy Optimal Brain Surgeon removal on a consumer with weights `w` [outputs, units]
    whose inputs have covariance `cov`; returns each unit's cumulative error at its turn.

    Each step removes the ceil(alive / `steps`) cheapest units at once (one unit per step
    when `steps` is None: the exact greedy, the reference), charges their joint cost
    tr(W_P [H⁻¹]_PP⁻¹ W_Pᵀ), refits the remaining columns and updates H⁻¹ of the remaining
    units by a rank-|P| Schur complement, never refactoring. The kept inverse shrinks as
    units go, so a 4096-wide layer takes about 64 · ln(4096) ≈ 530 matrix-product steps
    instead of 4096 rank-one passes over the full matrix. Within a block, units are charged
    in the order of their single costs, each its share of the block's joint cost."""
    scale = float(torch.diagonal(cov).mean())
    lam = ridge * scale if scale > 0 else ridge
    n = cov.shape[0]
    system = cov + lam * torch.eye(n, dtype=cov.dtype)
    factor, info = torch.linalg.cholesky_ex(system)
    hinv = torch.cholesky_inverse(factor) if int(info) == 0 else torch.linalg.pinv(system)
    w = w.clone()
    total = _output_energy(cov, w)
    alive = torch.arange(n)  # original index of each remaining unit
    scores = torch.zeros(n, dtype=torch.float64)
    error = 0.0
    while alive.numel():
        cost = (w ** 2).sum(0) / torch.diagonal(hinv)
        k = 1 if steps is None else -(-alive.numel() // steps)
        order = torch.sort(cost, stable=True).indices  # equals go in index order
        chosen, keep = order[:k], order[k:].sort().values
        h_pp = hinv[chosen][:, chosen]
        w_p = w[:, chosen]
        if k == 1:
            joint = cost[chosen]
            step = hinv[chosen][:, keep] / h_pp  # [1, kept]
        else:
            factor, info = torch.linalg.cholesky_ex(h_pp)
            inverse = torch.cholesky_inverse(factor) if int(info) == 0 else torch.linalg.pinv(h_pp)
            joint = ((w_p @ inverse) * w_p).sum().reshape(1)
            step = inverse @ hinv[chosen][:, keep]  # [k, kept]
        shares = cost[chosen].clamp(min=0)
        shares = shares / shares.sum() if float(shares.sum()) > 0 else \
            torch.full_like(shares, 1 / k)
        for unit, share in zip(alive[chosen].tolist(), shares.tolist()):
            error += share * float(joint.clamp(min=0).sum())
            scores[unit] = error / total
        w = w[:, keep].addmm_(w_p, step, alpha=-1)
        hinv = hinv[keep[:, None], keep].addmm_(hinv[keep[:, None], chosen], step, alpha=-1)
        alive = alive[keep]
    return scores


def greedy_block_errors(cov: torch.Tensor, w: torch.Tensor, ridge: float,
                        block: int) -> torch.Tensor:
    """`greedy_errors` for units of `block` consecutive columns each (attention heads read by
    the output projection): one unit per step, the one whose columns cost least together,
    tr(W_P [H⁻¹]_PP⁻¹ W_Pᵀ); the remaining columns refitted and H⁻¹ updated by a Schur
    complement. Returns each unit's cumulative error at its turn, over the output variance."""
    scale = float(torch.diagonal(cov).mean())
    lam = ridge * scale if scale > 0 else ridge
    n = cov.shape[0]
    hinv = torch.linalg.pinv(cov + lam * torch.eye(n, dtype=cov.dtype))
    total = _output_energy(cov, w)
    units = n // block
    alive = list(range(units))
    cols = {u: torch.arange(u * block, (u + 1) * block) for u in range(units)}
    keep_cols = torch.arange(n)  # the columns of `w` and `hinv`, by original index
    w = w.clone()
    scores, error = torch.zeros(units, dtype=torch.float64), 0.0
    while alive:
        position = {int(c): i for i, c in enumerate(keep_cols)}
        costs = []
        for u in alive:
            p = torch.tensor([position[int(c)] for c in cols[u]])
            inverse = torch.linalg.pinv(hinv[p][:, p])
            costs.append(float(((w[:, p] @ inverse) * w[:, p]).sum()))
        best = min(range(len(alive)), key=lambda i: (costs[i], alive[i]))
        unit = alive.pop(best)
        error += max(costs[best], 0.0)
        scores[unit] = error / total
        p = torch.tensor([position[int(c)] for c in cols[unit]])
        keep = torch.tensor([i for i in range(keep_cols.numel()) if i not in set(p.tolist())],
                            dtype=torch.int64)
        step = torch.linalg.pinv(hinv[p][:, p]) @ hinv[p][:, keep]
        w = w[:, keep] - w[:, p] @ step
        hinv = hinv[keep[:, None], keep] - hinv[keep[:, None], p] @ step
        keep_cols = keep_cols[keep]
    return scores


def _node(gm: fx.GraphModule, name: str) -> fx.Node:
    return next(n for n in gm.graph.nodes if n.name == name)
