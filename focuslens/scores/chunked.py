"""Contextual scores of long prompts through chunked prefill, with or without patterns.

Why: a ``HookedTransformer`` forward builds every layer's full ``[n_heads, n, n]``
attention pattern, while contextual scores only need the rows of the response. Here the
prompt goes through :func:`focuslens.model.prefill.chunked_forward` in chunks, and the
scores come from one of two routes (``scores_from=``):

* ``"keys"``: without patterns. The rotated queries of the scored rows are kept as
  their chunk passes (``hook_rot_q``, or ``hook_q`` without rotary), and in the last
  chunk each layer's keys (``hook_rot_k``; the cached keys plus ``hook_k`` without
  rotary) are read in blocks: a first sweep computes each row's log-sum-exp with a
  running maximum, a second sums ``exp(logit - lse)`` over each span
  (:mod:`focuslens.scores.spanmass`). No pattern is read or kept; the extra memory is
  ``n_heads x n_rows x block`` values.
* ``"pattern"``: each chunk's ``hook_pattern`` rows of the scored positions are summed
  over the spans. Needed when an intervention acts on ``hook_attn_scores`` or
  ``hook_pattern`` (split-softmax, PASTA), which the ``"keys"`` route cannot see.
* ``"auto"`` (default): ``"keys"``, except on the layers with a hook on their attention
  scores or pattern, or with a local attention window (those read ``"pattern"``;
  ``meta["scores_from"]`` says ``"mixed"``), or on every layer when the model's attention
  has a feature the ``"keys"`` route does not reproduce (ALiBi, soft-capping, attention
  sinks, ...).

The chunks run under :func:`focuslens.model.fused.fused_attention`: layers read from their
keys never build a pattern. Both routes give the numbers of the one-pass
:func:`focuslens.contextual_scores` (1e-5).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from focuslens.model.fused import fused_attention
from focuslens.model.hooks import hooks
from focuslens.model.kvcache import kv_cache_kind
from focuslens.model.memory import check_chunk_size, parse_memory, resolve_chunk_size
from focuslens.model.prefill import ScoresFrom, check_chunkable, new_cache, run_chunks
from focuslens.prompts.batch import query_rows
from focuslens.prompts.spans import LabeledPrompt
from focuslens.prompts.tokens import TokenizedPrompt
from focuslens.scores.reduce import (
    FIRST_DISTRACTOR,
    named_masks,
    prepare,
    reduce_masses,
    span_names,
)
from focuslens.scores.result import ContextualScores
from focuslens.scores.spanmass import (
    collected,
    collectors,
    resolve_routes,
    route_name,
    span_labels,
)
from focuslens.typing import Model, QueryRows


# ------------------------------------------------------------------------ scores
def _prompt_masses(
    model: Model,
    tp: TokenizedPrompt,
    rows: list[int],
    sink: int,
    size: int,
    routes: list[str],
    names: list[str],
) -> Tensor:
    """``[n_layers, n_heads, 3 + n_distractors + len(names)]`` span masses, averaged over
    rows (the named spans last)."""
    cache = new_cache(model)
    parts = collectors(
        routes,
        model=model,
        rows=torch.tensor(rows, dtype=torch.long),
        labels=span_labels(tp, sink),
        n_masks=FIRST_DISTRACTOR + len(tp.distractors),
        cache=cache,
        n_total=len(tp),
        extra=named_masks(tp, names, len(tp)) if names else None,
    )

    def on_chunk(start: int, end: int) -> None:
        for part in parts:
            part.set_chunk(start, end)

    fwd_hooks = [hook for part in parts for hook in part.fwd_hooks()]
    with fused_attention(model), hooks(model, fwd_hooks):
        run_chunks(model, tp.tokens, size, cache, on_chunk=on_chunk)
    return collected(model, parts) / len(rows)


def chunked_contextual_scores(
    model: Model,
    prompts: Iterable[LabeledPrompt],
    *,
    chunk_size: int | None = None,
    max_memory: int | float | str | None = None,
    scores_from: ScoresFrom = "auto",
    query: QueryRows = "response",
    sink: int = 2,
    prepend_bos: bool | None = None,
    require_relevant: bool = True,
    progress: bool = False,
) -> ContextualScores:
    """:func:`focuslens.contextual_scores` through chunked prefill, for long prompts.

    ``contextual_scores(..., chunk_size=...)`` or ``max_memory=...`` calls this. Prompts
    run one at a time (no padding), each in chunks through the KV cache; the numbers are
    those of the one-pass computation.

    Args:
        model: A ``HookedTransformer``, or a ``TransformerBridge`` (through its Hugging
            Face cache, always from each chunk's pattern rows).
        prompts: Labelled prompts (see :func:`focuslens.contextual_scores`).
        chunk_size: Tokens per chunk (default :data:`~focuslens.model.memory.DEFAULT_CHUNK_SIZE`).
        max_memory: Instead of ``chunk_size``: a budget (bytes or ``"8GiB"``); the chunk
            size is picked per prompt with :func:`~focuslens.model.memory.chunk_size_for`.
        scores_from: ``"auto"``, ``"keys"`` or ``"pattern"`` (module docstring).
        query: As in :func:`focuslens.contextual_scores`.
        sink: As in :func:`focuslens.contextual_scores`.
        prepend_bos: As in :func:`focuslens.contextual_scores`.
        require_relevant: As in :func:`focuslens.contextual_scores`.
        progress: As in :func:`focuslens.contextual_scores`.

    Returns:
        :class:`focuslens.ContextualScores`; ``meta`` records the chunk sizes and route.

    Example:
        >>> import focuslens
        >>> model = focuslens.load_demo_model()
        >>> prompts = focuslens.tasks.synthetic_retrieval(2, n_documents=8, seed=0)
        >>> a = focuslens.contextual_scores(model, prompts)
        >>> b = focuslens.contextual_scores(model, prompts, chunk_size=16)
        >>> bool((a.relevant - b.relevant).abs().max() < 1e-5)
        True
    """
    if chunk_size is not None:
        check_chunk_size(chunk_size)
    if max_memory is not None:
        parse_memory(max_memory)
    check_chunkable(model)
    if kv_cache_kind(model) == "transformer_lens":
        routes = resolve_routes(model, scores_from)
    elif scores_from == "keys":  # the keys route reads TransformerLens's cache entries
        raise ValueError(
            f"scores_from='keys' reads TransformerLens's KV cache, and a {type(model).__name__} "
            "keeps a Hugging Face one; use scores_from='pattern' or 'auto'"
        )
    else:  # a bridge: each chunk's pattern rows, read through its Hugging Face cache
        routes = resolve_routes(model, "pattern")
    tps = prepare(
        model,
        prompts,
        query=query,
        sink=sink,
        prepend_bos=prepend_bos,
        require_relevant=require_relevant,
    )
    n_masks = FIRST_DISTRACTOR + max(len(tp.distractors) for tp in tps)
    names = span_names(tps)
    items: Any = enumerate(tps)
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, total=len(tps), desc="contextual scores (chunked)", unit="prompt")
    raw, sizes = [], []
    for idx, tp in items:
        try:
            size = resolve_chunk_size(model, len(tp), chunk_size, max_memory)
        except ValueError as exc:
            raise ValueError(f"prompt {idx}: {exc}") from None
        masses = _prompt_masses(model, tp, query_rows(tp, query), sink, size, routes, names)
        own = FIRST_DISTRACTOR + len(tp.distractors)
        partition = torch.nn.functional.pad(masses[..., :own], (0, n_masks - own))
        raw.append(torch.cat([partition, masses[..., own:]], dim=-1))
        sizes.append(size)
    per_example = reduce_masses(torch.stack(raw), tps, names)
    meta = {
        "model": getattr(model.cfg, "model_name", None),
        "n_examples": len(tps),
        "chunk_sizes": sizes,
        "scores_from": route_name(routes),
    }
    return ContextualScores.from_per_example(
        per_example, query=query, n_sink=sink, meta=meta, span_names=tuple(names)
    )


__all__ = [
    "chunked_contextual_scores",
]
