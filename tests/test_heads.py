"""Head selection, random controls and overlap measures, checked by hand and by scipy."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from _tiny import labeled_prompts, tiny_model

from focuslens import contextual_scores
from focuslens.heads import (
    HeadScores,
    HeadSet,
    jaccard,
    random_heads,
    random_like,
    rank_correlation,
    ranked,
    top_k,
)
from focuslens.scores import ContextualScores
from focuslens.scores.result import KINDS


def scores_from(table: torch.Tensor) -> ContextualScores:
    return ContextualScores.from_per_example({k: table[None] for k in KINDS})


def test_top_k_agrees_with_contextual_scores_ranking():
    model = tiny_model("rotary")
    scores = contextual_scores(model, labeled_prompts(3))
    for k in (1, 3, 8):
        assert top_k(scores, k) == HeadSet(scores.top_heads(k))
        assert top_k(scores, k, by="sink") == HeadSet(scores.top_heads(k, by="sink"))
    # By hand: the flat argsort of the table.
    flat = scores.relevant.flatten()
    best = torch.argsort(flat, descending=True)[:3].tolist()
    assert top_k(scores.relevant, 3) == HeadSet((i // 4, i % 4) for i in best)


def test_ranked_handles_ties_nan_and_direction():
    table = torch.tensor([[0.2, float("nan"), 0.5], [0.5, -1.0, 0.0]])
    assert ranked(table) == [(0, 2), (1, 0), (0, 0), (1, 2), (1, 1), (0, 1)]
    assert ranked(table, largest=False) == [(1, 1), (1, 2), (0, 0), (0, 2), (1, 0), (0, 1)]
    assert top_k(table, 2, largest=False) == HeadSet([(1, 1), (1, 2)])
    with pytest.raises(ValueError, match="only 5 heads have a score"):
        top_k(table, 6)
    with pytest.raises(ValueError, match="k must be an int between 1 and 6"):
        top_k(table, 0)
    with pytest.raises(ValueError, match=r"must be \[n_layers, n_heads\]"):
        top_k(torch.zeros(3), 1)
    with pytest.raises(ValueError, match="cannot read a per-head table of kind 'focus'"):
        top_k(scores_from(table.nan_to_num(0)), 1, by="focus")


def test_random_heads_are_uniform_seeded_and_respect_exclusions():
    a = random_heads((3, 4), 5, seed=1)
    assert len(a) == 5 and a == random_heads((3, 4), 5, seed=1)
    assert any(random_heads((3, 4), 5, seed=s) != a for s in range(2, 6))
    top = HeadSet([(0, 0), (1, 1), (2, 2)])
    for seed in range(20):
        assert not random_heads((3, 4), 9, seed=seed, exclude=top) & top
    counts = Counter(h for s in range(3000) for h in random_heads((2, 4), 1, seed=s))
    # Each of the 8 heads is drawn with probability 1/8: 375 +- 4 sd (sd ~ 18).
    assert set(counts) == {(l, h) for l in range(2) for h in range(4)}
    assert all(abs(c - 375) < 75 for c in counts.values()), counts
    with pytest.raises(ValueError, match="only 9 of the 12 heads are left after excluding 3"):
        random_heads((3, 4), 10, exclude=top)
    with pytest.raises(ValueError, match="k must be a positive int"):
        random_heads((3, 4), 0)
    with pytest.raises(ValueError, match="expected a model or an"):
        random_heads("big", 2)


def test_random_like_matches_size_and_layers():
    model = tiny_model("rotary", n_layers=3, n_heads=6)
    top = HeadSet([(0, 1), (2, 0), (2, 5)])
    for seed in range(10):
        ctrl = random_like(top, model, seed=seed, match_layers=True, disjoint=True)
        assert len(ctrl) == 3 and not ctrl & top
        assert {l: len(h) for l, h in ctrl.by_layer().items()} == {0: 1, 2: 2}
        free = random_like(top, model, seed=seed)
        assert len(free) == 3
    layers = Counter(l for s in range(200) for l, _ in random_like(top, model, seed=s))
    assert len(layers) == 3  # unmatched controls use every layer
    with pytest.raises(ValueError, match="cannot draw 6 random heads in layer 2"):
        random_like([(2, h) for h in range(6)], model, match_layers=True, disjoint=True)
    with pytest.raises(ValueError, match="cannot match an empty head set"):
        random_like([], model)


def test_jaccard_by_hand():
    a, b = [(0, 1), (1, 2), (2, 3)], [(1, 2), (2, 3), (3, 0), (3, 1)]
    assert jaccard(a, b) == pytest.approx(2 / 5)
    assert jaccard(a, a) == 1.0 and jaccard(a, [(5, 5)]) == 0.0
    with pytest.raises(ValueError, match="both head sets are empty"):
        jaccard([], [])


def test_rank_correlation_against_hand_values_and_scipy():
    t = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert rank_correlation(t, t.exp()) == pytest.approx(1.0)
    assert rank_correlation(t, -t, method="kendall") == pytest.approx(-1.0)
    # By hand: x = 1..4, y = (1, 3, 2, 4): d = (0, 1, 1, 0), rho = 1 - 6*2/(4*15) = 0.8;
    # Kendall: 5 concordant and 1 discordant pair of 6, tau = 4/6.
    x, y = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1.0, 3.0], [2.0, 4.0]])
    assert rank_correlation(x, y) == pytest.approx(0.8)
    assert rank_correlation(x, y, method="kendall") == pytest.approx(4 / 6)
    # NaN heads are left out: equal to the correlation over the others.
    xn = torch.tensor([[1.0, 2.0, 9.0], [3.0, 4.0, float("nan")]])
    yn = torch.tensor([[1.0, 3.0, float("nan")], [2.0, 4.0, 0.0]])
    assert rank_correlation(xn, yn) == pytest.approx(0.8)
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        a = torch.randint(0, 6, (4, 5), generator=g).float()  # many ties
        b = a + torch.randint(0, 4, (4, 5), generator=g).float()
        rho = stats.spearmanr(a.flatten(), b.flatten()).statistic
        tau = stats.kendalltau(a.flatten(), b.flatten()).statistic
        assert rank_correlation(a, b) == pytest.approx(rho, abs=1e-12)
        assert rank_correlation(a, b, method="kendall") == pytest.approx(tau, abs=1e-12)
    with pytest.raises(ValueError, match="different shapes"):
        rank_correlation(x, t)
    with pytest.raises(ValueError, match="method must be"):
        rank_correlation(x, y, method="pearson")
    lone = torch.full((2, 3), float("nan"))
    lone[0, 0] = 1.0
    with pytest.raises(ValueError, match="only 1 heads have a value in both"):
        rank_correlation(xn, lone)


def test_rank_correlation_reads_contextual_scores():
    model = tiny_model("gqa")
    prompts = labeled_prompts(3)
    scores = contextual_scores(model, prompts)
    assert rank_correlation(scores, scores.relevant) == pytest.approx(1.0)
    assert rank_correlation(scores, scores, by="sink") == pytest.approx(1.0)


def test_head_scores_table_dataframe_and_figure():
    values = torch.tensor([[0.1, -0.4], [0.3, float("nan")]])
    hs = HeadScores(values, per_example=values[None].repeat(3, 1, 1), name="effect")
    df = hs.to_dataframe()
    assert list(df.columns) == ["layer", "head", "effect"] and len(df) == 4
    assert df[(df.layer == 0) & (df["head"] == 1)].effect.item() == pytest.approx(-0.4)
    assert hs.top_heads(2) == [(1, 0), (0, 0)]
    assert hs.top_heads(1, largest=False) == [(0, 1)]
    signed = hs.figure(top_k=2)
    assert signed.data[0].type == "heatmap" and signed.data[0].zmid == 0
    positive = HeadScores(values.abs(), name="score").figure()
    assert positive.data[0].zmin == 0 and positive.data[0].z[1][0] == pytest.approx(0.3)
    # A ValueError, or jaxtyping's TypeError when run with --jaxtyping-packages.
    with pytest.raises((ValueError, TypeError), match="per_example"):
        HeadScores(values, per_example=torch.zeros(3, 2, 3))
    with pytest.raises((ValueError, TypeError), match="values"):
        HeadScores(torch.zeros(2))


def test_headset_from_ranked_lists_round_trip():
    pairs = list(itertools.product(range(2), range(3)))
    hs = HeadSet(reversed(pairs))
    assert list(hs) == pairs and hash(hs) == hash(HeadSet(pairs))
    assert HeadSet.from_json(hs.to_json()) == hs and str(HeadSet([(13, 23)])) == "L13H23"


@pytest.mark.bad_input
def test_heads_are_real_non_negative_ints():
    import numpy as np

    assert HeadSet([(torch.tensor(1), np.int64(2))]) == HeadSet([(1, 2)])
    for bad in [(True, 1), (0, False), (1.0, 2), (1, 2.5), (-1, 0), (0, torch.tensor(1.0))]:
        with pytest.raises(ValueError, match="must be non-negative ints"):
            HeadSet([bad])
