"""Greedy answers and exact-match accuracy of a model on synthetic retrieval prompts.

A small stand-alone loop used while training the demo model and for its card when
``focuslens.evaluate`` is not available. Prompts are grouped by token length so a batch
needs no padding.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from focuslens.prompts.spans import LabeledPrompt
from focuslens.prompts.tokens import tokenize_prompt


def _normalise(text: str) -> str:
    return " ".join(text.split())


@torch.inference_mode()
def greedy_answers(
    model, prompts: Sequence[LabeledPrompt], *, max_new_tokens: int = 3, batch_size: int = 64
) -> list[str]:
    """Greedy continuations of each prompt, cut before the first EOS.

    Args:
        model: A HookedTransformer with a tokenizer.
        prompts: Prompts; their ``response`` is ignored.
        max_new_tokens: Tokens generated per prompt.
        batch_size: Prompts per forward pass.

    Returns:
        One decoded string per prompt, whitespace-normalised, without the EOS marker.
    """
    tok = model.tokenizer
    by_length: dict[int, list[tuple[int, torch.Tensor]]] = defaultdict(list)
    for i, p in enumerate(prompts):
        ids = tokenize_prompt(model, p.with_response(None)).tokens
        by_length[len(ids)].append((i, ids))
    out = [""] * len(prompts)
    device = model.cfg.device
    for items in by_length.values():
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            tokens = torch.stack([ids for _, ids in chunk]).to(device)
            new = []
            for _ in range(max_new_tokens):
                nxt = model(tokens)[:, -1].argmax(-1, keepdim=True)
                new.append(nxt)
                tokens = torch.cat([tokens, nxt], dim=1)
            gen = torch.cat(new, dim=1).tolist()
            for (i, _), row in zip(chunk, gen):
                if tok.eos_token_id in row:
                    row = row[: row.index(tok.eos_token_id)]
                out[i] = _normalise(tok.decode(row))
    return out


def exact_match(predictions: Sequence[str], prompts: Sequence[LabeledPrompt]) -> list[bool]:
    """Whether each whitespace-normalised prediction equals one of its prompt's answers."""
    return [
        _normalise(pred) in {_normalise(a) for a in p.answers}
        for pred, p in zip(predictions, prompts)
    ]


def accuracy(model, prompts: Sequence[LabeledPrompt], **kwargs) -> float:
    """Exact-match accuracy of greedy answers (0-1)."""
    if not prompts:
        raise ValueError("accuracy of an empty list of prompts is undefined")
    hits = exact_match(greedy_answers(model, prompts, **kwargs), prompts)
    return sum(hits) / len(hits)
