"""Memory of long contexts: estimates, budgets and chunk sizes.

A full attention cache is ``n_layers x n_heads x n^2`` values per sequence; chunked prefill
(:mod:`focuslens.model.prefill`) keeps at most ``n_heads x chunk_size x n`` scores per layer
plus the KV cache. :func:`estimate_memory` gives the peak of one chunked pass beyond the
weights, and :func:`chunk_size_for` the largest chunk that fits a budget (``max_memory=``).

Which chunk size? Smaller chunks use less memory but re-rotate every cached key once
per chunk and run more, smaller matrix products; 512 to 2048 is a good range on a CPU.
A chunk at least as long as the prompt is the one-pass case: one forward pass.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from focuslens.model.hooks import n_kv_heads
from focuslens.typing import HasConfig

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


def _itemsize(model: HasConfig) -> int:
    return torch.empty((), dtype=model.cfg.dtype).element_size()


def attention_cache_bytes(model: HasConfig, n_tokens: int) -> int:
    """Bytes of every layer's full attention pattern for one sequence of ``n_tokens``
    (what ``run_with_cache`` or ``output_attentions=True`` would keep)."""
    cfg = model.cfg
    return cfg.n_layers * cfg.n_heads * n_tokens * n_tokens * _itemsize(model)


def kv_cache_bytes(model: HasConfig, n_tokens: int) -> int:
    """Bytes of the KV cache (keys and values of every layer) for ``n_tokens``."""
    cfg = model.cfg
    return 2 * cfg.n_layers * n_tokens * n_kv_heads(model) * cfg.d_head * _itemsize(model)


def estimate_memory(model: HasConfig, n_tokens: int, chunk_size: int) -> int:
    """Estimated peak bytes, beyond the weights, of a chunked pass over ``n_tokens``.

    The KV cache, plus what one layer holds while it runs the last (longest) chunk:
    about four ``[n_heads, chunk, n]`` score tensors (scores, masked scores, pattern and
    its NaN-cleaned copy), the re-rotated and concatenated keys, and the chunk's
    residual-stream and MLP activations; on rotary models also the sine and cosine
    tables TransformerLens extends (doubling, up to ``n_ctx``) when a sequence outgrows
    them. ``benchmarks/bench_long_context.py`` checks it against measured peaks. Under
    fused attention (the default) no chunk holds its scores, so this is an upper bound.
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


def chunk_size_for(model: HasConfig, n_tokens: int, max_memory: int | float | str) -> int:
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
    model: HasConfig, n_tokens: int, chunk_size: int | None, max_memory: int | float | str | None
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


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "attention_cache_bytes",
    "chunk_size_for",
    "estimate_memory",
    "kv_cache_bytes",
    "parse_memory",
]
