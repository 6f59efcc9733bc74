"""Long contexts: chunked prefill through the KV cache.

Why: a ``HookedTransformer`` forward builds every layer's full ``[n_heads, n, n]``
attention pattern. For a GPT-2-small-shaped model at 32,768 tokens that is 48 GiB per
layer in float32; the authors' code asks Hugging Face for all of them at once
(``output_attentions=True``). Contextual scores only need the rows of the response.

Chunked prefill (:func:`chunked_forward`): the tokens go through the model in chunks of
``chunk_size`` positions, each chunk reading the keys and values of the previous ones
from the KV cache (TransformerLens's on a ``HookedTransformer``, Hugging Face's on a
``TransformerBridge``: :mod:`focuslens.model.kvcache`). A layer then holds
at most ``n_heads x chunk_size x n`` attention scores, and the memory grows linearly
with the length ``n``: the KV cache is ``2 x n_layers x n x n_kv_heads x d_head`` values.
Logits, steering and interventions are the same as in one pass (to float rounding).
The chunks run under :func:`focuslens.model.fused.fused_attention` by default, so a layer
holds no ``chunk_size x n`` pattern either, unless a hook reads or edits it.

Contextual scores of long prompts run on it (:mod:`focuslens.scores.chunked`, with or
without patterns), and so do chunked logits and generation. Which chunk size, and how much
memory it takes: :mod:`focuslens.model.memory`.

Dynamic-NTK rotary models change their rotary frequencies with the cache length, so
their chunked outputs differ from one pass; they are refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from focuslens.model.fused import fused_attention
from focuslens.model.kvcache import (
    CacheKind,
    cache_length,
    cached_forward,
    kv_cache_kind,
    new_cache,
)
from focuslens.model.memory import chunk_bounds, resolve_chunk_size
from focuslens.typing import Model

ScoresFrom = Literal["auto", "keys", "pattern"]


def check_chunkable(model: Model, *, cache: CacheKind | None = None) -> None:
    """Refuse, with the reason, a model that chunked prefill cannot run exactly.

    Args:
        model: The model.
        cache: The cache kind the caller needs (``"transformer_lens"`` for code that reads
            TransformerLens's cache entries); default either.
    """
    kind = kv_cache_kind(model)
    if kind is None or (cache is not None and kind != cache):
        needed = "TransformerLens's KV cache (a HookedTransformer)" if cache else "a KV cache"
        raise ValueError(
            f"chunked prefill here needs {needed}, and a {type(model).__name__} "
            f"{'has none' if kind is None else f'has the {kind} one'}; use chunk_size=None "
            "for a one-pass computation"
        )
    if getattr(model.cfg, "use_dynamic_ntk_rope", False):
        raise ValueError(
            "this model uses dynamic-NTK rotary embeddings, whose frequencies change with the "
            "cache length, so chunked prefill would change its outputs; use chunk_size=None"
        )


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


def run_chunks(
    model: Model,
    tokens: Tensor,
    chunk_size: int,
    cache: Any,
    on_chunk: Callable[[int, int], None] | None = None,
    logits_rows: Sequence[int] = (),
) -> Tensor | None:
    """Feed ``tokens`` chunk by chunk; return the logits of ``logits_rows`` (absolute)."""
    device = next(model.parameters()).device
    offset = cache_length(cache)
    wanted = sorted(set(logits_rows))
    out = []
    with torch.no_grad():
        for start, end in chunk_bounds(len(tokens), chunk_size):
            if on_chunk is not None:
                on_chunk(offset + start, offset + end)
            piece = tokens[start:end].to(device)[None]
            rows = [r - start for r in wanted if start <= r < end]
            logits = cached_forward(model, piece, cache, logits=bool(rows))
            if rows:
                assert logits is not None
                out.append(logits[0, rows])
    return torch.cat(out) if out else None


def chunked_forward(
    model: Model,
    tokens: Int[Tensor, "*batch pos"],
    *,
    chunk_size: int | None = None,
    max_memory: int | float | str | None = None,
    logits_at: Literal["last", "all"] | Sequence[int] = "last",
    past_kv_cache: Any | None = None,
    fused: bool = True,
) -> Float[Tensor, "n_rows d_vocab"]:
    """Run one sequence through the model in chunks, through the KV cache.

    Hooks registered on the model (steering, interventions) fire in every chunk, with
    the chunk's queries and all keys so far; those written with
    :mod:`focuslens.model.hooks` see the same absolute positions as in one pass.

    Args:
        model: A ``HookedTransformer`` or a ``TransformerBridge``.
        tokens: ``[pos]`` (or ``[1, pos]``) token ids, BOS included if wanted.
        chunk_size: Tokens per chunk (default :data:`DEFAULT_CHUNK_SIZE`).
        max_memory: Instead of ``chunk_size``, a budget (bytes or ``"8GiB"``) from which
            the chunk size is picked (:func:`chunk_size_for`).
        logits_at: Positions (relative to ``tokens``) whose logits to return: ``"last"``
            (default), ``"all"`` (``n x d_vocab`` values: mind the memory) or a list.
        past_kv_cache: A cache from :func:`focuslens.model.kvcache.new_cache` to continue
            and fill (for generation after the prefill); default a new one.
        fused: Run the attention fused (:func:`focuslens.model.fused.fused_attention`), so a
            chunk holds no ``chunk_size x n`` pattern except on layers whose scores or
            pattern are hooked; False runs TransformerLens's own attention.

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
    check_chunkable(model)
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
    with fused_attention(model) if fused else contextlib.nullcontext():
        logits = run_chunks(model, tokens, size, cache, logits_rows=rows)
    assert logits is not None
    return logits


__all__ = [
    "check_chunkable",
    "chunked_forward",
    "new_cache",
]
