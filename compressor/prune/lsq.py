"""Least-squares reconstruction: refit the layer after a pruned group so that its outputs, computed
from the pruned network's own activations, match the original network's."""

from __future__ import annotations

import torch
from torch import fx

from ..graph.capture import get_tensor, set_tensor, outputs_of
from ..graph.groups import PrunableGroup


def refit_consumers(gm: fx.GraphModule, reference: fx.GraphModule, group: PrunableGroup,
                    keep: torch.Tensor, x: torch.Tensor, *, ridge: float,
                    batch_size: int = 1000) -> None:
    """Refit the weights and bias of the layer that reads `group`, from its kept units only.

    The target is that layer's pre-activation in `reference` (the network before this round of
    pruning); the inputs are the kept units' activations in `gm`, in which every earlier group
    is already pruned and refitted. Removed units' columns become zero.

    Args:
        gm: the working graph, modified in place.
        reference: the same graph before pruning (same tensor names and shapes).
        group: a group with one 2-D consumer (a Linear reading a Linear's units).
        keep: sorted indices of the units that stay.
        x: calibration inputs.
        ridge: regularisation towards the current weights, relative to the mean input variance.
        batch_size: samples per forward pass.
    """
    if len(group.consumers) != 1 or group.consumers[0].block != 1:
        raise ValueError(f"lsq cannot refit group {group.name}: it needs exactly one Linear "
                         "consumer")
    consumer, bias_name = group.consumers[0], group.consumer_biases[0]
    w_ref = get_tensor(reference, consumer.param).detach().double().movedim(consumer.axis, -1)
    b_ref = get_tensor(reference, bias_name).detach().double()
    moments = _Moments(keep.numel(), w_ref.shape[0])
    pruned = outputs_of(gm, [group.activation])
    original = outputs_of(reference, [group.activation])
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            batch = x[start:start + batch_size]
            a = pruned(batch)[0].double().reshape(batch.shape[0], -1)[:, keep]
            z = original(batch)[0].double().reshape(batch.shape[0], -1) @ w_ref.T + b_ref
            moments.add(a, z)
    w = get_tensor(gm, consumer.param).detach()
    prior = w.double().movedim(consumer.axis, -1)[:, keep].T
    fitted, bias = moments.solve(prior, ridge)
    new = torch.zeros_like(w.double().movedim(consumer.axis, -1))
    new[:, keep] = fitted.T
    set_tensor(gm, consumer.param, new.movedim(-1, consumer.axis).to(w.dtype))
    set_tensor(gm, bias_name, bias.to(get_tensor(gm, bias_name).dtype))


class _Moments:
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
        self.aa += a.T @ a
        self.az += a.T @ z

    def solve(self, prior: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights [inputs, outputs] and bias [outputs] of the centred ridge regression."""
        mean_a, mean_z = self.sum_a / self.n, self.sum_z / self.n
        cov = self.aa / self.n - torch.outer(mean_a, mean_a)
        cross = self.az / self.n - torch.outer(mean_a, mean_z)
        weights = ridge_solve(cov, cross, prior, ridge)
        return weights, mean_z - mean_a @ weights


def ridge_solve(cov: torch.Tensor, cross: torch.Tensor, prior: torch.Tensor,
                ridge: float) -> torch.Tensor:
    """argmin_W tr(Wᵀ cov W) - 2 tr(Wᵀ cross) + λ‖W - prior‖², λ = ridge × mean(diag(cov)).

    Solved with a Cholesky factorisation of cov + λI (symmetric positive definite for λ > 0);
    falls back to a least-squares solve if rounding makes it indefinite."""
    scale = float(torch.diagonal(cov).mean()) if cov.numel() else 0.0
    lam = ridge * scale if scale > 0 else ridge
    system = cov + lam * torch.eye(cov.shape[0], dtype=cov.dtype)
    rhs = cross + lam * prior
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, factor)
    return torch.linalg.lstsq(system, rhs).solution


def removal_errors(gm: fx.GraphModule, groups: tuple[PrunableGroup, ...], x: torch.Tensor, *,
                   ridge: float, batch_size: int = 1000) -> dict[str, torch.Tensor]:
    """Per group, per unit: the error its consumer's output is left with if units are removed
    greedily, cheapest first, each removal followed by the optimal least-squares refit of the
    remaining columns (Optimal Brain Surgeon on the consumer: removing unit p costs
    ‖W[:, p]‖² / [H⁻¹]ₚₚ, H the covariance of the group's activations).

    A unit's score is the cumulative error at its turn, as a fraction of the consumer's output
    variance, so scores grow along each group's greedy order and compare across groups."""
    probe = outputs_of(gm, [g.activation for g in groups])
    moments = [_Moments(g.size, 0) for g in groups]
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            acts = probe(x[start:start + batch_size])
            for m, a in zip(moments, acts):
                a = a.double().reshape(a.shape[0], -1)
                m.add(a, a[:, :0])
    scores = {}
    for g, m in zip(groups, moments):
        if len(g.consumers) != 1 or g.consumers[0].block != 1:
            raise ValueError(f"the error criterion cannot score group {g.name}: it needs exactly "
                             "one Linear consumer")
        s = g.consumers[0]
        w = get_tensor(gm, s.param).detach().double().movedim(s.axis, -1).reshape(-1, g.size)
        mean = m.sum_a / m.n
        scores[g.name] = _greedy_errors(m.aa / m.n - torch.outer(mean, mean), w, ridge)
    return scores


def _greedy_errors(cov: torch.Tensor, w: torch.Tensor, ridge: float) -> torch.Tensor:
    """Greedy OBS removal, one unit per step (O(n³) for n units); returns cumulative errors."""
    scale = float(torch.diagonal(cov).mean())
    lam = ridge * scale if scale > 0 else ridge
    n = cov.shape[0]
    system = cov + lam * torch.eye(n, dtype=cov.dtype)
    factor, info = torch.linalg.cholesky_ex(system)
    hinv = torch.cholesky_inverse(factor) if int(info) == 0 else torch.linalg.pinv(system)
    w = w.clone()
    total = max(float(torch.einsum("oi,ij,oj->", w, cov, w)), torch.finfo(cov.dtype).tiny)
    alive = torch.ones(n, dtype=torch.bool)
    scores = torch.zeros(n, dtype=torch.float64)
    error = 0.0
    for _ in range(n):
        cost = (w ** 2).sum(0) / torch.diagonal(hinv)
        cost[~alive] = float("inf")
        p = int(cost.argmin())  # the first of equals: deterministic
        error += float(cost[p])
        scores[p] = error / total
        row = hinv[p] / hinv[p, p]  # a copy: the in-place updates below must not see it change
        w.addr_(w[:, p].clone(), row, alpha=-1)
        hinv.addr_(hinv[:, p].clone(), row, alpha=-1)
        alive[p] = False
        w[:, p], hinv[p], hinv[:, p], hinv[p, p] = 0, 0, 0, 1
    return scores
