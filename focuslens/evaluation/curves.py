"""Tidy tables behind the sweep plots: accuracy with confidence intervals, attention allocation.

The plots of accuracy against alpha, number of heads, gold position or number of
documents, and of attention allocation against alpha or tau, all start from the same
kind of input: results of :func:`focuslens.evaluate` (an ``EvalResult``, or its
per-example DataFrame) arranged by series and x value. This module turns that input
into one long table, which :mod:`focuslens.plots` draws and the report prints.

Accepted inputs (``series`` is a legend entry, ``x`` the swept value):

* ``{series: {x: point}}`` where a point is an ``EvalResult``, a per-example DataFrame
  with a ``correct`` column, a list of those (pooled, e.g. several random-head seeds),
  an ``(accuracy, n)`` pair, or a bare accuracy (no interval);
* ``{series: result}`` with one ``EvalResult`` or per-example DataFrame per series,
  grouped by its column ``x`` (``"gold_position"``, ``"n_documents"``, ...);
* a DataFrame with columns ``series`` (optional), ``x`` and either ``correct``
  (per example) or ``accuracy`` and ``n`` (already aggregated).

Intervals: the Wilson score interval for a binomial proportion (95 % by default). Unlike
``p +- 1.96 sqrt(p (1 - p) / n)`` it stays inside [0, 1] and does not collapse to zero
width at accuracy 0 or 1, which small demo runs often hit. Two conditions evaluated on
the same prompts are compared prompt by prompt (:func:`paired_comparison`, with the
exact McNemar test): a paired design, tighter than comparing two intervals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Any

import pandas as pd

ALLOCATION_KINDS = ("relevant", "distractors", "sink", "other")
"""The attention-allocation kinds, stacked in this order."""


def wilson_interval(accuracy: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval ``(low, high)`` of a proportion observed on ``n`` examples.

    Example:
        >>> low, high = wilson_interval(1.0, 10)
        >>> round(low, 3), high
        (0.722, 1.0)
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n <= 0 or math.isnan(accuracy):
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    denom = 1 + z * z / n
    centre = (accuracy + z * z / (2 * n)) / denom
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(fixed: int, broken: int) -> float:
    """Two-sided exact McNemar p-value for a paired comparison of two conditions.

    On the same prompts, ``fixed`` prompts are right under the condition and wrong under
    the reference, ``broken`` the reverse; prompts right or wrong under both carry no
    information. Under the null hypothesis (no difference) each discordant prompt is a
    fair coin: the p-value is the two-sided binomial tail of ``min(fixed, broken)`` in
    ``fixed + broken`` draws, capped at 1.

    Example:
        >>> round(mcnemar_exact(12, 0), 6)  # 2 * 0.5 ** 12
        0.000488
        >>> mcnemar_exact(3, 3)
        1.0
    """
    if fixed < 0 or broken < 0:
        raise ValueError(f"counts must be >= 0, got fixed={fixed}, broken={broken}")
    n = fixed + broken
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(fixed, broken) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_difference_interval(
    fixed: int, broken: int, n: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Interval for the difference of two accuracies measured on the same ``n`` prompts.

    The adjusted Wald interval of Agresti and Min (2005): add 0.5 to each of the four
    cells of the paired table (so ``n + 2`` prompts), then
    ``d +- z sqrt((p10 + p01 - d ** 2) / (n + 2))`` with ``p10 = (fixed + 0.5) / (n + 2)``,
    ``p01 = (broken + 0.5) / (n + 2)`` and ``d = p10 - p01``; clipped to [-1, 1]. Its
    coverage stays near the nominal level for small differences and a few dozen prompts.

    Example:
        >>> low, high = paired_difference_interval(19, 1, 200)
        >>> round(low, 3), round(high, 3)
        (0.046, 0.132)
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if fixed < 0 or broken < 0 or fixed + broken > n:
        raise ValueError(
            f"need 0 <= fixed, broken and fixed + broken <= n; got {fixed}, {broken}, {n}"
        )
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    m = n + 2
    p10, p01 = (fixed + 0.5) / m, (broken + 0.5) / m
    d = p10 - p01
    half = z * math.sqrt(max(0.0, p10 + p01 - d * d) / m)
    return max(-1.0, d - half), min(1.0, d + half)


def paired_comparison(frame: Any, base: Any, key: str = "example") -> dict[str, Any] | None:
    """Compare two evaluations of the *same* prompts, prompt by prompt.

    Args:
        frame: The condition (an ``EvalResult`` or its per-example DataFrame).
        base: The reference, on the same prompts.
        key: The column naming each prompt (``evaluate`` writes ``example``).

    Returns:
        ``None`` when the two do not hold the same prompts (or lack ``key``), else
        ``{"n", "difference", "fixed", "broken", "p_value"}``: the number of prompts,
        accuracy minus the reference's, the prompts right only under the condition and
        only under the reference, and the exact McNemar p-value (:func:`mcnemar_exact`).
    """
    a, b = _frame_of(frame), _frame_of(base)
    if a is None or b is None or key not in a.columns or key not in b.columns:
        return None
    if a[key].duplicated().any() or b[key].duplicated().any():
        return None
    if set(a[key]) != set(b[key]) or not len(a):
        return None
    mine = a.set_index(key)["correct"].astype(bool)
    theirs = b.set_index(key)["correct"].astype(bool).reindex(mine.index)
    fixed = int((mine & ~theirs).sum())
    broken = int((~mine & theirs).sum())
    return {
        "n": len(mine),
        "difference": (fixed - broken) / len(mine),
        "fixed": fixed,
        "broken": broken,
        "p_value": mcnemar_exact(fixed, broken),
    }


def paired_summary(
    frame: Any, base: Any, confidence: float = 0.95, key: str = "example"
) -> dict[str, Any] | None:
    """:func:`paired_comparison` plus the paired interval on the difference (``low``,
    ``high``; :func:`paired_difference_interval`); None when the prompts differ."""
    paired = paired_comparison(frame, base, key=key)
    if paired is None:
        return None
    low, high = paired_difference_interval(
        paired["fixed"], paired["broken"], paired["n"], confidence
    )
    return {**paired, "low": low, "high": high}


SIGNIFICANCE = 0.05
"""The level below which a paired comparison's exact McNemar p-value counts as a clear
difference (:func:`paired_verdict`)."""


def paired_verdict(paired: dict[str, Any], significance: float = SIGNIFICANCE) -> str:
    """``"above"``, ``"below"`` or ``"within noise"``: whether a condition clearly beats
    its reference on the same prompts (the exact McNemar p-value of
    :func:`paired_comparison` below ``significance``, and more prompts fixed than broken).

    Example:
        >>> paired_verdict({"fixed": 19, "broken": 1, "p_value": 4e-5})
        'above'
        >>> paired_verdict({"fixed": 3, "broken": 0, "p_value": 0.25})
        'within noise'
    """
    if paired["p_value"] >= significance or paired["fixed"] == paired["broken"]:
        return "within noise"
    return "above" if paired["fixed"] > paired["broken"] else "below"


def _frame_of(value: Any) -> pd.DataFrame | None:
    """The per-example frame of an EvalResult or DataFrame, else None."""
    if isinstance(value, pd.DataFrame):
        return value
    frame = getattr(value, "to_dataframe", None)
    if callable(frame) and hasattr(value, "accuracy"):
        return frame()
    return None


def _point(value: Any, where: str) -> tuple[float, int | None]:
    """``(accuracy, n)`` of one point (n None when unknown)."""
    if isinstance(value, (list, tuple)) and value and _frame_of(value[0]) is not None:
        frames = [_frame_of(v) for v in value]
        return _point(pd.concat(frames, ignore_index=True), where)
    frame = _frame_of(value)
    if frame is not None:
        if "correct" not in frame.columns:
            raise ValueError(f"{where}: the per-example table has no 'correct' column")
        return float(frame["correct"].mean()) if len(frame) else float("nan"), len(frame)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return float(value[0]), int(value[1])
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), None
    raise ValueError(
        f"{where}: expected an EvalResult, a per-example DataFrame, (accuracy, n) or a "
        f"number, got {type(value).__name__}"
    )


def _grouped_rows(
    series: str, frame: pd.DataFrame, x: str, confidence: float
) -> list[dict[str, Any]]:
    if x not in frame.columns:
        raise ValueError(
            f"series {series!r}: the per-example table has no column {x!r} to group by "
            f"(columns: {list(frame.columns)})"
        )
    rows = []
    for value, group in frame.groupby(x, dropna=True, sort=True):
        acc, n = _point(group, f"series {series!r}, {x}={value!r}")
        rows.append({"series": series, "x": value, **_accuracy_row(acc, n, confidence)})
    return rows


def _accuracy_row(accuracy: float, n: int | None, confidence: float = 0.95) -> dict[str, Any]:
    low, high = wilson_interval(accuracy, n, confidence) if n else (float("nan"),) * 2
    return {"accuracy": accuracy, "n": n, "low": low, "high": high}


def accuracy_table(curves: Any, x: str = "alpha", confidence: float = 0.95) -> pd.DataFrame:
    """One row per (series, x): ``series, x, accuracy, n, low, high``.

    Args:
        curves: See the module docstring.
        x: The name of the swept value; for grouped inputs, the column to group by.
        confidence: Level of the Wilson interval ``[low, high]``.
    """
    frame = _frame_of(curves)
    if frame is not None:
        if "series" not in frame.columns:
            frame = frame.assign(series="accuracy")
        if "accuracy" in frame.columns:
            return _from_aggregated(frame, x, confidence)
        curves = {name: group for name, group in frame.groupby("series", sort=False)}
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError(
            f"curves must be a non-empty mapping of series to results, got {type(curves).__name__}"
        )
    rows: list[dict[str, Any]] = []
    for series, value in curves.items():
        frame = _frame_of(value)
        if frame is not None:
            rows += _grouped_rows(str(series), frame, x, confidence)
        elif isinstance(value, Mapping):
            for xv, point in value.items():
                acc, n = _point(point, f"series {series!r}, {x}={xv!r}")
                rows.append({"series": str(series), "x": xv, **_accuracy_row(acc, n, confidence)})
        else:
            raise ValueError(
                f"series {series!r}: expected a mapping {{{x}: result}} or one result to group "
                f"by {x!r}, got {type(value).__name__}"
            )
    return pd.DataFrame(rows, columns=["series", "x", "accuracy", "n", "low", "high"])


def _from_aggregated(frame: pd.DataFrame, x: str, confidence: float) -> pd.DataFrame:
    missing = [c for c in (x, "accuracy", "n") if c not in frame.columns]
    if missing:
        raise ValueError(f"the aggregated table lacks the columns {missing}")
    rows = [
        {"series": str(r["series"]), "x": r[x], **_accuracy_row(r["accuracy"], r["n"], confidence)}
        for _, r in frame.iterrows()
    ]
    return pd.DataFrame(rows, columns=["series", "x", "accuracy", "n", "low", "high"])


def reference_point(value: Any, name: str, confidence: float = 0.95) -> dict[str, Any]:
    """``{"accuracy", "n", "low", "high"}`` of a baseline or gold-only reference."""
    return _accuracy_row(*_point(value, name), confidence)


def _allocation_columns(frame: pd.DataFrame, kinds: Sequence[str], where: str) -> list[str]:
    cols = []
    for kind in kinds:
        col = f"attn_{kind}" if f"attn_{kind}" in frame.columns else kind
        if col not in frame.columns:
            raise ValueError(
                f"{where}: no attention column for {kind!r} (looked for 'attn_{kind}' and "
                f"{kind!r}); evaluate with heads=... to measure attention"
            )
        cols.append(col)
    return cols


def allocation_table(
    results: Any, x: str = "alpha", kinds: Sequence[str] = ALLOCATION_KINDS
) -> pd.DataFrame:
    """Mean attention mass per kind at each x: columns ``x, n, <kind>...``.

    Args:
        results: ``{x: EvalResult or per-example DataFrame}`` (measured with ``heads=``),
            or one DataFrame with a column ``x`` and ``attn_<kind>`` (or ``<kind>``)
            columns, per example or already averaged.
        x: The swept value's name (and the grouping column of a DataFrame).
        kinds: Which kinds to keep, in stacking order.

    Means skip NaN (examples whose attention was not measured).
    """
    if isinstance(results, pd.DataFrame):
        if x not in results.columns:
            raise ValueError(f"the table has no column {x!r} (columns: {list(results.columns)})")
        cols = _allocation_columns(results, kinds, "the table")
        grouped = results.groupby(x, sort=True)
        out = grouped[cols].mean()
        out.columns = list(kinds)
        out.insert(0, "n", grouped.size())
        return out.reset_index().rename(columns={x: "x"})
    if not isinstance(results, Mapping) or not results:
        raise ValueError(
            f"results must be a non-empty mapping {{{x}: EvalResult}} or a DataFrame, got "
            f"{type(results).__name__}"
        )
    rows = []
    for xv, value in results.items():
        frame = _frame_of(value)
        if frame is None:
            raise ValueError(f"{x}={xv!r}: expected an EvalResult or a DataFrame")
        cols = _allocation_columns(frame, kinds, f"{x}={xv!r}")
        row = {"x": xv, "n": len(frame)}
        row.update({k: float(frame[c].mean()) for k, c in zip(kinds, cols)})
        rows.append(row)
    return pd.DataFrame(rows).sort_values("x", key=x_sort_key).reset_index(drop=True)


def x_sort_key(col: pd.Series) -> pd.Series:
    """Numbers ascending, then non-numbers (``"auto"``) in their given order."""
    return col.map(lambda v: (0, float(v)) if _is_number(v) else (1, 0.0))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


__all__ = [
    "ALLOCATION_KINDS",
    "accuracy_table",
    "allocation_table",
    "mcnemar_exact",
    "paired_comparison",
    "paired_difference_interval",
    "paired_summary",
    "paired_verdict",
    "SIGNIFICANCE",
    "wilson_interval",
]
