"""Least squares: the regression sums and the ridge solve a refit needs, the rows a layer's
input makes (patches for a convolution), and the error criterion (the output error a greedy
removal with refits leaves)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import fx

from ..graph.capture import get_tensor, on_device, outputs_of
from ..graph.groups import PrunableGroup
from ..graph.ops import LINEAR
from ..graph.sizes import samples_per_pass
from ..io.cores import batch_starts
from ..io.ranks import mine, summed

MAX_ROWS = 100_000  # regression rows per refit (a row per sample and output pixel or token)


def patch_rows(layer: fx.Node, shape: torch.Size):
    """How a layer's input becomes regression rows: one per sample (and token) for a Linear,
    one per sample and output pixel (its kh x kw patch of every input channel, channel-major
    like F.unfold) for a convolution (a 1-D one as a 2-D one of height 1), of which only the
    `chosen` ones (a mask over samples x pixels) are built."""
    if layer.target is LINEAR:
        return lambda a, chosen: a.reshape(-1, shape[1]) if a.ndim > 2 else \
            a.reshape(a.shape[0], -1)
    one_d = len(shape) == 3
    stride, padding, dilation = (_pair(layer.args[i] if len(layer.args) > i else d, one_d, d)
                                 for i, d in ((3, 1), (4, 0), (5, 1)))
    kh, kw = (1, int(shape[2])) if one_d else (int(shape[2]), int(shape[3]))

    def patches(a: torch.Tensor, chosen: torch.Tensor | None) -> torch.Tensor:
        if one_d:
            a = a.unsqueeze(2)
        n, c, h, w = a.shape
        ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        index = torch.arange(n * ho * wo) if chosen is None else chosen.nonzero().flatten()
        b, rest = index // (ho * wo), index % (ho * wo)
        ys = (rest // wo * stride[0])[:, None] + torch.arange(kh) * dilation[0]
        xs = (rest % wo * stride[1])[:, None] + torch.arange(kw) * dilation[1]
        padded = F.pad(a, (padding[1], padding[1], padding[0], padding[0]))
        window = padded[b[:, None, None], :, ys[:, :, None], xs[:, None, :]]  # [rows,kh,kw,c]
        return window.permute(0, 3, 1, 2).reshape(index.numel(), c * kh * kw)

    return patches


def _pair(value, one_d: bool, flat: int) -> tuple[int, int]:
    """A convolution's stride, padding or dilation over (height, width); a 1-D one's height
    takes `flat` (stride and dilation 1, no padding)."""
    if isinstance(value, (list, tuple)):
        return (flat, int(value[0])) if one_d else (int(value[0]), int(value[-1]))
    return (flat, int(value)) if one_d else (int(value), int(value))


def _positions(layer: fx.Node) -> int:
    out = layer.meta.get("val")
    try:
        return math.prod(int(d) for d in out.shape[2:]) if out is not None else 1
    except (TypeError, ValueError):
        return 1


class Moments:
    """Running sums (float64) for the regression of targets z on inputs a."""

    def __init__(self, inputs: int, outputs: int) -> None:
        self.n = 0
        self.sum_a = torch.zeros(inputs, dtype=torch.float64)
        self.sum_z = torch.zeros(outputs, dtype=torch.float64)
        self.aa = torch.zeros(inputs, inputs, dtype=torch.float64)
        self.az = torch.zeros(inputs, outputs, dtype=torch.float64)

    def add(self, a: torch.Tensor, z: torch.Tensor) -> None:
        self.n += a.shape[0]
        self.sum_a += a.sum(0)
        self.sum_z += z.sum(0)
        self.aa.addmm_(a.T, a)  # in place: no product the size of the sums beside them
        self.az.addmm_(a.T, z)

    def reduce(self) -> None:
        """The sums over every process of a torch.distributed group (each added its share)."""
        rows = torch.tensor([float(self.n)], dtype=torch.float64)
        summed(rows, self.sum_a, self.sum_z, self.aa, self.az)
        self.n = int(rows)

    def solve(self, prior: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights [inputs, outputs] and bias [outputs] of the centred ridge regression. The
        sums become the covariance in place (they are spent): at thousands of inputs each
        copy of them is hundreds of megabytes."""
        mean_a, mean_z = self.sum_a / self.n, self.sum_z / self.n
        cov = self.aa.div_(self.n).addr_(mean_a, mean_a, alpha=-1)
        cross = self.az.div_(self.n).addr_(mean_a, mean_z, alpha=-1)
        weights = ridge_solve(cov, cross, prior, ridge)
        return weights, mean_z - mean_a @ weights


def ridge_solve(cov: torch.Tensor, cross: torch.Tensor, prior: torch.Tensor,
                ridge: float) -> torch.Tensor:
    """argmin_W tr(Wᵀ cov W) - 2 tr(Wᵀ cross) + λ‖W - prior‖², λ = ridge × mean(diag(cov)).

    Solved with a Cholesky factorisation of cov + λI (symmetric positive definite for λ > 0);
    falls back to a least-squares solve if rounding makes it indefinite. `cov` becomes
    cov + λI in place."""
    scale = float(torch.diagonal(cov).mean()) if cov.numel() else 0.0
    lam = ridge * scale if scale > 0 else ridge
    system = cov
    system.diagonal().add_(lam)
    rhs = cross + lam * prior
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, factor)
    return torch.linalg.lstsq(system, rhs).solution


def removal_errors(gm: fx.GraphModule, groups: tuple[PrunableGroup, ...], x: torch.Tensor, *,
                   ridge: float, batch_size: int = 1000,
                   device: str = "cpu") -> dict[str, torch.Tensor]:
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
    feed-forward block's, whatever each adds to the stream (measured in docs/method.md)."""
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


def consumer_problems(gm: fx.GraphModule, groups: tuple[PrunableGroup, ...], x: torch.Tensor,
                      *, batch_size: int = 1000,
                      device: str = "cpu") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per group: the covariance of its units' activations on `x` (float64, a row per sample
    and token; a unit of `block` columns has `block` of them) and its consumer's weights
    [outputs, units x block]; the consumer must be one Linear."""
    for g in groups:
        if not read_by_one_linear(gm, g):
            raise ValueError(f"the error criterion cannot rank the units of {g.name}: it needs "
                             "exactly one Linear that reads them directly")
    inputs = [_node(gm, g.consumer_nodes[0]).args[0].name for g in groups]
    probe = outputs_of(gm, inputs)
    batch_size = samples_per_pass(gm, inputs, batch_size)
    columns = [g.consumers[0].entries(torch.arange(g.size)) for g in groups]
    moments = [Moments(c.numel(), 0) for c in columns]
    with torch.no_grad(), on_device(probe, device):
        for start in mine(batch_starts(x.shape[0], batch_size)):
            acts = probe(x[start:start + batch_size].to(device))
            for m, a, c in zip(moments, acts, columns):
                a = a.cpu().double().reshape(-1, a.shape[-1])[:, c]  # a row per sample, token
                m.add(a, a[:, :0])
    for m in moments:
        m.reduce()
    problems = {}
    for g, m, c in zip(groups, moments, columns):
        s = g.consumers[0]
        w = get_tensor(gm, s.param).detach().double().movedim(s.axis, -1)
        w = w.reshape(-1, w.shape[-1])[:, c]
        mean = m.sum_a / m.n
        problems[g.name] = (m.aa / m.n - torch.outer(mean, mean), w)
    return problems


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
