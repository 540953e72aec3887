from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.graph.capture import get_tensor, run_batched
from compressor.graph.trace import trace
from compressor.prune.calibrate import count_activations
from compressor.prune.compensate import compensate
from compressor.prune.config import CompensateConfig, Compensation
from compressor.prune.lsq import ridge_solve
from tests.helpers import graph_of, remove_units
from tests.nets import tiny, with_dead_and_disconnected, with_duplicates

NOTHING = torch.tensor([], dtype=torch.int64)


def prune_and_run(net: nn.Module, removed: dict[str, torch.Tensor], mode: Compensation, *,
                  x: torch.Tensor, data: bool = True, **settings):
    """Outputs of `net` on `x` before and after removing `removed` with compensation `mode`."""
    gm = graph_of(net, x[:2])
    before = run_batched(gm, x)
    _, done = remove_units(gm, removed, mode, x=x if data else None, **settings)
    return before, run_batched(gm, x), done


@pytest.mark.parametrize("mode", list(Compensation))
def test_removing_dead_and_disconnected_neurons_leaves_outputs_identical(mode):
    x = torch.randn(256, 20)
    removed = {"0": torch.tensor([1, 5, 9]), "2": torch.tensor([0, 3]), "4": NOTHING}
    before, after, done = prune_and_run(with_dead_and_disconnected(), removed, mode, x=x)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    assert {name: d.exact for name, d in done.items()} == {"0": 3, "2": 2, "4": 0}


def test_mean_compensation_folds_the_mean_activation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(500, 3)
    gm = graph_of(net, x[:2])
    groups = trace(gm).groups
    stats = count_activations(gm, groups, x)
    hidden = torch.relu(net[0](x)).detach()
    expected_bias = net[2].bias.detach() + net[2].weight.detach()[:, 2] * hidden[:, 2].mean()
    compensate(gm, groups, {"0": torch.tensor([2])}, CompensateConfig("mean"),
               stats=stats)
    torch.testing.assert_close(get_tensor(gm, "p_2_bias").detach(), expected_bias)


def test_merging_a_neuron_into_an_exact_duplicate_changes_no_output():
    x = torch.randn(512, 20)
    removed = {"0": torch.tensor([7, 8]), "2": torch.tensor([5]), "4": NOTHING}
    before, after, done = prune_and_run(with_duplicates(), removed, Compensation.MERGE, x=x,
                                        data=False)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    assert {name: d.merged for name, d in done.items()} == {"0": 2, "2": 1, "4": 0}


def test_plain_removal_of_a_duplicate_does_change_the_output():
    x = torch.randn(512, 20)
    removed = {"0": torch.tensor([7, 8]), "2": torch.tensor([5]), "4": NOTHING}
    before, after, _ = prune_and_run(with_duplicates(), removed, Compensation.NONE, x=x,
                                     data=False)
    assert (after - before).abs().max() > 1e-2


def test_merge_adds_the_scaled_column_to_the_most_similar_kept_neuron():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 3.0]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[10.0, 20.0, 30.0]]))
    gm = graph_of(net, torch.randn(2, 2))
    groups = trace(gm).groups
    compensate(gm, groups, {"0": torch.tensor([2])}, CompensateConfig("merge"))
    # unit 2 = 3 x unit 1: column 1 absorbs 3 x column 2
    assert get_tensor(gm, "p_2_weight").tolist() == [[10.0, 20.0 + 3 * 30.0, 0.0]]


def test_merge_drops_neurons_below_the_similarity_threshold():
    x = torch.randn(512, 20)
    removed = {"0": torch.tensor([0, 2]), "2": NOTHING, "4": NOTHING}
    merged = prune_and_run(tiny(), removed, Compensation.MERGE, x=x, data=False,
                           merge_threshold=1.0)
    plain = prune_and_run(tiny(), removed, Compensation.NONE, x=x, data=False)
    assert merged[2]["0"].merged == 0
    torch.testing.assert_close(merged[1], plain[1])


def test_lsq_is_exact_when_the_removed_neurons_never_fire_on_the_data():
    net = tiny()
    with torch.no_grad():  # connected but never firing: large negative biases
        net[0].bias[[4, 11]] = -100.0
        net[2].bias[[6]] = -100.0
    x = torch.randn(512, 20)
    removed = {"0": torch.tensor([4, 11]), "2": torch.tensor([6]), "4": NOTHING}
    before, after, _ = prune_and_run(net, removed, Compensation.LSQ, x=x)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_lsq_is_exact_when_the_removed_neurons_duplicate_kept_ones():
    x = torch.randn(512, 20)
    removed = {"0": torch.tensor([7, 8]), "2": torch.tensor([5]), "4": NOTHING}
    before, after, _ = prune_and_run(with_duplicates(), removed, Compensation.LSQ, x=x)
    # exact up to the ridge (1e-3 of the input variance, pulling towards the old weights):
    # 0.8-1.5e-4 over seeds 0-5, where plain removal is off by 0.17-0.26
    torch.testing.assert_close(after, before, rtol=0, atol=5e-4)


def test_lsq_loses_less_than_mean_merge_or_plain_removal():
    torch.manual_seed(1)
    x = torch.randn(2000, 20)
    removed = {"0": torch.arange(0, 32, 3), "2": torch.arange(0, 24, 4), "4": torch.tensor([1, 9])}
    errors = {}
    for mode in (Compensation.NONE, Compensation.MEAN, Compensation.MERGE, Compensation.LSQ):
        before, after, _ = prune_and_run(tiny(), removed, mode, x=x)
        errors[mode] = float(((after - before) ** 2).mean())
    assert errors[Compensation.LSQ] < 0.5 * min(e for m, e in errors.items()
                                                 if m is not Compensation.LSQ)


def test_methods_that_need_data_refuse_to_run_without_it():
    gm = graph_of(tiny(), torch.randn(2, 20))
    groups = trace(gm).groups
    removed = {g.name: NOTHING for g in groups}
    for mode in ("mean", "lsq"):
        with pytest.raises(ValueError, match="needs calibration data"):
            compensate(gm, groups, removed, CompensateConfig(mode))


def test_ridge_solve_matches_the_regularised_normal_equations():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 6, generator=g, dtype=torch.float64)
    a[:, 5] = a[:, 4]  # collinear columns: singular without the ridge
    z = torch.randn(200, 3, generator=g, dtype=torch.float64)
    prior = torch.randn(6, 3, generator=g, dtype=torch.float64)
    cov, cross = a.T @ a / 200, a.T @ z / 200
    lam = 0.1 * float(torch.diagonal(cov).mean())
    expected = torch.linalg.solve(cov + lam * torch.eye(6, dtype=torch.float64), cross + lam * prior)
    torch.testing.assert_close(ridge_solve(cov, cross, prior, 0.1), expected)


def _moments_of(a: torch.Tensor, z: torch.Tensor, batch: int):
    from compressor.prune.lsq import Moments

    m = Moments(a.shape[1], z.shape[1])
    for start in range(0, a.shape[0], batch):
        m.add(a[start:start + batch], z[start:start + batch])
    return m


def test_moments_from_float32_batches_fit_as_float64_does_whatever_the_mean():
    g = torch.Generator().manual_seed(0)
    # activations far from zero mean: raw float32 products would lose the covariance
    a = 1000 + torch.randn(3000, 8, generator=g, dtype=torch.float64)
    z = a @ torch.randn(8, 3, generator=g, dtype=torch.float64) - 5000
    prior = torch.zeros(8, 3, dtype=torch.float64)
    expected_w, expected_b = _moments_of(a, z, 3000).solve(prior, 1e-6)
    w, b = _moments_of(a.float(), z.float(), 700).solve(prior, 1e-6)
    torch.testing.assert_close(w, expected_w, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b, expected_b, rtol=1e-4, atol=1e-1)
    m = _moments_of(a.float(), z.float(), 700)
    cov = torch.cov(a.T, correction=0)
    torch.testing.assert_close(m.covariance(), cov, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("columns", [7, 768, 1000])
def test_gram_by_blocks_is_the_whole_product(columns):
    from compressor.prune.lsq import add_gram

    a = torch.randn(50, columns, generator=torch.Generator().manual_seed(0))
    acc = torch.ones(columns, columns, dtype=torch.float64)
    add_gram(acc, a)
    torch.testing.assert_close(acc, 1 + (a.T @ a).double(), rtol=1e-5, atol=1e-4)


def test_moments_summed_over_processes_are_taken_about_zero_first(monkeypatch):
    from compressor.prune import lsq

    g = torch.Generator().manual_seed(1)
    a = 3 + torch.randn(400, 5, generator=g, dtype=torch.float64)
    z = torch.randn(400, 2, generator=g, dtype=torch.float64)
    prior = torch.zeros(5, 2, dtype=torch.float64)
    alone = _moments_of(a, z, 100).solve(prior, 1e-3)
    # two processes, each with its own shift; all_reduce adds the other's sums
    halves = [_moments_of(a[:200], z[:200], 100), _moments_of(a[200:], z[200:], 100)]
    monkeypatch.setattr(lsq, "size", lambda: 2)
    for m in halves:
        m.reduce()
    mine_, other = halves
    mine_.n += other.n
    for name in ("sum_a", "sum_z", "aa", "az"):
        getattr(mine_, name).add_(getattr(other, name))
    for got, expected in zip(mine_.solve(prior, 1e-3), alone):
        torch.testing.assert_close(got, expected)


def test_ridge_solve_keeps_the_prior_where_the_data_says_nothing():
    cov = torch.diag(torch.tensor([1.0, 0.0], dtype=torch.float64))  # second input constant
    cross = torch.tensor([[2.0], [0.0]], dtype=torch.float64)
    prior = torch.tensor([[0.0], [5.0]], dtype=torch.float64)
    solution = ridge_solve(cov, cross, prior, 1e-9)
    torch.testing.assert_close(solution, torch.tensor([[2.0], [5.0]], dtype=torch.float64))


def test_greedy_removal_errors_find_the_redundant_neurons_first():
    from compressor.prune.error import removal_errors

    x = torch.randn(1000, 20)
    gm = graph_of(with_duplicates(), x[:2])
    groups = trace(gm).groups
    errors = removal_errors(gm, groups, x, ridge=1e-9)
    # a copy can go at no cost; once one of 3, 7, 8 is gone the others are needed
    assert sorted(errors["0"].argsort()[:2].tolist()) in ([3, 7], [3, 8], [7, 8])
    assert float(errors["0"].sort().values[1]) < 1e-6 < float(errors["0"].sort().values[2])
    assert errors["2"].argsort()[0].item() in (2, 5) and float(errors["2"].min()) < 1e-6
    assert all(float(e.max()) <= 1.0 + 1e-6 for e in errors.values())  # fractions of variance


def _layer(units: int, outputs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The covariance of `units` correlated activations and a consumer's weights."""
    generator = torch.Generator().manual_seed(seed)
    mix = torch.randn(units, units // 2, generator=generator, dtype=torch.float64)
    a = torch.randn(4 * units, units // 2, generator=generator, dtype=torch.float64) @ mix.T
    a += 0.1 * torch.randn(4 * units, units, generator=generator, dtype=torch.float64)
    cov = torch.cov(a.T, correction=0)
    return cov, torch.randn(outputs, units, generator=generator, dtype=torch.float64)


def _set_error(cov: torch.Tensor, w: torch.Tensor, gone: list[int]) -> float:
    """The consumer's output error after removing `gone` and refitting the rest by least
    squares, from scratch: tr(W C Wᵀ) - tr(W C_R C_RR⁻¹ C_R Wᵀ)."""
    kept = [u for u in range(cov.shape[0]) if u not in set(gone)]
    c_r = cov[:, kept]
    explained = w @ c_r @ torch.linalg.solve(cov[kept][:, kept], c_r.T @ w.T)
    return float(torch.trace(w @ cov @ w.T) - torch.trace(explained))


def test_exact_greedy_ranking_is_the_greedy_of_refits_from_scratch():
    from compressor.prune.error import greedy_errors

    cov, w = _layer(12, 5, seed=0)
    total = float(torch.trace(w @ cov @ w.T))
    scores = greedy_errors(cov, w, 1e-12, steps=None)
    gone: list[int] = []
    for _ in range(11):  # at every step, the unit whose removal leaves the least error
        costs = {u: _set_error(cov, w, gone + [u]) for u in range(12) if u not in gone}
        gone.append(min(costs, key=costs.get))
        assert scores.argsort()[:len(gone)].tolist() == gone
        assert float(scores[gone[-1]]) * total == pytest.approx(costs[gone[-1]], rel=1e-6,
                                                                abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blocked_ranking_leaves_the_error_of_the_exact_greedy(seed):
    from compressor.prune.error import greedy_errors

    cov, w = _layer(256, 32, seed)
    exact = greedy_errors(cov, w, 1e-9, steps=None).argsort()
    blocked = greedy_errors(cov, w, 1e-9).argsort()  # a block of 1/64 of the units per step
    assert sorted(blocked.tolist()) == list(range(256))
    total = float(torch.trace(w @ cov @ w.T))
    for k in (64, 128, 160, 192, 224, 240):  # the rank is 128: the error grows from there
        fast, reference = (_set_error(cov, w, order[:k].tolist()) for order in (blocked, exact))
        assert fast <= 1.05 * reference + 1e-3 * total, (k, fast / total, reference / total)


def test_lsq_gives_the_mean_rule_to_a_layer_with_fewer_calibration_rows_than_inputs():
    """Fitted on fewer rows than unknowns, least squares reproduces the calibration set's noise
    (weights thousands of times larger, outputs at the mercy of float32 rounding): such a
    layer takes the dropped inputs' mean into its bias, and says so; with rows enough, lsq."""
    torch.manual_seed(1)
    removed = {"0": torch.arange(0, 32, 3), "2": NOTHING, "4": NOTHING}  # layer "2" keeps 21
    for samples, by_mean in ((12, ("linear_1",)), (2000, ())):
        x = torch.randn(samples, 20)
        gm = graph_of(tiny(), x[:2])
        kept = torch.ones(32, dtype=torch.bool)
        kept[removed["0"]] = False
        columns = get_tensor(gm, "p_2_weight")[:, kept].clone()
        _, done = remove_units(gm, removed, Compensation.LSQ, x=x)
        assert done["0"].mean_rule == by_mean
        unchanged = torch.equal(get_tensor(gm, "p_2_weight"), columns)
        assert unchanged == bool(by_mean)  # the mean rule moves the bias alone
