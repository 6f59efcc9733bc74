"""What learning reads: labelled prompts with responses, and the cached attention inputs.

Directions are learned one layer at a time from the inputs of that layer's attention
(post-norm hidden states) on prompt + response, cached from the unmodified model once
(:func:`cache_attention_inputs`); the row tables say which query rows and key positions the
loss reads (:func:`batch_rows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from focuslens.model.hooks import (
    pre_hooks,
)
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
def require_hooked_transformer(model: Model, what: str) -> None:
    """Refuse a model that is not a ``HookedTransformer``, saying what to do instead.

    Learning runs one attention layer on its cached inputs (``query_input`` /
    ``key_input`` and the layer's own weights, ``attn_scale`` included), which only
    TransformerLens's ``HookedTransformer`` attention modules expose.
    """
    from transformer_lens import HookedTransformer

    if not isinstance(model, HookedTransformer):
        raise TypeError(
            f"{what} needs a HookedTransformer, got a {type(model).__name__}: it runs each "
            "attention layer on its own from cached inputs, which a TransformerBridge's "
            "attention modules do not support. Load the model with "
            "HookedTransformer.from_pretrained(name, hf_model=...) (or focuslens.load_model "
            "with a TransformerLens model name) to learn directions; the result can then "
            "steer either backend of the same shape."
        )


def cache_attention_inputs(
    model: Model, tps: Sequence[TokenizedPrompt], layers: Sequence[int]
) -> dict[int, list[tuple[Tensor, Tensor]]]:
    """Per layer and example, the (query, key) inputs of that layer's attention.

    One unbatched pass per example of the unmodified model, stopped after the last
    requested layer; the inputs are taken from a forward pre-hook on each attention
    module (``[pos, d_model]``, detached).
    """
    out: dict[int, list[tuple[Tensor, Tensor]]] = {layer: [] for layer in layers}
    device = next(model.parameters()).device

    def grab(layer: int, module: Any, args: tuple, kwargs: dict) -> None:
        out[layer].append((kwargs["query_input"][0].detach(), kwargs["key_input"][0].detach()))

    with pre_hooks(model, grab, layers=layers), torch.no_grad():
        for tp in tps:
            model(tp.tokens[None].to(device), stop_at_layer=max(layers) + 1)
    return out


__all__ = [
    "LEARNING_RESPONSES",
    "cache_attention_inputs",
]
