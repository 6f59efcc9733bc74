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


def test_paired_difference_interval_covers_the_true_difference():
    """Coverage, by simulation: paired right/wrong outcomes drawn with known cell
    probabilities; the 95 % interval must hold the true difference about 95 % of the time."""
    import numpy as np

    from focuslens.evaluation.curves import paired_difference_interval

    rng = np.random.default_rng(0)
    for n, p10, p01 in [(100, 0.12, 0.05), (200, 0.08, 0.08), (40, 0.15, 0.05)]:
        cells = rng.multinomial(n, [p10, p01, 1 - p10 - p01], size=4000)
        hits = [
            low <= p10 - p01 <= high
            for low, high in (paired_difference_interval(int(f), int(b), n) for f, b, _ in cells)
        ]
        assert 0.93 <= float(np.mean(hits)) <= 0.975, (n, p10, p01, np.mean(hits))


def test_paired_difference_interval_by_hand_and_bad_input():
    from statistics import NormalDist

    from focuslens.evaluation.curves import paired_difference_interval

    z = NormalDist().inv_cdf(0.975)
    p10, p01 = 19.5 / 202, 1.5 / 202
    d = p10 - p01
    half = z * math.sqrt((p10 + p01 - d * d) / 202)
    assert paired_difference_interval(19, 1, 200) == pytest.approx((d - half, d + half))
    with pytest.raises(ValueError, match="fixed \\+ broken <= n"):
        paired_difference_interval(8, 5, 10)
    with pytest.raises(ValueError, match="confidence"):
        paired_difference_interval(1, 1, 10, confidence=1.0)


def test_eval_result_compare_is_paired_and_refuses_other_prompts():
    from focuslens.evaluation.accuracy import EvalResult

    def result(correct, answers=None):
        n = len(correct)
        return EvalResult(
            pd.DataFrame(
                {
                    "example": range(n),
                    "prediction": ["x"] * n,
                    "correct": correct,
                    "answers": answers or [[f"a{i}"] for i in range(n)],
                }
            )
        )

    base = result([True] * 50 + [False] * 50)
    boosted = result([True] * 48 + [False] * 2 + [True] * 12 + [False] * 38)
    got = boosted.compare(base)
    assert (got["fixed"], got["broken"], got["n"]) == (12, 2, 100)
    assert got["accuracy"] == pytest.approx(0.60) and got["other_accuracy"] == pytest.approx(0.50)
    assert got["difference"] == pytest.approx(0.10)
    assert got["p_value"] == pytest.approx(mcnemar_exact(12, 2))
    assert got["low"] < got["difference"] < got["high"]
    with pytest.raises(ValueError, match="same examples"):
        boosted.compare(result([True] * 10))
    other = result([True] * 100, answers=[[f"b{i}"] for i in range(100)])
    with pytest.raises(ValueError, match="gold answers of examples \\[0, 1, 2, 3, 4\\] differ"):
        boosted.compare(other)
