"""Bootstrap intervals of per-head means: against scipy column by column, their coverage
by simulation, NaN and degenerate columns, and where the tables and figures carry them."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from focuslens.heads import HeadScores, bootstrap_ci


def test_each_head_equals_scipy_on_its_own_column():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(40, 2, 3, generator=gen) ** 2
    for method in ("BCa", "percentile"):
        low, high = bootstrap_ci(x, n_boot=999, seed=3, method=method, level=0.9)
        for l in range(2):
            for h in range(3):
                # all heads share the resampled prompts, so one column alone with the
                # same seed draws the same resamples
                ref = scipy.stats.bootstrap(
                    (x[:, l, h].double().numpy(),),
                    np.mean,
                    n_resamples=999,
                    confidence_level=0.9,
                    method=method,
                    rng=np.random.default_rng(3),
                ).confidence_interval
                assert low[l, h] == pytest.approx(ref.low, abs=1e-6)
                assert high[l, h] == pytest.approx(ref.high, abs=1e-6)
                assert low[l, h] < x[:, l, h].mean() < high[l, h]


def test_same_seed_same_interval_and_width_shrinks_with_more_examples():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200, 1, 1, generator=gen)
    a = bootstrap_ci(x[:50], seed=5)
    b = bootstrap_ci(x[:50], seed=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    wide = float(a[1] - a[0])
    narrow = float(torch.sub(*bootstrap_ci(x, seed=5)[::-1]))
    # the width of a mean's interval goes as 1/sqrt(n): 50 -> 200 halves it
    assert narrow == pytest.approx(wide / 2, rel=0.25)


@pytest.mark.slow
def test_coverage_of_the_mean_is_near_the_level():
    rng = np.random.default_rng(0)
    hits, n_sim = 0, 300
    for _ in range(n_sim):
        sample = rng.exponential(1.0, size=(30, 1, 1))  # skewed, true mean 1
        low, high = bootstrap_ci(torch.from_numpy(sample), n_boot=500, seed=int(rng.integers(1e9)))
        hits += bool(low[0, 0] <= 1.0 <= high[0, 0])
    # BCa at n=30 on an exponential covers about 0.92-0.94; 300 draws: +-0.03
    assert 0.87 <= hits / n_sim <= 0.98


def test_nan_heads_examples_and_constant_columns():
    x = torch.tensor(
        [
            [[0.1, torch.nan, 2.0], [0.5, 0.7, torch.nan]],
            [[0.3, torch.nan, 2.0], [0.2, 0.1, torch.nan]],
            [[0.2, torch.nan, 2.0], [torch.nan, torch.nan, torch.nan]],  # an example lacking it
            [[0.4, torch.nan, 2.0], [0.9, 0.3, torch.nan]],
        ]
    )
    low, high = bootstrap_ci(x, n_boot=500)
    assert torch.isnan(low[0, 1]) and torch.isnan(high[1, 2])  # never measured
    assert low[0, 2] == high[0, 2] == 2.0  # constant: zero width at the value
    # column [1, 0] resamples its 3 measured examples only
    ref = bootstrap_ci(torch.tensor([0.5, 0.2, 0.9])[:, None], n_boot=500)
    assert low[1, 0] == pytest.approx(float(ref[0][0]), abs=1e-6)
    assert low[0, 0] < 0.25 < high[0, 0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"level": 1.5}, "level must be a float in"),
        ({"n_boot": 10}, "n_boot must be an int >= 100"),
        ({"method": "t"}, "method must be one of"),
    ],
)
def test_bad_options_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(torch.rand(5, 2, 2), **kwargs)
    with pytest.raises(ValueError, match="at least 2 examples"):
        bootstrap_ci(torch.rand(1, 2, 2))


@pytest.mark.bad_input
def test_a_level_in_percent_names_the_problem():
    with pytest.raises(ValueError, match="level must be a float in"):
        bootstrap_ci(torch.rand(5, 2, 2), level=95)


def test_head_scores_carry_intervals_in_tables_and_hover():
    gen = torch.Generator().manual_seed(2)
    per = torch.randn(20, 2, 3, generator=gen) - 0.5
    scores = HeadScores(per.mean(0), per_example=per, name="effect")
    low, high = scores.ci(0.9, n_boot=500)
    assert torch.equal(low, bootstrap_ci(per, level=0.9, n_boot=500)[0])
    df = scores.to_dataframe(level=0.9, n_boot=500)
    assert list(df.columns) == ["layer", "head", "effect", "low", "high"]
    assert df.low.tolist() == low.flatten().tolist()
    fig = scores.figure(ci=0.9)
    low, high = scores.ci(0.9)
    text = fig.data[0].text
    assert f"interval [{float(low[1, 2]):.4f}, {float(high[1, 2]):.4f}]" in text[1][2]
    with pytest.raises(ValueError, match="no per-example values"):
        HeadScores(per.mean(0)).ci()
