"""Head sets: which attention heads an analysis or intervention is about.

A :class:`HeadSet` is a sorted, hashable set of ``(layer, head)`` pairs, printed as
``L13H23`` and convertible to and from the authors' ``[[layer, head], ...]`` JSON.
``ContextualScores.top_heads(k)`` returns a ranked list that converts to it.

Selecting and comparing heads:

* :func:`top_k` picks the ``k`` best heads of any per-head table (a
  :class:`~focuslens.ContextualScores` kind, a :class:`HeadScores`, a tensor);
  :func:`ranked` gives the full order, best first.
* :func:`random_heads` and :func:`random_like` draw the controls of an experiment:
  ``k`` random heads, or as many as a given set, optionally with the same number of
  heads in each layer (``match_layers=True``: a control that keeps the depth profile,
  so that "top-k beats random" is not just "middle layers beat early ones"), and
  optionally disjoint from the set (``exclude=``).
* :func:`jaccard` compares two head sets; :func:`rank_correlation` (Spearman or
  Kendall) compares two whole score tables, e.g. contextual scores vs retrieval-head
  scores or ablation effects.

:class:`HeadScores` is the result type of per-head analyses that give one number per
head (retrieval-head scores, ablation effects): a ``[n_layers, n_heads]`` table with
optional per-example values, ``to_dataframe()`` and a heatmap ``figure()``.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from focuslens.typing import HeadTable, PerExampleHeadTable


class HeadSet:
    """A sorted, immutable set of ``(layer, head)`` pairs.

    Example:
        >>> hs = HeadSet([(1, 3), (0, 2), (1, 3)])
        >>> hs
        HeadSet([L0H2, L1H3])
        >>> len(hs), (1, 3) in hs, hs.by_layer()
        (2, True, {0: [2], 1: [3]})
        >>> HeadSet.from_json(hs.to_json()) == hs
        True
    """

    __slots__ = ("_heads",)

    def __init__(self, heads: Iterable[tuple[int, int]] | HeadSet = ()) -> None:
        pairs = set()
        for item in heads:
            if isinstance(item, str):
                item = _parse(item)
            try:
                layer, head = item
                pairs.add((int(layer), int(head)))
            except (TypeError, ValueError):
                raise ValueError(
                    f"a head must be a (layer, head) pair or 'L<l>H<h>', got {item!r}"
                ) from None
        self._heads: tuple[tuple[int, int], ...] = tuple(sorted(pairs))

    def __iter__(self):
        return iter(self._heads)

    def __len__(self) -> int:
        return len(self._heads)

    def __contains__(self, item: object) -> bool:
        return item in self._heads

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HeadSet) and other._heads == self._heads

    def __hash__(self) -> int:
        return hash(self._heads)

    def __repr__(self) -> str:
        return f"HeadSet([{', '.join(str_head(h) for h in self._heads)}])"

    def __str__(self) -> str:
        return " ".join(str_head(h) for h in self._heads)

    def __or__(self, other: Iterable[tuple[int, int]]) -> HeadSet:
        return HeadSet([*self._heads, *HeadSet(other)])

    def __and__(self, other: Iterable[tuple[int, int]]) -> HeadSet:
        other_set = set(HeadSet(other))
        return HeadSet(h for h in self._heads if h in other_set)

    def __sub__(self, other: Iterable[tuple[int, int]]) -> HeadSet:
        other_set = set(HeadSet(other))
        return HeadSet(h for h in self._heads if h not in other_set)

    def by_layer(self) -> dict[int, list[int]]:
        """Layer -> sorted head indices."""
        out: dict[int, list[int]] = {}
        for layer, head in self._heads:
            out.setdefault(layer, []).append(head)
        return out

    def layers(self) -> list[int]:
        return sorted({layer for layer, _ in self._heads})

    def mask(self, n_layers: int, n_heads: int) -> torch.Tensor:
        """``[n_layers, n_heads]`` bool mask of the set."""
        m = torch.zeros(n_layers, n_heads, dtype=torch.bool)
        for layer, head in self._heads:
            m[layer, head] = True
        return m

    def validate(self, model: Any, *, allow_empty: bool = False) -> HeadSet:
        """Check every head exists in ``model``; returns self for chaining."""
        if not self._heads and not allow_empty:
            raise ValueError("the head set is empty; give at least one (layer, head)")
        n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
        for layer, head in self._heads:
            if not (0 <= layer < n_layers and 0 <= head < n_heads):
                raise ValueError(
                    f"head {str_head((layer, head))} does not exist in a model with "
                    f"{n_layers} layers and {n_heads} heads"
                )
        return self

    def to_list(self) -> list[list[int]]:
        """The authors' format: ``[[layer, head], ...]``."""
        return [[layer, head] for layer, head in self._heads]

    def to_json(self) -> str:
        return json.dumps(self.to_list())

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> HeadSet:
        """Read ``[[layer, head], ...]`` from a JSON string or file (e.g. the authors'
        ``relevant_heads.json``; use :func:`ranked_from_json` to keep their order)."""
        return cls(ranked_from_json(text_or_path))


def ranked_from_json(text_or_path: str | Path) -> list[tuple[int, int]]:
    """``[[layer, head], ...]`` from JSON text or a file, in file order (best first)."""
    text = str(text_or_path)
    path = Path(text)
    if not text.lstrip().startswith("[") and path.exists():
        text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a JSON list of [layer, head] pairs: {exc}") from None
    if not isinstance(data, list) or not all(isinstance(p, list) and len(p) == 2 for p in data):
        raise ValueError(f"expected a JSON list of [layer, head] pairs, got {str(data)[:80]}")
    return [(int(layer), int(head)) for layer, head in data]


def str_head(head: tuple[int, int]) -> str:
    """``(13, 23)`` -> ``"L13H23"``."""
    return f"L{head[0]}H{head[1]}"


def _parse(text: str) -> tuple[int, int]:
    t = text.strip().upper()
    if t.startswith("L") and "H" in t:
        layer, head = t[1:].split("H", 1)
        if layer.isdigit() and head.isdigit():
            return int(layer), int(head)
    raise ValueError(f"cannot read head {text!r}; write it as 'L<layer>H<head>', e.g. 'L13H23'")


# --------------------------------------------------------------------- per-head tables
def head_shape(model_or_shape: Any) -> tuple[int, int]:
    """``(n_layers, n_heads)`` of a model (anything with ``.cfg``) or of a 2-tuple."""
    cfg = getattr(model_or_shape, "cfg", None)
    if cfg is not None:
        return int(cfg.n_layers), int(cfg.n_heads)
    try:
        n_layers, n_heads = (int(x) for x in model_or_shape)
    except (TypeError, ValueError):
        raise ValueError(
            f"expected a model or an (n_layers, n_heads) pair, got {model_or_shape!r}"
        ) from None
    if n_layers < 1 or n_heads < 1:
        raise ValueError(f"(n_layers, n_heads) must be positive, got ({n_layers}, {n_heads})")
    return n_layers, n_heads


def as_table(scores: Any, by: str = "relevant") -> HeadTable:
    """The ``[n_layers, n_heads]`` table of a score object.

    Accepts a tensor, a :class:`HeadScores` (its ``values``) or anything indexable by a
    kind name, such as :class:`~focuslens.ContextualScores` (``scores[by]``).
    """
    if isinstance(scores, torch.Tensor):
        table = scores
    elif isinstance(scores, HeadScores):
        table = scores.values
    else:
        try:
            table = scores[by]
        except (TypeError, KeyError) as exc:
            raise ValueError(
                f"cannot read a per-head table of kind {by!r} from a {type(scores).__name__}: {exc}"
            ) from None
    if not isinstance(table, torch.Tensor) or table.dim() != 2:
        shape = tuple(table.shape) if isinstance(table, torch.Tensor) else type(table).__name__
        raise ValueError(f"a per-head table must be [n_layers, n_heads], got {shape}")
    return table.detach().float().cpu()


def ranked(scores: Any, *, by: str = "relevant", largest: bool = True) -> list[tuple[int, int]]:
    """Every head, best first (largest values first unless ``largest=False``).

    NaN values rank last; ties are broken by ``(layer, head)`` ascending.

    Example:
        >>> ranked(torch.tensor([[0.1, 0.9], [0.5, float("nan")]]))
        [(0, 1), (1, 0), (0, 0), (1, 1)]
    """
    table = as_table(scores, by)
    n_heads = table.shape[1]
    values = table.flatten().tolist()
    sign = -1.0 if largest else 1.0

    def key(i: int) -> tuple[int, float, int]:
        v = values[i]
        return (1, 0.0, i) if math.isnan(v) else (0, sign * v, i)

    return [(i // n_heads, i % n_heads) for i in sorted(range(len(values)), key=key)]


def top_k(scores: Any, k: int, *, by: str = "relevant", largest: bool = True) -> HeadSet:
    """The ``k`` best heads of a per-head table, as a :class:`HeadSet`.

    Args:
        scores: A :class:`~focuslens.ContextualScores`, a :class:`HeadScores` or a
            ``[n_layers, n_heads]`` tensor.
        k: How many heads.
        by: The score kind of a ContextualScores (``"relevant"``, ``"sink"``, ...).
        largest: Pick the largest values (default); False picks the smallest (the most
            harmful heads of an ablation table, whose effects are negative).

    Example:
        >>> top_k(torch.tensor([[0.1, 0.9], [0.5, 0.2]]), 2)
        HeadSet([L0H1, L1H0])
    """
    table = as_table(scores, by)
    n = table.numel()
    if isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= n:
        raise ValueError(f"k must be an int between 1 and {n} (the number of heads), got {k!r}")
    n_valid = int((~torch.isnan(table)).sum())
    if k > n_valid:
        raise ValueError(f"k={k} but only {n_valid} heads have a score (the rest are NaN)")
    return HeadSet(ranked(table, largest=largest)[:k])


def random_heads(
    model_or_shape: Any,
    k: int,
    *,
    seed: int = 0,
    exclude: Iterable[tuple[int, int]] = (),
    per_layer: dict[int, int] | None = None,
) -> HeadSet:
    """``k`` heads drawn uniformly without replacement (a control for an experiment).

    Args:
        model_or_shape: A model or ``(n_layers, n_heads)``.
        k: Number of heads.
        seed: Seed of the draw (same arguments, same heads).
        exclude: Heads never drawn (e.g. the set the control is compared with).
        per_layer: Draw exactly this many heads in each layer (``{layer: count}``, counts
            summing to ``k``) instead of uniformly over all layers.
    """
    n_layers, n_heads = head_shape(model_or_shape)
    banned = set(HeadSet(exclude))
    rng = random.Random(seed)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if per_layer is None:
        pool = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in banned]
        if k > len(pool):
            raise ValueError(
                f"cannot draw {k} random heads: only {len(pool)} of the {n_layers * n_heads} "
                f"heads are left after excluding {len(banned)}"
            )
        return HeadSet(rng.sample(pool, k))
    if sum(per_layer.values()) != k:
        raise ValueError(f"per_layer counts {per_layer} sum to {sum(per_layer.values())}, not {k}")
    chosen: list[tuple[int, int]] = []
    for layer in sorted(per_layer):
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer {layer} does not exist in a model with {n_layers} layers")
        pool = [(layer, h) for h in range(n_heads) if (layer, h) not in banned]
        if per_layer[layer] > len(pool):
            raise ValueError(
                f"cannot draw {per_layer[layer]} random heads in layer {layer}: only "
                f"{len(pool)} of its {n_heads} heads are left after the exclusions"
            )
        chosen.extend(rng.sample(pool, per_layer[layer]))
    return HeadSet(chosen)


def random_like(
    heads: Iterable[tuple[int, int]],
    model_or_shape: Any,
    *,
    seed: int = 0,
    match_layers: bool = False,
    disjoint: bool = False,
) -> HeadSet:
    """A random head set of the same size as ``heads`` (the control of a top-k experiment).

    Args:
        heads: The set to match.
        model_or_shape: A model or ``(n_layers, n_heads)``.
        seed: Seed of the draw.
        match_layers: Also match the number of heads in each layer.
        disjoint: Draw no head of ``heads``.

    Example:
        >>> top = HeadSet([(1, 0), (1, 3), (2, 2)])
        >>> ctrl = random_like(top, (4, 8), match_layers=True, disjoint=True, seed=1)
        >>> len(ctrl), [len(v) for v in ctrl.by_layer().values()], len(ctrl & top)
        (3, [2, 1], 0)
    """
    hs = HeadSet(heads)
    if not hs:
        raise ValueError("cannot match an empty head set")
    counts = {layer: len(h) for layer, h in hs.by_layer().items()} if match_layers else None
    return random_heads(
        model_or_shape, len(hs), seed=seed, exclude=hs if disjoint else (), per_layer=counts
    )


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


@dataclass
class HeadScores:
    """One number per attention head, optionally per example.

    Attributes:
        values: ``[n_layers, n_heads]`` table (NaN for heads not measured).
        per_example: ``[n_examples, n_layers, n_heads]`` values, or None.
        name: What the number is (the value column of :meth:`to_dataframe`).
        meta: Provenance.
    """

    values: HeadTable
    per_example: PerExampleHeadTable | None = None
    name: str = "score"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.values, torch.Tensor) or self.values.dim() != 2:
            shape = getattr(self.values, "shape", type(self.values).__name__)
            raise ValueError(f"values must be a [n_layers, n_heads] tensor, got {shape}")
        if self.per_example is not None and (
            self.per_example.dim() != 3 or self.per_example.shape[1:] != self.values.shape
        ):
            raise ValueError(
                f"per_example has shape {tuple(self.per_example.shape)}, expected "
                f"[n_examples, {self.values.shape[0]}, {self.values.shape[1]}]"
            )

    @property
    def n_layers(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.values.shape[1])

    def top_heads(self, k: int, *, largest: bool = True) -> list[tuple[int, int]]:
        """The ``k`` best heads, best first; raises when fewer than ``k`` have a value."""
        top_k(self.values, k, largest=largest)  # validates k
        return ranked(self.values, largest=largest)[:k]

    def to_dataframe(self) -> Any:
        """Long format: one row per head, columns ``layer``, ``head``, ``<name>``."""
        import pandas as pd

        t = self.values.detach().float().cpu()
        rows = [
            {"layer": l, "head": h, self.name: float(t[l, h])}
            for l in range(self.n_layers)
            for h in range(self.n_heads)
        ]
        return pd.DataFrame(rows)

    def figure(self, *, top_k: int = 5, title: str | None = None) -> Any:
        """A layer x head heatmap (plotly ``go.Figure``), the ``top_k`` heads marked.

        Signed values (ablation effects) use :func:`focuslens.plots.head_effects`
        (red-blue centred at 0, heads ranked by absolute value); non-negative ones
        :func:`focuslens.plots.head_scores`.
        """
        from focuslens import plots

        finite = self.values[~torch.isnan(self.values)]
        if finite.numel() and bool(finite.min() < 0):
            return plots.head_effects(self.values, top_k=top_k, label=self.name, title=title)
        return plots.head_scores({self.name: self.values}, kind=self.name, top_k=top_k, title=title)


__all__ = [
    "HeadScores",
    "HeadSet",
    "as_table",
    "head_shape",
    "jaccard",
    "random_heads",
    "random_like",
    "rank_correlation",
    "ranked",
    "ranked_from_json",
    "str_head",
    "top_k",
]
