"""Ranking and drawing heads: the one NaN-aware ranking, top-k, and the random controls.

* :func:`ranked` orders every head of a per-head table, best first, NaN last; :func:`top_k`
  and :func:`ranked_top` take the best ``k`` and refuse a ``k`` that reaches a head without
  a score; :func:`ranks` gives each head its rank.
* :func:`random_heads`, :func:`random_like` and :func:`random_control` draw the controls
  of an experiment: ``k`` random heads, or as many as a given set, optionally with the same
  number of heads in each layer, optionally disjoint from the set.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from typing import Any

import torch

from focuslens.heads.sets import HeadSet
from focuslens.typing import HeadTable, Model


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
    elif isinstance(getattr(scores, "values", None), torch.Tensor):  # a HeadScores
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


def ranks(scores: Any, *, by: str = "relevant", largest: bool = True) -> torch.Tensor:
    """``[n_layers, n_heads]`` 1-based ranks in the order of :func:`ranked` (NaN ranks last).

    Example:
        >>> ranks(torch.tensor([[0.1, 0.9], [0.5, float("nan")]])).tolist()
        [[3, 1], [2, 4]]
    """
    table = as_table(scores, by)
    out = torch.zeros(table.shape, dtype=torch.long)
    for rank, (layer, head) in enumerate(ranked(table, largest=largest), start=1):
        out[layer, head] = rank
    return out


def ranked_top(
    scores: Any, k: int, *, by: str = "relevant", largest: bool = True
) -> list[tuple[int, int]]:
    """The ``k`` best heads, best first: :func:`ranked`, refusing a ``k`` that would reach
    a head without a score (NaN), so an all-NaN table is never ranked."""
    table = as_table(scores, by)
    n = table.numel()
    if isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= n:
        raise ValueError(f"k must be an int between 1 and {n} (the number of heads), got {k!r}")
    n_valid = int((~torch.isnan(table)).sum())
    if k > n_valid:
        raise ValueError(f"k={k} but only {n_valid} heads have a score (the rest are NaN)")
    return ranked(table, largest=largest)[:k]


def unique_heads(model: Model, heads: Iterable[Any]) -> list[tuple[int, int]]:
    """Heads in the order given, duplicates dropped, each checked against the model."""
    order = [next(iter(HeadSet([h]))) for h in heads]
    HeadSet(order).validate(model)
    return list(dict.fromkeys(order))


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
    return HeadSet(ranked_top(scores, k, by=by, largest=largest))


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


def random_control(
    heads: Iterable[tuple[int, int]],
    model_or_shape: Any,
    *,
    seed: int = 0,
    match_layers: bool = False,
) -> HeadSet:
    """The paper's random-heads control: as many random heads as ``heads``, none of them
    in ``heads`` where enough other heads exist (else drawn among all heads), seeded.

    Example:
        >>> top = HeadSet([(1, 0), (1, 1)])
        >>> ctrl = random_control(top, (2, 4), seed=0)
        >>> len(ctrl), len(ctrl & top)
        (2, 0)
    """
    try:
        return random_like(
            heads, model_or_shape, seed=seed, match_layers=match_layers, disjoint=True
        )
    except ValueError:  # not enough other heads: draw among all of them
        return random_like(heads, model_or_shape, seed=seed, match_layers=match_layers)


__all__ = [
    "head_shape",
    "as_table",
    "ranked",
    "ranks",
    "ranked_top",
    "unique_heads",
    "top_k",
    "random_heads",
    "random_like",
    "random_control",
]
