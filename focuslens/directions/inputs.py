"""What learning reads: labelled prompts with responses, and the cached attention inputs.

Directions are learned one layer at a time from that layer's queries and keys (after the
rotary embedding) on prompt + response, cached through hooks from the unmodified model
once (:func:`cache_queries_keys`), on either backend; the row tables say which query rows and key positions the
loss reads (:func:`batch_rows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor

from focuslens.model.hooks import hooks, key_hook_name, query_hook_name
from focuslens.model.responses import with_responses
from focuslens.prompts.batch import PromptBatch
from focuslens.prompts.spans import LabeledPrompt
from focuslens.prompts.tokens import TokenizedPrompt
from focuslens.typing import Model, QueryRows

LEARNING_RESPONSES = ("gold_only", "given")
"""Where the learning responses come from (see :mod:`focuslens.model.responses`)."""


# ---------------------------------------------------------------------------- data
def learning_prompts(
    model: Model, prompts: Sequence[LabeledPrompt], response: str, max_new_tokens: int | None
) -> tuple[list[LabeledPrompt], list[int]]:
    """Labelled prompts with their teacher-forced responses (``gold_only`` or ``given``)."""
    if response not in LEARNING_RESPONSES:
        raise ValueError(f"response must be one of {LEARNING_RESPONSES}, got {response!r}")
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, LabeledPrompt) and prompt.relevant is None:
            raise ValueError(
                f"prompt {i} has no relevant document (relevant=None); focus directions are "
                "learned from prompts whose relevant span is labelled"
            )
    return with_responses(model, prompts, response, max_new_tokens=max_new_tokens)


def batch_rows(
    batch: Sequence[TokenizedPrompt], query: QueryRows, length: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``rows [b, r]``, ``row_mask [b, r]`` and relevant key masks ``[b, 1, length]``."""
    prompts = PromptBatch.of(batch)
    rows, row_mask = prompts.rows(query)
    return rows, row_mask.float(), prompts.relevant_mask(length)[:, None, :].float()


def pad_inputs(seqs: list[Tensor], value: float | int = 0.0) -> Tensor:
    """Right-pad ``[pos, ...]`` tensors to one ``[batch, pos, ...]`` tensor."""
    return torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=value)


# ---------------------------------------------------------------------------- caching
def require_reproducible_attention(
    model: Model, what: str, layers: Sequence[int] | None = None
) -> None:
    """Refuse a model whose attention the cached queries and keys do not reproduce.

    Learning recomputes ``softmax((q + d_q)(k + d_k)^T / attn_scale + causal mask)``
    from each layer's rotated queries and keys (:func:`cache_queries_keys`); attention
    features outside that formula (ALiBi, soft-capping, sinks, local windows, ...) would
    make it learn for a different attention than the model's. ``layers``: the layers
    learned (default all); a local window in another layer does not matter.
    """
    from focuslens.scores.spanmass import keys_route_unsupported

    why = keys_route_unsupported(model, layers)
    if why:
        where = "" if layers is None else f" in layers {sorted(layers)}"
        raise ValueError(
            f"{what} recomputes each layer's attention from its queries and keys, which "
            f"does not reproduce this model's attention{where} ({why})"
        )


def cache_queries_keys(
    model: Model, tps: Sequence[TokenizedPrompt], layers: Sequence[int]
) -> dict[int, list[tuple[Tensor, Tensor]]]:
    """Per layer and example, the queries ``[pos, n_heads, d_head]`` and keys
    ``[pos, n_kv_heads, d_head]`` of that layer's attention, where steering adds the
    directions (after the rotary embedding: ``hook_rot_q`` / ``hook_rot_k``; ``hook_q``
    / ``hook_k`` without one).

    One unbatched pass per example of the unmodified model through hooks, stopped after
    the last requested layer (detached). Any backend whose hooks fire will do.
    """
    out: dict[int, list[tuple[Tensor, Tensor]]] = {layer: [] for layer in layers}
    device = next(model.parameters()).device
    current: dict[tuple[int, str], Tensor] = {}

    def keep(x: Tensor, hook: Any, layer: int, kind: str) -> None:
        current[(layer, kind)] = x[0].detach()

    fwd = []
    for layer in layers:
        fwd.append((query_hook_name(model, layer), partial(keep, layer=layer, kind="q")))
        fwd.append((key_hook_name(model, layer), partial(keep, layer=layer, kind="k")))
    with hooks(model, fwd), torch.no_grad():
        for tp in tps:
            current.clear()
            model(tp.tokens[None].to(device), stop_at_layer=max(layers) + 1)
            for layer in layers:
                out[layer].append((current[(layer, "q")], current[(layer, "k")]))
    return out


__all__ = [
    "LEARNING_RESPONSES",
    "cache_queries_keys",
    "require_reproducible_attention",
]
