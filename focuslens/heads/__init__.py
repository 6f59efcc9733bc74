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
head (retrieval-head scores, ablation and patching effects): a ``[n_layers, n_heads]``
table with optional per-example values, ``to_dataframe()``, a heatmap ``figure()`` and
bootstrap intervals over examples, ``ci()`` (:func:`bootstrap_ci`).
"""

from focuslens.heads.compare import jaccard, rank_correlation
from focuslens.heads.intervals import bootstrap_ci
from focuslens.heads.ranking import (
    as_table,
    head_shape,
    random_control,
    random_heads,
    random_like,
    ranked,
    ranked_top,
    ranks,
    top_k,
    unique_heads,
)
from focuslens.heads.scores import HeadScores
from focuslens.heads.sets import HeadSet, ranked_from_json, str_head

__all__ = [
    "HeadScores",
    "HeadSet",
    "as_table",
    "bootstrap_ci",
    "head_shape",
    "jaccard",
    "random_control",
    "random_heads",
    "random_like",
    "rank_correlation",
    "ranked",
    "ranked_from_json",
    "ranked_top",
    "ranks",
    "str_head",
    "top_k",
    "unique_heads",
]
