"""Comparing head selections: set overlap (:func:`jaccard`) and the rank correlation of two whole
per-head tables (:func:`rank_correlation`, Spearman or Kendall)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from focuslens.heads.ranking import as_table
from focuslens.heads.sets import HeadSet


def jaccard(a: Iterable[tuple[int, int]], b: Iterable[tuple[int, int]]) -> float:
    """``|a & b| / |a | b|`` of two head sets.

    Example:
        >>> jaccard([(0, 1), (1, 2)], [(1, 2), (3, 0)])
        0.3333333333333333
    """
    sa, sb = HeadSet(a), HeadSet(b)
    union = len(sa | sb)
    if union == 0:
        raise ValueError("both head sets are empty; their Jaccard index is undefined")
    return len(sa & sb) / union


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of a 1-D float64 tensor, ties given their average rank."""
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    ranks = torch.empty_like(x)
    n, i = x.numel(), 0
    while i < n:
        j = i
        while j + 1 < n and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x - x.mean(), y - y.mean()
    denom = torch.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def _kendall_tau_b(x: torch.Tensor, y: torch.Tensor) -> float:
    dx = torch.sign(x[:, None] - x[None, :])
    dy = torch.sign(y[:, None] - y[None, :])
    upper = torch.triu(torch.ones_like(dx, dtype=torch.bool), diagonal=1)
    concord = (dx * dy)[upper].sum()
    nx, ny = (dx[upper] != 0).sum(), (dy[upper] != 0).sum()
    denom = torch.sqrt(nx.double() * ny.double())
    return float(concord / denom) if denom > 0 else float("nan")


def rank_correlation(
    a: Any,
    b: Any,
    *,
    method: str = "spearman",
    by: str = "relevant",
) -> float:
    """Rank correlation of two per-head tables over the heads where both have a value.

    Args:
        a: A ``[n_layers, n_heads]`` table: a tensor, a :class:`HeadScores`, or a
            :class:`~focuslens.ContextualScores` (read at kind ``by``).
        b: Another table of the same shape, of the same kinds.
        method: ``"spearman"`` (Pearson correlation of average ranks) or ``"kendall"``
            (tau-b, which handles ties).
        by: The kind read from a ContextualScores.

    Returns:
        A number in [-1, 1]; NaN when one table is constant over the shared heads.

    Example:
        >>> t = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        >>> rank_correlation(t, t ** 3), rank_correlation(t, -t, method="kendall")
        (1.0, -1.0)
    """
    ta, tb = as_table(a, by).double(), as_table(b, by).double()
    if ta.shape != tb.shape:
        raise ValueError(
            f"the tables have different shapes: {tuple(ta.shape)} vs {tuple(tb.shape)}"
        )
    keep = ~(torch.isnan(ta) | torch.isnan(tb))
    x, y = ta[keep], tb[keep]
    if x.numel() < 2:
        raise ValueError(f"only {x.numel()} heads have a value in both tables; need at least 2")
    if method == "spearman":
        return _pearson(_average_ranks(x), _average_ranks(y))
    if method == "kendall":
        return _kendall_tau_b(x, y)
    raise ValueError(f"method must be 'spearman' or 'kendall', got {method!r}")


__all__ = [
    "jaccard",
    "rank_correlation",
]
