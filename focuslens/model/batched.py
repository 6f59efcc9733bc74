"""Greedy generation of several prompts at once, with the same answers as one at a time.

Why: answering hundreds of prompts one at a time spends most of its time in tiny
forward passes (one new token each); a batch shares them.

How, and why the answers do not change: the prompts are padded on the right and run
in one forward pass into a shared ``TransformerLensKeyValueCache``, with an attention
mask that hides the padding; each prompt's first new token comes from its own last
position. Each later step feeds one token per prompt, and the cache appends it after
the padding. TransformerLens derives positions from the attention mask (its cumulative
sum), so every real token keeps the position it has alone, and the padding is never
attended. A prompt keeps its token positions in the cache too (padding only follows
it), so interventions that read the labelled spans of the batch's prompts, or which
positions are the prompt's (``n_prompt``), act as in an unpadded pass. A prompt that has
stopped is fed masked tokens until the batch ends. Logits agree with one-at-a-time
generation to float rounding, so the greedy tokens are the same unless two logits tie
to within that rounding.

Models other than ``HookedTransformer`` generate one prompt at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from focuslens.model.fused import fused_attention
from focuslens.model.generation import (
    Generation,
    _prompt_tokens,
    _Stop,
    _stop_id_set,
    _stop_string_tuple,
    generate_greedy,
)
from focuslens.typing import Model


def _right_padded(prompts: list[Tensor], device: Any) -> tuple[Tensor, Tensor]:
    """``[batch, max_len]`` tokens (padding: each prompt's first token) and the 0/1 mask."""
    length = max(p.numel() for p in prompts)
    tokens = torch.stack([torch.cat([p, p[:1].expand(length - p.numel())]) for p in prompts])
    mask = torch.zeros_like(tokens)
    for b, p in enumerate(prompts):
        mask[b, : p.numel()] = 1
    return tokens.to(device), mask.to(device)


def generate_greedy_batch(
    model: Model,
    prompts: Sequence[Tensor | Sequence[int]],
    *,
    max_new_tokens: int = 100,
    stop_ids: int | Iterable[int] | None = None,
    stop_strings: str | Sequence[str] | None = None,
    fused: bool = True,
) -> list[Generation]:
    """Greedy decoding of several prompts in one batch (module docstring).

    Args:
        model: A ``HookedTransformer`` (anything else: one prompt at a time).
        prompts: One ``[pos]`` token tensor (or list) per prompt, BOS included if wanted.
        max_new_tokens: Most new tokens of each answer.
        stop_ids: Token ids that end an answer; default the tokenizer's EOS.
        stop_strings: Strings that end an answer (as in
            :func:`~focuslens.model.generation.generate_greedy`).
        fused: Run the attention fused (:func:`focuslens.model.fused.fused_attention`).

    Returns:
        One :class:`~focuslens.model.generation.Generation` per prompt, equal to
        :func:`~focuslens.model.generation.generate_greedy` of that prompt alone.

    Example:
        >>> import focuslens
        >>> model = focuslens.load_demo_model()
        >>> ps = focuslens.tasks.synthetic_retrieval(3, n_documents=4, seed=0)
        >>> tps = [focuslens.tokenize_prompt(model, p) for p in ps]
        >>> tokens = [tp.tokens[: tp.n_prompt] for tp in tps]
        >>> batch = generate_greedy_batch(model, tokens, max_new_tokens=3)
        >>> [g.text for g in batch] == [
        ...     generate_greedy(model, t, max_new_tokens=3).text for t in tokens
        ... ]
        True
    """
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("the model has no tokenizer; call model.set_tokenizer(...) first")
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 1
    ):
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    seqs = [_prompt_tokens(p) for p in prompts]
    if len(seqs) <= 1 or not generates_batched(model):
        return [
            generate_greedy(
                model,
                s,
                max_new_tokens=max_new_tokens,
                stop_ids=stop_ids,
                stop_strings=stop_strings,
                fused=fused,
            )
            for s in seqs
        ]
    n_ctx = model.cfg.n_ctx
    for i, s in enumerate(seqs):
        if s.numel() > n_ctx:
            raise ValueError(
                f"prompt {i} has {s.numel()} tokens, more than the model's n_ctx={n_ctx}"
            )
    ids = _stop_id_set(tokenizer, stop_ids)
    strings = _stop_string_tuple(stop_strings)
    stops = [_Stop(tokenizer, ids, strings, max_new_tokens, int(s.numel()), n_ctx) for s in seqs]
    with torch.no_grad(), fused_attention(model) if fused else contextlib.nullcontext():
        return _decode(model, seqs, stops)


def _decode(model: Model, seqs: list[Tensor], stops: list[_Stop]) -> list[Generation]:
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    device = next(model.parameters()).device
    tokens, mask = _right_padded(seqs, device)
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, len(seqs))
    logits = model(tokens, past_kv_cache=cache, attention_mask=mask)
    last = torch.tensor([s.numel() - 1 for s in seqs], device=logits.device)
    logits = logits[torch.arange(len(seqs), device=logits.device), last]
    new: list[list[int]] = [[] for _ in seqs]
    running = [True] * len(seqs)
    while True:
        chosen = logits.argmax(-1).tolist()
        for b, token in enumerate(chosen):
            if running[b]:
                new[b].append(int(token))
                running[b] = not stops[b].check(new[b])
        if not any(running):
            break
        step = torch.tensor([[t] for t in chosen], device=device)
        step_mask = torch.tensor([[int(r)] for r in running], device=device)
        logits = model(step, past_kv_cache=cache, attention_mask=step_mask)[:, -1]
    return [stop.generation(tokens) for stop, tokens in zip(stops, new)]


def generates_batched(model: Model) -> bool:
    """Whether :func:`generate_greedy_batch` answers several prompts of ``model`` in one
    batch (TransformerLens's KV cache: a ``HookedTransformer``), rather than one at a
    time (a ``TransformerBridge``)."""
    from focuslens.model.kvcache import kv_cache_kind

    return kv_cache_kind(model) == "transformer_lens"


__all__ = [
    "generate_greedy_batch",
    "generates_batched",
]
