"""Paired comparisons of two conditions on the same prompts (exact McNemar test)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from focuslens.evaluation.curves import mcnemar_exact, paired_comparison


def _binomial_two_sided(k: int, n: int) -> float:
    """By hand: twice the lower tail of Binomial(n, 1/2) at min(k, n - k), capped at 1."""
    k = min(k, n - k)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) * 0.5**n)


@pytest.mark.parametrize("fixed,broken", [(12, 0), (8, 2), (3, 11), (7, 7), (0, 1), (40, 5)])
def test_mcnemar_exact_is_the_two_sided_binomial_test(fixed, broken):
    assert mcnemar_exact(fixed, broken) == pytest.approx(
        _binomial_two_sided(fixed, fixed + broken), rel=1e-12
    )
    assert mcnemar_exact(fixed, broken) == mcnemar_exact(broken, fixed)


def test_mcnemar_exact_known_values():
    assert mcnemar_exact(12, 0) == pytest.approx(2 / 4096)
    assert mcnemar_exact(8, 2) == pytest.approx(0.109375)  # 2 * 56 / 1024
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0
    with pytest.raises(ValueError, match="counts must be >= 0"):
        mcnemar_exact(-1, 3)


def test_mcnemar_exact_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    for fixed, broken in [(12, 0), (8, 2), (3, 11), (20, 9), (31, 5)]:
        expected = stats.binomtest(fixed, fixed + broken, 0.5).pvalue
        assert mcnemar_exact(fixed, broken) == pytest.approx(expected, rel=1e-9)


def _frame(correct: list[bool], order: list[int] | None = None) -> pd.DataFrame:
    ids = order if order is not None else list(range(len(correct)))
    return pd.DataFrame({"example": ids, "correct": correct})


def test_paired_comparison_counts_prompt_by_prompt():
    base = [True] * 50 + [False] * 50
    cond = [True] * 50 + [True] * 12 + [False] * 38  # fixes 12 prompts, breaks none
    got = paired_comparison(_frame(cond), _frame(base))
    assert got == {
        "n": 100,
        "difference": pytest.approx(0.12),
        "fixed": 12,
        "broken": 0,
        "p_value": pytest.approx(2 / 4096),
    }
    # the order of the rows does not matter: prompts are matched by their id
    shuffled = _frame(cond[::-1], order=list(range(100))[::-1])
    assert paired_comparison(shuffled, _frame(base)) == got


def test_paired_comparison_needs_the_same_prompts():
    a = _frame([True, False, True])
    assert paired_comparison(a, _frame([True, True])) is None  # other prompts
    assert paired_comparison(a, pd.DataFrame({"correct": [True, False, True]})) is None
    pooled = pd.DataFrame({"example": [0, 1, 2, 0, 1, 2], "correct": [True] * 6})
    assert paired_comparison(pooled, a) is None  # several random sets on the same prompts
