"""Shape aliases shared across focuslens.

Dimension names follow TransformerLens (``batch``, ``pos``, ``head_index``,
``query_pos``, ``key_pos``, ``d_head``); per-head tables are ``"n_layers n_heads"``.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

from jaxtyping import Float, Int
from torch import Tensor

HeadTable = Float[Tensor, "n_layers n_heads"]
"""One number per attention head, indexed ``[layer, head]``."""

PerExampleHeadTable = Float[Tensor, "n_examples n_layers n_heads"]
"""One number per example and attention head."""

Pattern = Float[Tensor, "batch head_index query_pos key_pos"]
"""Attention probabilities as TransformerLens's ``hook_pattern`` gives them."""

AttnScores = Float[Tensor, "batch head_index query_pos key_pos"]
"""Pre-softmax attention logits (``hook_attn_scores``)."""

Queries = Float[Tensor, "batch pos head_index d_head"]
Keys = Float[Tensor, "batch pos kv_head_index d_head"]
Tokens = Int[Tensor, "batch pos"]
Direction = Float[Tensor, "head_index d_head"]


@runtime_checkable
class Model(Protocol):
    """What focuslens needs of a model: a TransformerLens ``HookedTransformer`` or a
    ``TransformerBridge`` (its config, named hook points, hooks as a context, a forward
    pass). Checked structurally, so either backend (and a test double) fits."""

    cfg: Any
    hook_dict: Any

    def hooks(self, *args: Any, **kwargs: Any) -> Any: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


@runtime_checkable
class HasConfig(Protocol):
    """Anything with a TransformerLens config (``.cfg``): a model, or a stand-in that only
    carries the shape (memory estimates need no weights)."""

    cfg: Any


QueryRows = Literal["response", "predict", "last"]
"""Which query rows a score reads: the response tokens, the rows predicting them, or the last
prompt token (see :mod:`focuslens.scores`)."""

Span = tuple[int, int]
"""A half-open range ``(start, end)``: characters of a prompt's text, or token positions."""

__all__ = [
    "HasConfig",
    "Model",
    "AttnScores",
    "Direction",
    "HeadTable",
    "Keys",
    "Pattern",
    "PerExampleHeadTable",
    "Queries",
    "QueryRows",
    "Span",
    "Tokens",
]
