"""Least squares: the regression sums and the ridge solve a refit needs, and the rows a layer's
input makes (patches for a convolution)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx

from ..graph.ops import LINEAR
from ..io.ranks import size, summed

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


class Moments:
    """Running sums for the regression of targets z on inputs a, about a shift (the first
    batch's means): the products of each batch are taken in float32 where the rows come in
    float32 (float64 products run at a fraction of the speed on a CPU, and are most of an
    error ranking's time on a wide model), and summed over batches in float64. Shifted, the rows
    are near zero mean, so a covariance taken from the sums does not lose float32's digits
    to the square of a large mean."""

    def __init__(self, inputs: int, outputs: int = 0) -> None:
        self.n = 0
        self.shift_a = self.shift_z = None
        self.sum_a = torch.zeros(inputs, dtype=torch.float64)
        self.sum_z = torch.zeros(outputs, dtype=torch.float64)
        self.aa = torch.zeros(inputs, inputs, dtype=torch.float64)
        self.az = torch.zeros(inputs, outputs, dtype=torch.float64)

    def add(self, a: torch.Tensor, z: torch.Tensor | None = None) -> None:
        """Add rows of inputs `a` [rows, inputs] and targets `z` [rows, outputs] (none:
        the moments of `a` alone)."""
        z = a[:, :0] if z is None else z
        if a.dtype not in (torch.float32, torch.float64):
            a, z = a.float(), z.float()
        if self.shift_a is None:
            self.shift_a, self.shift_z = a.mean(0), z.mean(0)
        a, z = a - self.shift_a, z - self.shift_z
        self.n += a.shape[0]
        self.sum_a += a.sum(0, dtype=torch.float64)
        self.sum_z += z.sum(0, dtype=torch.float64)
        add_gram(self.aa, a)
        self.az += a.T @ z

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean input and the mean target (float64)."""
        a, z = self.sum_a / max(self.n, 1), self.sum_z / max(self.n, 1)
        if self.shift_a is None:
            return a, z
        return a + self.shift_a.double(), z + self.shift_z.double()

    def covariance(self) -> torch.Tensor:
        """The inputs' (population) covariance, made from the sums in place (they are
        spent)."""
        mean = self.sum_a / max(self.n, 1)
        return self.aa.div_(max(self.n, 1)).addr_(mean, mean, alpha=-1)

    def mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The inputs' mean and covariance (the sums are spent)."""
        return self.means()[0], self.covariance()

    def reduce(self) -> None:
        """The sums over every process of a torch.distributed group (each added its share,
        about its own shift: the sums are first taken about zero, in float64)."""
        if size() > 1 and self.shift_a is not None:
            s, t = self.shift_a.double(), self.shift_z.double()
            self.aa.addr_(self.sum_a, s).addr_(s, self.sum_a).addr_(s, s, alpha=self.n)
            self.az.addr_(self.sum_a, t).addr_(s, self.sum_z).addr_(s, t, alpha=self.n)
            self.sum_a += self.n * s
            self.sum_z += self.n * t
            self.shift_a = self.shift_z = None
        rows = torch.tensor([float(self.n)], dtype=torch.float64)
        summed(rows, self.sum_a, self.sum_z, self.aa, self.az)
        self.n = int(rows)

    def solve(self, prior: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights [inputs, outputs] and bias [outputs] of the centred ridge regression. The
        sums become the covariance in place (they are spent): at thousands of inputs each
        copy of them is hundreds of megabytes."""
        mean_a, mean_z = self.means()
        shifted_a, shifted_z = self.sum_a / self.n, self.sum_z / self.n
        cross = self.az.div_(self.n).addr_(shifted_a, shifted_z, alpha=-1)
        weights = ridge_solve(self.covariance(), cross, prior, ridge)
        return weights, mean_z - mean_a @ weights


GRAM_BLOCK = 384  # columns per block of a Gram product taken by halves (see add_gram)


def add_gram(acc: torch.Tensor, a: torch.Tensor) -> None:
    """acc += aᵀa, a product of the blocks of columns on and above the diagonal alone, each
    added twice (its transpose below): nearly half the multiplications of the whole product;
    narrower `a` takes the whole product."""
    n = a.shape[1]
    if n < 2 * GRAM_BLOCK:
        acc += a.T @ a
        return
    step = -(-n // min(8, n // GRAM_BLOCK))
    for i in range(0, n, step):
        product = a[:, i:i + step].T @ a[:, i:]
        acc[i:i + step, i:] += product
        acc[i + step:, i:i + step] += product[:, step:].T


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
