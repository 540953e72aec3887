from __future__ import annotations

import math
import random

import pytest
import torch

from compressor.errors import NothingToPruneError
from compressor.graph.groups import PrunableGroup, Slice, weight_count
from compressor.prune.config import SelectConfig, Scope
from compressor.prune.select import Budget, select


def chain(widths: list[int]) -> tuple[tuple[PrunableGroup, ...], dict[str, tuple[int, ...]]]:
    """Groups of an MLP with these widths (hidden layers prunable), and its weight shapes."""
    shapes = {f"w{i}": (n_out, n_in) for i, (n_in, n_out) in enumerate(zip(widths, widths[1:]))}
    groups = tuple(
        PrunableGroup(name=f"h{i}", size=widths[i + 1], weights=(Slice(f"w{i}", 0),),
                      biases=(), activations=(f"relu{i}",), consumers=(Slice(f"w{i + 1}", 1),),
                      consumer_biases=(f"b{i + 1}",))
        for i in range(len(widths) - 2))
    return groups, shapes


def budget(total: int, target: float) -> Budget:
    return Budget(math.floor((1 - target) * total), math.ceil((1 - target - 0.0095) * total))


def remaining(groups, shapes, removed) -> int:
    return weight_count(shapes, list(groups), {g.name: g.size - len(removed[g.name]) for g in groups})


@pytest.mark.parametrize("scope", list(Scope))
@pytest.mark.parametrize("seed", range(12))
def test_selection_meets_the_budget_for_random_layer_sizes(scope, seed):
    rng = random.Random(seed)
    widths = [784] + [rng.randint(40, 400) for _ in range(rng.randint(1, 4))] + [10]
    groups, shapes = chain(widths)
    scores = {g.name: torch.randint(0, 1000, (g.size,)).float() for g in groups}
    target = rng.uniform(0.3, 0.95)
    total = weight_count(shapes, list(groups), {g.name: g.size for g in groups})
    removed = select(groups, scores, shapes, budget(total, target), scope=scope,
                     original_sizes={g.name: g.size for g in groups})
    reduction = 1 - remaining(groups, shapes, removed) / total
    assert target <= reduction <= target + 0.01, (widths, target, reduction)


def test_global_removes_lowest_scores_first_and_dead_units_always():
    groups, shapes = chain([100, 50, 50, 10])
    scores = {"h0": torch.arange(50).float() + 10, "h1": torch.arange(50).float() + 100}
    scores["h1"][7] = 0  # dead, though its layer scores high
    total = weight_count(shapes, list(groups), {"h0": 50, "h1": 50})
    removed = select(groups, scores, shapes, budget(total, 0.3), scope=Scope.GLOBAL,
                     original_sizes={"h0": 50, "h1": 50})
    assert 7 in removed["h1"].tolist()
    kept_h0 = sorted(set(range(50)) - set(removed["h0"].tolist()))
    assert removed["h0"].tolist() == list(range(len(removed["h0"])))  # the lowest counts
    assert all(scores["h0"][k] > scores["h0"][r] for k in kept_h0 for r in removed["h0"])


def test_local_removes_the_same_fraction_of_each_layer():
    groups, shapes = chain([300, 200, 100, 10])
    scores = {g.name: torch.rand(g.size) + 1 for g in groups}
    total = weight_count(shapes, list(groups), {"h0": 200, "h1": 100})
    removed = select(groups, scores, shapes, budget(total, 0.6), scope=Scope.LOCAL,
                     original_sizes={"h0": 200, "h1": 100})
    fractions = [len(removed["h0"]) / 200, len(removed["h1"]) / 100]
    assert abs(fractions[0] - fractions[1]) <= 0.011


def test_every_group_keeps_at_least_one_unit():
    groups, shapes = chain([10, 8, 8, 3])
    scores = {g.name: torch.zeros(g.size) for g in groups}  # all dead
    removed = select(groups, scores, shapes, Budget(10**6, 0), scope=Scope.GLOBAL,
                     original_sizes={"h0": 8, "h1": 8})
    assert [len(removed[g]) for g in ("h0", "h1")] == [7, 7]


def test_unreachable_target_is_a_clear_error():
    groups, shapes = chain([1000, 4, 4, 3])  # the 1000 input columns stay
    scores = {g.name: torch.ones(g.size) for g in groups}
    with pytest.raises(NothingToPruneError, match="smaller --target"):
        select(groups, scores, shapes, Budget(100, 0), scope=Scope.GLOBAL,
               original_sizes={"h0": 4, "h1": 4})


def test_norm_criteria_score_the_weight_and_bias_row_relative_to_its_layer():
    from compressor.graph.trace import trace
    from compressor.prune.select import unit_scores
    from tests.helpers import graph_of
    from tests.nets import tiny

    net = tiny()
    gm = graph_of(net, torch.randn(2, 20))
    groups = trace(gm).groups
    row = torch.cat([net[0].weight, net[0].bias[:, None]], dim=1).detach().double()
    l1 = unit_scores(gm, groups, SelectConfig("l1"))
    l2 = unit_scores(gm, groups, SelectConfig("l2"))
    torch.testing.assert_close(l1["0"], row.abs().sum(1) / row.abs().sum(1).mean())
    torch.testing.assert_close(l2["0"], row.norm(dim=1) / row.norm(dim=1).mean())
    # group: the row and the unit's column in the next layer, together
    owned = torch.cat([row, net[2].weight.detach().double().T], dim=1).norm(dim=1)
    group = unit_scores(gm, groups, SelectConfig("group"))
    torch.testing.assert_close(group["0"], owned / owned.mean())
    assert not torch.allclose(group["0"], l2["0"])
    for criterion in ("activation", "error"):
        with pytest.raises(ValueError, match="needs calibration data"):
            unit_scores(gm, groups, SelectConfig(criterion))


def test_equal_scores_are_removed_in_graph_order():
    groups, shapes = chain([10, 6, 6, 2])
    scores = {g.name: torch.ones(g.size) for g in groups}
    total = weight_count(shapes, list(groups), {g.name: g.size for g in groups})
    # each first-layer unit holds 16 weights, each second-layer unit 8: removing 3 + 0 fits
    removed = select(groups, scores, shapes, Budget(total - 40, total - 60),
                     scope=Scope.GLOBAL, original_sizes={g.name: g.size for g in groups})
    assert removed["h0"].tolist() == [0, 1, 2] and removed["h1"].tolist() == []
    again = select(groups, scores, shapes, Budget(total - 40, total - 60),
                   scope=Scope.GLOBAL, original_sizes={g.name: g.size for g in groups})
    assert all(torch.equal(removed[k], again[k]) for k in removed)


def test_units_marked_dead_go_first_whatever_their_score():
    groups, shapes = chain([10, 6, 6, 2])
    scores = {"h0": torch.arange(6.0) + 1, "h1": torch.arange(6.0) + 1}
    dead = {"h0": torch.tensor([False] * 5 + [True]), "h1": torch.zeros(6, dtype=torch.bool)}
    total = weight_count(shapes, list(groups), {g.name: g.size for g in groups})
    removed = select(groups, scores, shapes, Budget(total, 0), scope=Scope.GLOBAL,
                     original_sizes={g.name: 6 for g in groups}, dead=dead)
    assert removed["h0"].tolist() == [5] and removed["h1"].tolist() == []


@pytest.mark.parametrize("seed", range(8))
def test_aligned_widths_are_multiples_and_stay_within_budget(seed):
    from compressor.prune.align import align_widths

    rng = random.Random(seed)
    widths = [784] + [rng.randint(40, 400) for _ in range(rng.randint(1, 4))] + [10]
    groups, shapes = chain(widths)
    gen = torch.Generator().manual_seed(seed)
    scores = {g.name: torch.rand(g.size, generator=gen) + 0.01 for g in groups}
    total = weight_count(shapes, list(groups), {g.name: g.size for g in groups})
    b = budget(total, 0.85)
    removed = select(groups, scores, shapes, b, scope=Scope.GLOBAL,
                     original_sizes={g.name: g.size for g in groups})
    aligned = align_widths(groups, removed, scores, shapes, b, 16)
    fits = next(m for m in (16, 8, 4, 2, 1) if weight_count(  # where 16 per layer is too
        shapes, list(groups), {g.name: min(m, g.size) for g in groups}) <= b.max_weights)
    step = next(m for m in (16, 8, 4, 2, 1) if all(  # many, the steps are halved
        (g.size - len(aligned[g.name])) % m == 0 or len(aligned[g.name]) == 0 for g in groups))
    assert step >= fits or step == 1 or \
        remaining(groups, shapes, aligned) >= 2 * b.min_weights - b.max_weights  # finer where
    for g in groups:  # the steps fell more than a window's width below the window
        kept = g.size - len(aligned[g.name])
        gone = set(aligned[g.name].tolist())
        assert len(gone) == len(aligned[g.name])  # no unit twice
        if set(removed[g.name].tolist()) <= gone:  # rounded down: the lowest scores went
            survivors = [float(scores[g.name][u]) for u in range(g.size) if u not in gone]
            extra = [float(scores[g.name][u]) for u in gone - set(removed[g.name].tolist())]
            assert not extra or max(extra) <= min(survivors)
    assert remaining(groups, shapes, aligned) <= b.max_weights
    assert align_widths(groups, removed, scores, shapes, b, 1) is removed


def test_a_layer_that_is_no_multiple_may_keep_its_whole_width():
    """24 channels aligned to 16: 16 or all 24 (still unpruned), not a forced cut to 16 (24-48
    lands within a window's width of the window, 16-64 further)."""
    from compressor.prune.align import align_widths

    groups, shapes = chain([30, 24, 64, 10])
    scores = {g.name: torch.arange(g.size, dtype=torch.float64) + 1 for g in groups}
    total = weight_count(shapes, list(groups), {g.name: g.size for g in groups})
    b = budget(total, 0.17)
    removed = select(groups, scores, shapes, b, scope=Scope.GLOBAL,
                     original_sizes={g.name: g.size for g in groups})
    original = {g.name: g.size for g in groups}
    aligned = align_widths(groups, removed, scores, shapes, b, 16, original_sizes=original)
    kept = [g.size - len(aligned[g.name]) for g in groups]
    assert kept == [24, 48], kept
    # once pruned (24 of 40 left after an earlier cycle), 24 is kept only where the multiples
    # alone fall short of the target: 16-64 keeps fewer weights than the budget asks
    earlier = {**original, groups[0].name: 40}
    assert weight_count(shapes, list(groups), {"h0": 16, "h1": 64}) < b.min_weights
    aligned = align_widths(groups, removed, scores, shapes, b, 16, original_sizes=earlier)
    assert [g.size - len(aligned[g.name]) for g in groups] == [24, 48]
    wide = Budget(b.max_weights, 0)  # with no lower bound, the multiples are enough
    aligned = align_widths(groups, removed, scores, shapes, wide, 16, original_sizes=earlier)
    assert [g.size - len(aligned[g.name]) for g in groups] == [16, 64]


def test_steps_too_coarse_for_the_budget_are_halved_not_dropped():
    """Three layers that must keep about 10 units each: 16 per layer is over budget, 8 fits."""
    from compressor.prune.align import align_widths

    groups, shapes = chain([100, 40, 40, 40, 10])
    scores = {g.name: torch.arange(g.size, dtype=torch.float64) + 1 for g in groups}
    total = weight_count(shapes, list(groups), {g.name: g.size for g in groups})
    b = budget(total, 0.75)
    removed = select(groups, scores, shapes, b, scope=Scope.LOCAL,
                     original_sizes={g.name: g.size for g in groups})
    assert weight_count(shapes, list(groups), {g.name: 16 for g in groups}) > b.max_weights
    aligned = align_widths(groups, removed, scores, shapes, b, 16)
    kept = [g.size - len(aligned[g.name]) for g in groups]
    assert all(k % 8 == 0 for k in kept) and remaining(groups, shapes, aligned) <= b.max_weights


def test_steps_too_coarse_for_the_window_are_halved_until_a_width_lands_in_it():
    """Two 128-wide layers keeping 40 each (4,560 weights) for a window of 4,500 to 4,700:
    in steps of 16 the nearest fit is 32-48 (4,064; 48-32 keeps 4,928, over), more than a
    window's width below it; in steps of 8, 40-40 lands in it."""
    from compressor.prune.align import align_widths

    groups, shapes = chain([64, 128, 128, 10])
    scores = {g.name: torch.arange(g.size, dtype=torch.float64) + 1 for g in groups}
    removed = {g.name: torch.arange(88) for g in groups}
    aligned = align_widths(groups, removed, scores, shapes, Budget(4700, 4500), 16)
    assert [g.size - len(aligned[g.name]) for g in groups] == [40, 40]
    assert remaining(groups, shapes, aligned) == 4560


def test_in_a_last_cycle_a_group_that_cannot_grow_to_a_multiple_may_keep_its_width():
    """Groups 40 and 21 wide after earlier cycles (300 and 100 before), keeping 38 and 19, in
    steps of 16: 48 and 32 are beyond what they have, so rounding down alone leaves 32-16
    (3,872 weights for a budget of 4,300 to 4,712, more than a window's width below it); 21
    may stay (32-21: 4,082, within it)."""
    from compressor.prune.align import align_widths

    groups, shapes = chain([100, 40, 21, 10])
    scores = {g.name: torch.arange(g.size, dtype=torch.float64) + 1 for g in groups}
    removed = {g.name: torch.arange(2) for g in groups}
    b = Budget(4712, 4300)
    aligned = align_widths(groups, removed, scores, shapes, b, 16,
                           original_sizes={"h0": 300, "h1": 100})
    assert [g.size - len(aligned[g.name]) for g in groups] == [32, 21]
    assert remaining(groups, shapes, aligned) == 4082


def test_with_a_time_model_widths_between_steps_give_way_to_widths_on_them():
    """Two 32-channel layers that may keep 23 each, in multiples of 8, on a machine whose
    kernels run in steps of 16: 24-24 keeps the most weights but takes as long as 32-32; 16-32
    is in the budget's window and runs as fast as its FLOPs say. Where no combination on the
    steps is in the window, the widths chosen for weights stay."""
    from compressor.prune.align import StepTime, align_widths
    from compressor.prune.choose import Counter

    groups, shapes = chain([64, 32, 32, 10])
    scores = {g.name: torch.arange(g.size, dtype=torch.float64) + 1 for g in groups}
    original = {g.name: g.size for g in groups}
    removed = {g.name: torch.arange(9) for g in groups}
    time = StepTime({g.name: 16 for g in groups}, {name: 1 for name in shapes}, original)

    def kept(b: Budget, step_time):
        aligned = align_widths(groups, removed, scores, shapes, b, 8, original_sizes=original,
                               step_time=step_time)
        return {g.name: g.size - len(aligned[g.name]) for g in groups}

    assert kept(Budget(2400, 1800), None) == {"h0": 24, "h1": 24}
    counter = Counter(groups, shapes, None)
    assert time.waste(counter, {"h0": 24, "h1": 24}) == pytest.approx(3392 / 2352)
    assert kept(Budget(2400, 1800), time) == {"h0": 16, "h1": 32}
    assert time.waste(counter, {"h0": 16, "h1": 32}) == 1.0
    # 16-32 (1,856) and 32-16 are under 2,300, 32-32 over 2,400: 24-24 stays
    assert kept(Budget(2400, 2300), time) == {"h0": 24, "h1": 24}


def test_with_a_time_model_widths_on_steps_move_a_step_to_let_others_onto_theirs():
    """24-24-32 (of 32-32-48) wastes time on steps of 16; no widths with the first two on the
    steps either side of them and the third where it is land in the window, but with the
    third a step down they do: 32-16-16, which runs as fast as its FLOPs say."""
    from compressor.prune.align import StepTime, align_widths
    from compressor.prune.choose import Counter

    groups, shapes = chain([64, 32, 32, 48, 10])
    scores = {g.name: torch.arange(g.size, dtype=torch.float64) + 1 for g in groups}
    original = {g.name: g.size for g in groups}
    removed = {"h0": torch.arange(8), "h1": torch.arange(8), "h2": torch.arange(16)}
    time = StepTime({g.name: 16 for g in groups}, {name: 1 for name in shapes}, original)
    counter = Counter(groups, shapes, None)
    assert counter.count({"h0": 24, "h1": 24, "h2": 32}) == 3200
    multiples = {"h0": 8, "h1": 8, "h2": 16}
    aligned = align_widths(groups, removed, scores, shapes, Budget(3250, 2950), multiples,
                           original_sizes=original)
    assert {g.name: g.size - len(aligned[g.name]) for g in groups} == \
        {"h0": 24, "h1": 24, "h2": 32}  # in the window, chosen for the scores it removes
    aligned = align_widths(groups, removed, scores, shapes, Budget(3250, 2950), multiples,
                           original_sizes=original, step_time=time)
    kept = {g.name: g.size - len(aligned[g.name]) for g in groups}
    assert kept == {"h0": 32, "h1": 16, "h2": 16}
    assert time.waste(counter, kept) == 1.0 and 2950 <= counter.count(kept) <= 3250


def test_on_steps_widths_that_remove_as_high_a_score_give_way_to_ones_that_waste_less():
    """32-56-32 and 16-56-64 each lose half a layer at worst (scores are each unit's share of
    its layer) and both land in the window; 32-56-32 wastes less of the time its FLOPs
    promise, so it is the one kept."""
    from compressor.prune.align import StepTime, align_widths
    from compressor.prune.choose import Counter

    groups, shapes = chain([64, 32, 64, 64, 10])
    scores = {g.name: (torch.arange(g.size, dtype=torch.float64) + 1) / g.size for g in groups}
    original = {g.name: g.size for g in groups}
    removed = {"h0": torch.arange(5), "h1": torch.arange(13), "h2": torch.arange(16)}
    time = StepTime({g.name: 16 for g in groups}, {name: 1 for name in shapes}, original)
    aligned = align_widths(groups, removed, scores, shapes, Budget(6153, 5912), 8,
                           original_sizes=original, step_time=time)
    kept = {g.name: g.size - len(aligned[g.name]) for g in groups}
    assert kept == {"h0": 32, "h1": 56, "h2": 32}
    counter = Counter(groups, shapes, None)
    other = {"h0": 16, "h1": 56, "h2": 64}
    assert 5912 <= counter.count(other) <= 6153
    assert time.waste(counter, kept) < time.waste(counter, other) <= time.limit(counter)


def test_alignment_of_many_groups_off_the_step_stays_valid():
    """Forty layers whose widths are no multiple of the step (as RegNet's 8, 12, 26, 52, ...):
    the choice goes group by group, not through their combinations."""
    from compressor.prune.align import align_widths

    rng = random.Random(0)
    widths = [64] + [rng.choice([12, 26, 52, 110]) for _ in range(40)] + [10]
    groups, shapes = chain(widths)
    scores = {g.name: torch.rand(g.size, generator=torch.Generator().manual_seed(1)) + 0.01
              for g in groups}
    total = weight_count(shapes, list(groups), {g.name: g.size for g in groups})
    b = budget(total, 0.5)
    original = {g.name: g.size for g in groups}
    removed = select(groups, scores, shapes, b, scope=Scope.LOCAL, original_sizes=original)
    aligned = align_widths(groups, removed, scores, shapes, b, 16, original_sizes=original)
    for g in groups:
        kept = g.size - len(aligned[g.name])
        assert kept % 16 == 0 or kept == g.size or g.size < 16, (g.size, kept)
    assert b.min_weights <= remaining(groups, shapes, aligned) <= b.max_weights


def test_a_group_of_exact_widths_keeps_what_the_selection_chose():
    """A group aligned exactly (attention heads: one unit may hold a large share of the count)
    beside one aligned to 8: rounding the second leaves room that one more unit of the first
    would fill, but the scores chose its width; only the aligned group moves."""
    from compressor.prune.align import align_widths

    groups, shapes = chain([64, 32, 32, 10])
    scores = {g.name: torch.arange(g.size, dtype=torch.float64) + 1 for g in groups}
    removed = {"h0": torch.arange(5), "h1": torch.arange(9)}  # keeping 27 and 23
    b = Budget(remaining(groups, shapes, removed), 0)
    aligned = align_widths(groups, removed, scores, shapes, b, {"h0": 1, "h1": 8})
    kept = {g.name: g.size - len(aligned[g.name]) for g in groups}
    assert kept == {"h0": 27, "h1": 16}, kept
    assert remaining(groups, shapes, aligned) <= b.max_weights


def _alignment_case(seed: int, scope: Scope, multiple: int):
    """A random chain of layers, a selection at half its weights (window 47-50%), and what
    `choose` needs for its widths: options (multiples near what each keeps), the counter
    and the cut (by shares where the selection is local, as `prune.cycles` gives them)."""
    from compressor.prune import align, choose
    from compressor.prune.select import shares

    rng = random.Random(seed)
    groups, shapes = chain([64] + [rng.choice([24, 40, 56, 72]) for _ in range(6)] + [10])
    gen = torch.Generator().manual_seed(seed)
    scores = {g.name: torch.rand(g.size, generator=gen) + 0.01 for g in groups}
    total = weight_count(shapes, list(groups), {g.name: g.size for g in groups})
    b = Budget(math.floor(0.5 * total), math.floor(0.47 * total))
    original = {g.name: g.size for g in groups}
    removed = select(groups, scores, shapes, b, scope=scope, original_sizes=original)
    ranking = shares(groups, scores, None, original) if scope is Scope.LOCAL else scores
    kept = {g.name: g.size - len(removed[g.name]) for g in groups}
    cut = align._Cut(groups, ranking, {g.name: ranking[g.name] == 0 for g in groups})
    options = {g.name: align._options(g, kept[g.name], multiple, False) for g in groups}
    return options, kept, choose.Counter(groups, shapes, None), cut, b


def test_greedy_alignment_lowers_the_highest_removed_score_within_the_window(monkeypatch):
    """Where the widths' combinations are too many to try (the greedy path), the moves that
    fill the budget are followed by exchanges between groups that lower the highest score
    removed while the count stays in the window: never higher than filling alone, and lower
    on some of these random cases."""
    from compressor.prune import choose

    monkeypatch.setattr(choose, "EXHAUSTIVE", 1)
    lowered = 0
    for seed in range(12):
        options, kept, counter, cut, b = _alignment_case(seed, Scope.GLOBAL, 16)
        blind = choose.choose(options, kept, counter, b.max_weights)
        aware = choose.choose(options, kept, counter, b.max_weights,
                              window=(b.min_weights, cut.worst))
        assert counter.count(aware) <= b.max_weights
        if counter.count(blind) >= b.min_weights:
            assert counter.count(aware) >= b.min_weights
            assert cut.worst(aware) <= cut.worst(blind)
            lowered += cut.worst(aware) < cut.worst(blind)
    assert lowered


def test_greedy_alignment_also_raises_the_deepest_cut_groups_first(monkeypatch):
    """Raising the groups that add the most first fills the budget with the widest layers
    whatever they lose; the greedy path also raises the group cut deepest first and keeps the
    better of the two: on random local selections (shares), never a higher highest removed
    share than adding the most alone, and on some a lower sum of what the groups lose."""
    from compressor.prune import choose

    monkeypatch.setattr(choose, "EXHAUSTIVE", 1)
    lower = 0
    for seed in range(30):
        options, kept, counter, cut, b = _alignment_case(seed, Scope.LOCAL, 8)
        window = (b.min_weights, cut.worst)
        widest = choose.choose(options, kept, counter, b.max_weights, window=window)
        both = choose.choose(options, kept, counter, b.max_weights, window=window,
                             level=cut.level)
        assert counter.count(both) <= b.max_weights
        if counter.count(widest) >= b.min_weights:
            assert counter.count(both) >= b.min_weights
            assert cut.worst(both) <= cut.worst(widest)
            lost = [sum(max(cut.level(n, w), 0.0) for n, w in c.items()) for c in (both, widest)]
            lower += cut.worst(both) == cut.worst(widest) and lost[0] < lost[1]
    assert lower


def test_local_widths_are_aligned_by_the_share_each_layer_loses_not_by_raw_scores():
    """Two layers whose scores do not compare (one scores 100x lower, as firing rates at
    different depths can): a local selection removes the same share of each, and aligning by
    raw scores would round the low-scored layer down and the other up; by shares (what
    `prune.cycles` gives a local selection's widths) both stay near that share."""
    from compressor.prune.align import align_widths
    from compressor.prune.select import shares

    groups, shapes = chain([40, 40, 40, 40])  # a unit of either layer costs the same
    scores = {"h0": torch.rand(40, generator=torch.Generator().manual_seed(0)) / 100 + 1e-4,
              "h1": torch.rand(40, generator=torch.Generator().manual_seed(1)) + 1e-4}
    original = {g.name: g.size for g in groups}
    total = weight_count(shapes, list(groups), original)
    b = budget(total, 0.55)
    removed = select(groups, scores, shapes, b, scope=Scope.LOCAL, original_sizes=original)
    assert abs(len(removed["h0"]) - len(removed["h1"])) <= 2
    by_scores = align_widths(groups, removed, scores, shapes, b, 8)
    by_shares = align_widths(groups, removed, shares(groups, scores, None, original), shapes,
                             b, 8)
    kept = {name: {g.name: g.size - len(r[g.name]) for g in groups}
            for name, r in (("scores", by_scores), ("shares", by_shares))}
    assert kept["scores"]["h0"] < kept["scores"]["h1"]  # the low-scored layer loses more
    assert abs(kept["shares"]["h0"] - kept["shares"]["h1"]) <= 8
    assert remaining(groups, shapes, by_shares) <= b.max_weights
    share = shares(groups, scores, None, original)["h1"]
    assert sorted(share.tolist()) == [(k + 1) / 40 for k in range(40)]
    assert torch.equal(share.argsort(), scores["h1"].argsort())  # the group's order is kept
    cut = {**scores, "h0": torch.full((40,), -math.inf)}  # a stream's cut, chosen beforehand
    assert torch.equal(shares(groups, cut, None, original)["h0"], cut["h0"].double())
