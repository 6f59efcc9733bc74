"""Prompts of a requested length in tokens."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from focuslens.prompts.spans import LabeledPrompt


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
    "synthetic_retrieval_of_length",
]
