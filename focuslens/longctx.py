"""Long contexts: chunked prefill through the KV cache, and scores without patterns.

Why: a ``HookedTransformer`` forward builds every layer's full ``[n_heads, n, n]``
attention pattern. For a GPT-2-small-shaped model at 32,768 tokens that is 48 GiB per
layer in float32; the authors' code asks Hugging Face for all of them at once
(``output_attentions=True``). Contextual scores only need the rows of the response.

Chunked prefill (:func:`chunked_forward`): the tokens go through the model in chunks of
``chunk_size`` positions, each chunk reading the keys and values of the previous ones
from TransformerLens's KV cache (``TransformerLensKeyValueCache``). A layer then holds
at most ``n_heads x chunk_size x n`` attention scores, and the memory grows linearly
with the length ``n``: the KV cache is ``2 x n_layers x n x n_kv_heads x d_head`` values.
Logits, steering and interventions are the same as in one pass (to float rounding).

Where the scores come from (``scores_from=``):

* ``"keys"``: without patterns. The rotated queries of the scored rows are kept as
  their chunk passes (``hook_rot_q``, or ``hook_q`` without rotary), and in the last
  chunk each layer's keys (``hook_rot_k``; the cached keys plus ``hook_k`` without
  rotary) are read in blocks: a first sweep computes each row's log-sum-exp with a
  running maximum, a second sums ``exp(logit - lse)`` over each span
  (:mod:`focuslens.spanmass`). No pattern is read or kept; the extra memory is
  ``n_heads x n_rows x block`` values.
* ``"pattern"``: each chunk's ``hook_pattern`` rows of the scored positions are summed
  over the spans. Needed when an intervention acts on ``hook_attn_scores`` or
  ``hook_pattern`` (split-softmax, PASTA), which the ``"keys"`` route cannot see.
* ``"auto"`` (default): ``"keys"``, unless a hook is registered on an attention-score
  or pattern hook point, or the model's attention has a feature the ``"keys"`` route
  does not reproduce (ALiBi, soft-capping, local windows, attention sinks, ...).

Both give the numbers of the one-pass :func:`focuslens.contextual_scores` (1e-5).

Which chunk size? Smaller chunks use less memory but re-rotate every cached key once
per chunk and run more, smaller matrix products; 512 to 2048 is a good range on a CPU.
``max_memory`` picks the largest chunk whose estimated peak (:func:`estimate_memory`,
activations beyond the weights) fits a budget. A chunk at least as long as the prompt
is the one-pass case: one forward pass.

Dynamic-NTK rotary models change their rotary frequencies with the cache length, so
their chunked outputs differ from one pass; they are refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from focuslens.hooking import hooks, n_kv_heads
from focuslens.scores import (
    _FIRST_DISTRACTOR,
    ContextualScores,
    QueryRows,
    _reduce,
    prepare,
    query_rows,
)
from focuslens.spanmass import COLLECTORS, resolve_scores_from, span_labels
from focuslens.spans import LabeledPrompt, TokenizedPrompt

ScoresFrom = Literal["auto", "keys", "pattern"]
DEFAULT_CHUNK_SIZE = 1024
"""Chunk size used when neither ``chunk_size`` nor ``max_memory`` is given."""

_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


# ----------------------------------------------------------------------------- memory
def parse_memory(value: int | float | str) -> int:
    """Bytes from an int or a string such as ``"8GiB"``, ``"512 MiB"``, ``"2GB"``.

    Example:
        >>> parse_memory("1.5 GiB"), parse_memory(4096)
        (1610612736, 4096)
    """
    if isinstance(value, bool):
        raise ValueError(f"max_memory must be bytes (int) or a string like '8GiB', got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"cannot read max_memory {value!r}; write bytes or a number with a unit "
                f"({', '.join(u for u in _UNITS if u)}), e.g. '8GiB'"
            )
        number = float(match.group(1)) * _UNITS[unit]
    else:
        raise ValueError(f"max_memory must be bytes (int) or a string like '8GiB', got {value!r}")
    if not number > 0:
        raise ValueError(f"max_memory must be positive, got {value!r}")
    return int(number)


def _itemsize(model: Any) -> int:
    return torch.empty((), dtype=model.cfg.dtype).element_size()


def attention_cache_bytes(model: Any, n_tokens: int) -> int:
    """Bytes of every layer's full attention pattern for one sequence of ``n_tokens``
    (what ``run_with_cache`` or ``output_attentions=True`` would keep)."""
    cfg = model.cfg
    return cfg.n_layers * cfg.n_heads * n_tokens * n_tokens * _itemsize(model)


def kv_cache_bytes(model: Any, n_tokens: int) -> int:
    """Bytes of the KV cache (keys and values of every layer) for ``n_tokens``."""
    cfg = model.cfg
    return 2 * cfg.n_layers * n_tokens * n_kv_heads(model) * cfg.d_head * _itemsize(model)


def estimate_memory(model: Any, n_tokens: int, chunk_size: int) -> int:
    """Estimated peak bytes, beyond the weights, of a chunked pass over ``n_tokens``.

    The KV cache, plus what one layer holds while it runs the last (longest) chunk:
    about four ``[n_heads, chunk, n]`` score tensors (scores, masked scores, pattern and
    its NaN-cleaned copy), the re-rotated and concatenated keys, and the chunk's
    residual-stream and MLP activations; on rotary models also the sine and cosine
    tables TransformerLens extends (doubling, up to ``n_ctx``) when a sequence outgrows
    them. ``benchmarks/bench_long_context.py`` checks it against measured peaks.
    """
    cfg = model.cfg
    item = _itemsize(model)
    c = min(check_chunk_size(chunk_size), n_tokens)
    n_kv = n_kv_heads(model)
    d_mlp = cfg.d_mlp or 4 * cfg.d_model
    scores = 4.5 * cfg.n_heads * c * n_tokens * item
    keys = (6 * n_kv + (cfg.n_heads if n_kv != cfg.n_heads else 0)) * n_tokens * cfg.d_head
    activations = c * (16 * cfg.d_model + 3 * d_mlp + cfg.d_vocab)
    tables = 0
    if cfg.positional_embedding_type == "rotary":
        tables = 2 * cfg.n_layers * min(cfg.n_ctx, 2 * n_tokens) * (cfg.rotary_dim or cfg.d_head)
    return int(kv_cache_bytes(model, n_tokens) + scores + (keys + activations + tables) * item)


def chunk_size_for(model: Any, n_tokens: int, max_memory: int | float | str) -> int:
    """The largest chunk size whose :func:`estimate_memory` fits ``max_memory``.

    Raises:
        ValueError: When even one-token chunks do not fit (the KV cache alone is too big).
    """
    budget = parse_memory(max_memory)
    fixed = estimate_memory(model, n_tokens, 1)
    if fixed > budget:
        raise ValueError(
            f"max_memory={budget / 2**30:.3g} GiB is too small for {n_tokens} tokens: the KV "
            f"cache alone needs {kv_cache_bytes(model, n_tokens) / 2**30:.3g} GiB and one-token "
            f"chunks {fixed / 2**30:.3g} GiB"
        )
    per_row = max(estimate_memory(model, n_tokens, 2) - fixed, 1)
    return int(max(1, min(n_tokens, 1 + (budget - fixed) // per_row)))


def check_chunk_size(chunk_size: Any) -> int:
    """``chunk_size`` as a positive int, or a ValueError naming the bad value."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(
            f"chunk_size must be a positive int (tokens per chunk), got {chunk_size!r}"
        )
    return chunk_size


def resolve_chunk_size(
    model: Any, n_tokens: int, chunk_size: int | None, max_memory: int | float | str | None
) -> int:
    """The chunk size to use: ``chunk_size``, or one picked from ``max_memory``, or
    :data:`DEFAULT_CHUNK_SIZE`. Giving both is refused."""
    if chunk_size is not None and max_memory is not None:
        raise ValueError(
            f"give chunk_size or max_memory, not both (got chunk_size={chunk_size!r}, "
            f"max_memory={max_memory!r})"
        )
    if max_memory is not None:
        return chunk_size_for(model, n_tokens, max_memory)
    return check_chunk_size(DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size)


def chunk_bounds(n_tokens: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` half-open chunks covering ``range(n_tokens)``.

    Example:
        >>> chunk_bounds(10, 4)
        [(0, 4), (4, 8), (8, 10)]
    """
    check_chunk_size(chunk_size)
    return [(s, min(s + chunk_size, n_tokens)) for s in range(0, n_tokens, chunk_size)]


# ---------------------------------------------------------------------- chunked forward
def _check_model(model: Any) -> None:
    from transformer_lens import HookedTransformer

    if not isinstance(model, HookedTransformer):
        raise ValueError(
            f"chunked prefill needs a HookedTransformer (TransformerLens's KV cache), got "
            f"{type(model).__name__}; use chunk_size=None for a one-pass computation"
        )
    if getattr(model.cfg, "use_dynamic_ntk_rope", False):
        raise ValueError(
            "this model uses dynamic-NTK rotary embeddings, whose frequencies change with the "
            "cache length, so chunked prefill would change its outputs; use chunk_size=None"
        )


def new_cache(model: Any) -> Any:
    """An empty ``TransformerLensKeyValueCache`` for one sequence."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    return TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)


def _tokens_1d(tokens: Any) -> Tensor:
    t = torch.as_tensor(tokens, dtype=torch.long)
    if t.dim() == 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(
            f"chunked prefill takes one sequence as [pos] or [1, pos] tokens, got shape "
            f"{tuple(t.shape)}"
        )
    return t


def _run_chunks(
    model: Any,
    tokens: Tensor,
    chunk_size: int,
    cache: Any,
    on_chunk: Callable[[int, int], None] | None = None,
    logits_rows: Sequence[int] = (),
) -> Tensor | None:
    """Feed ``tokens`` chunk by chunk; return the logits of ``logits_rows`` (absolute)."""
    device = next(model.parameters()).device
    offset = int(cache[0].past_keys.shape[1])
    wanted = sorted(set(logits_rows))
    out = []
    with torch.no_grad():
        for start, end in chunk_bounds(len(tokens), chunk_size):
            if on_chunk is not None:
                on_chunk(offset + start, offset + end)
            piece = tokens[start:end].to(device)[None]
            rows = [r - start for r in wanted if start <= r < end]
            # An explicit all-ones mask: without it TransformerLens masks tokens equal to
            # the pad token when a cache is used.
            logits = model(
                piece,
                past_kv_cache=cache,
                attention_mask=torch.ones_like(piece),
                return_type="logits" if rows else None,
            )
            if rows:
                out.append(logits[0, rows])
    return torch.cat(out) if out else None


def chunked_forward(
    model: Any,
    tokens: Int[Tensor, "*batch pos"],
    *,
    chunk_size: int | None = None,
    max_memory: int | float | str | None = None,
    logits_at: Literal["last", "all"] | Sequence[int] = "last",
    past_kv_cache: Any | None = None,
) -> Float[Tensor, "n_rows d_vocab"]:
    """Run one sequence through the model in chunks, through the KV cache.

    Hooks registered on the model (steering, interventions) fire in every chunk, with
    the chunk's queries and all keys so far; those written with
    :mod:`focuslens.hooking` see the same absolute positions as in one pass.

    Args:
        model: A ``HookedTransformer``.
        tokens: ``[pos]`` (or ``[1, pos]``) token ids, BOS included if wanted.
        chunk_size: Tokens per chunk (default :data:`DEFAULT_CHUNK_SIZE`).
        max_memory: Instead of ``chunk_size``, a budget (bytes or ``"8GiB"``) from which
            the chunk size is picked (:func:`chunk_size_for`).
        logits_at: Positions (relative to ``tokens``) whose logits to return: ``"last"``
            (default), ``"all"`` (``n x d_vocab`` values: mind the memory) or a list.
        past_kv_cache: A ``TransformerLensKeyValueCache`` to continue and fill (for
            generation after the prefill); default a new one.

    Returns:
        ``[n_rows, d_vocab]`` logits, rows in increasing position order.

    Example:
        >>> import focuslens
        >>> model = focuslens.load_demo_model()
        >>> tokens = model.to_tokens("[DOC k1 k2 v3 v4 ] [Q k1 k2")[0]
        >>> one = model(tokens[None])[0, -1]
        >>> torch.allclose(chunked_forward(model, tokens, chunk_size=3)[0], one, atol=1e-4)
        True
    """
    _check_model(model)
    tokens = _tokens_1d(tokens)
    n = len(tokens)
    size = resolve_chunk_size(model, n, chunk_size, max_memory)
    if isinstance(logits_at, str):
        if logits_at not in ("last", "all"):
            raise ValueError(f"logits_at must be 'last', 'all' or positions, got {logits_at!r}")
        rows = [n - 1] if logits_at == "last" else list(range(n))
    else:
        rows = [int(r) for r in logits_at]
        bad = [r for r in rows if not 0 <= r < n]
        if bad or not rows:
            raise ValueError(f"logits_at positions {bad or rows} are out of range for {n} tokens")
    cache = new_cache(model) if past_kv_cache is None else past_kv_cache
    logits = _run_chunks(model, tokens, size, cache, logits_rows=rows)
    assert logits is not None
    return logits


# ------------------------------------------------------------------------ scores
def _prompt_masses(
    model: Any, tp: TokenizedPrompt, rows: list[int], sink: int, size: int, route: str
) -> Tensor:
    """``[n_layers, n_heads, 3 + n_distractors]`` span masses, averaged over rows."""
    cache = new_cache(model)
    labels = span_labels(tp, sink)
    collector = COLLECTORS[route](
        model=model,
        rows=torch.tensor(rows, dtype=torch.long),
        labels=labels,
        n_masks=_FIRST_DISTRACTOR + len(tp.distractors),
        cache=cache,
        n_total=len(tp),
    )
    with hooks(model, collector.fwd_hooks()):
        _run_chunks(model, tp.tokens, size, cache, on_chunk=collector.set_chunk)
    return collector.result() / len(rows)


def chunked_contextual_scores(
    model: Any,
    prompts: Sequence[LabeledPrompt],
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
        model: A ``HookedTransformer``.
        prompts: Labelled prompts (see :func:`focuslens.contextual_scores`).
        chunk_size: Tokens per chunk (default :data:`DEFAULT_CHUNK_SIZE`).
        max_memory: Instead of ``chunk_size``: a budget (bytes or ``"8GiB"``); the chunk
            size is picked per prompt with :func:`chunk_size_for`.
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
    _check_model(model)
    route = resolve_scores_from(model, scores_from)
    tps = prepare(
        model,
        prompts,
        query=query,
        sink=sink,
        prepend_bos=prepend_bos,
        require_relevant=require_relevant,
    )
    n_masks = _FIRST_DISTRACTOR + max(len(tp.distractors) for tp in tps)
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
        masses = _prompt_masses(model, tp, query_rows(tp, query), sink, size, route)
        raw.append(torch.nn.functional.pad(masses, (0, n_masks - masses.shape[-1])))
        sizes.append(size)
    per_example = _reduce(torch.stack(raw), tps)
    meta = {
        "model": getattr(model.cfg, "model_name", None),
        "n_examples": len(tps),
        "chunk_sizes": sizes,
        "scores_from": route,
    }
    return ContextualScores.from_per_example(per_example, query=query, n_sink=sink, meta=meta)


# --------------------------------------------------------------- prompts of a length
def synthetic_retrieval_of_length(n: int, *, n_tokens: int, **kwargs: Any) -> list[LabeledPrompt]:
    """Synthetic retrieval prompts padded with distractors to at most ``n_tokens`` tokens.

    The demo task's prompts have exactly ``prompt_length(n_documents)`` tokens (BOS
    included, response excluded), so this picks the most documents that fit and calls
    :func:`focuslens.tasks.synthetic_retrieval`. For natural-language QA prompts use
    :func:`focuslens.tasks.qa_prompt_of_length`, which pads with distractors from a pool.

    Args:
        n: Number of prompts.
        n_tokens: Most prompt tokens (BOS included), as ``meta["n_prompt_tokens"]`` counts.
        **kwargs: Other options of ``synthetic_retrieval`` (``gold_position``, ``seed``...).

    Returns:
        ``n`` prompts; ``meta["target_n_tokens"]`` records ``n_tokens``.

    Example:
        >>> p = synthetic_retrieval_of_length(1, n_tokens=100, seed=0)[0]
        >>> p.meta["n_documents"], p.meta["n_prompt_tokens"]
        (16, 100)
    """
    from focuslens.tasks import synthetic

    if "n_documents" in kwargs:
        raise ValueError("give n_tokens or n_documents, not both (n_documents follows n_tokens)")
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int):
        raise ValueError(f"n_tokens must be an int, got {n_tokens!r}")
    per_doc = synthetic.prompt_length(2) - synthetic.prompt_length(1)
    n_docs = (n_tokens - synthetic.prompt_length(0)) // per_doc
    longest = synthetic.prompt_length(synthetic.MAX_DOCUMENTS)
    if n_docs < 1:
        raise ValueError(
            f"n_tokens={n_tokens} is too short: a prompt with one document has "
            f"{synthetic.prompt_length(1)} tokens"
        )
    if n_docs > synthetic.MAX_DOCUMENTS:
        raise ValueError(
            f"n_tokens={n_tokens} is too long for the synthetic task: its keys allow at most "
            f"{synthetic.MAX_DOCUMENTS} documents ({longest} tokens); use "
            "focuslens.tasks.qa_prompt_of_length for longer prompts"
        )
    prompts = synthetic.synthetic_retrieval(n, n_documents=n_docs, **kwargs)
    return [replace(p, meta={**p.meta, "target_n_tokens": n_tokens}) for p in prompts]


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "attention_cache_bytes",
    "check_chunk_size",
    "chunk_bounds",
    "chunk_size_for",
    "chunked_contextual_scores",
    "chunked_forward",
    "estimate_memory",
    "kv_cache_bytes",
    "new_cache",
    "parse_memory",
    "resolve_chunk_size",
    "synthetic_retrieval_of_length",
]
