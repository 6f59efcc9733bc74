"""The response rows of a prompt: the one recipe for teacher-forced responses.

Contextual scores average over the rows of a response, and focus directions are learned
to raise the attention of those rows, so every analysis needs a response appended to its
prompt. Where it comes from (``response=``):

* ``"given"``: each prompt's own ``prompt.response`` (refused if one has none);
* ``"generated"``: the model's greedy answer to the prompt itself, as the authors' code
  does before scoring heads (no filtering by correctness);
* ``"gold_only"``: the model's greedy answer to the prompt's gold-only variant (only the
  relevant document), as the authors' code does before learning focus directions;
* ``"auto"``: ``"given"`` when every prompt has a response, else ``"generated"``.

A greedy answer uses the prompt's ``meta["max_new_tokens"]`` and ``meta["stop_strings"]``
when the call does not set them, else :data:`DEFAULT_MAX_NEW_TOKENS` and
:data:`DEFAULT_STOP_STRINGS` (the authors' settings). A prompt whose answer is empty has
no response row: it is left out, and its index is returned, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

from focuslens.model.generation import Generation, generate_greedy
from focuslens.prompts.spans import LabeledPrompt
from focuslens.prompts.tokens import tokenize_prompt
from focuslens.typing import Model

DEFAULT_MAX_NEW_TOKENS = 100
"""At most this many new tokens per answer, as in the authors' code."""

DEFAULT_STOP_STRINGS: tuple[str, ...] = ()
"""No stop strings: an answer ends at EOS or after ``max_new_tokens``, as in the authors'
code (which scores the whole response). Pass ``stop_strings="\\n"`` for base models,
which do not stop by themselves (and for speed)."""

ResponseSource = Literal["given", "generated", "gold_only", "auto"]
RESPONSES: tuple[str, ...] = ("given", "generated", "gold_only", "auto")
"""The sources of a teacher-forced response (module docstring)."""


def answer_settings(
    prompt: LabeledPrompt,
    max_new_tokens: int | None = None,
    stop_strings: str | Sequence[str] | None = None,
) -> tuple[int, str | Sequence[str]]:
    """``max_new_tokens`` and stop strings for one prompt: arguments, else meta, else defaults."""
    n = max_new_tokens if max_new_tokens is not None else prompt.meta.get("max_new_tokens")
    stops = stop_strings if stop_strings is not None else prompt.meta.get("stop_strings")
    return (
        DEFAULT_MAX_NEW_TOKENS if n is None else n,
        DEFAULT_STOP_STRINGS if stops is None else stops,
    )


def greedy_answer(
    model: Model, prompt: LabeledPrompt, *, max_new_tokens: int | None = None
) -> Generation:
    """The model's greedy answer to ``prompt`` (its response, if any, is ignored)."""
    n, stops = answer_settings(prompt, max_new_tokens)
    tp = tokenize_prompt(model, prompt.with_response(None))
    return generate_greedy(model, tp.tokens, max_new_tokens=n, stop_strings=stops)


def with_responses(
    model: Model,
    prompts: Iterable[LabeledPrompt],
    response: ResponseSource = "auto",
    *,
    max_new_tokens: int | None = None,
) -> tuple[list[LabeledPrompt], list[int]]:
    """Prompts with their teacher-forced responses, and the indices of those left out.

    Args:
        model: The model that answers (for ``"generated"`` and ``"gold_only"``).
        prompts: Labelled prompts.
        response: Where each response comes from (module docstring).
        max_new_tokens: Longest greedy answer; default: the prompt's meta, else 100.

    Returns:
        The prompts that have a non-empty response, with it attached, and the indices of
        the prompts whose greedy answer was empty (left out).

    Raises:
        ValueError: for an unknown ``response``, ``"given"`` with a prompt that has no
            response, or no prompt left.
    """
    if response not in RESPONSES:
        raise ValueError(f"response must be one of {RESPONSES}, got {response!r}")
    prompts = list(prompts)
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, LabeledPrompt):
            raise TypeError(f"prompt {i} is a {type(prompt).__name__}, expected a LabeledPrompt")
    if response == "auto":
        response = "given" if all(p.response for p in prompts) else "generated"
    if response == "given":
        missing = [i for i, p in enumerate(prompts) if not p.response]
        if missing:
            raise ValueError(
                f"prompt {missing[0]} has no response ({len(missing)} in all); give one, or "
                "pass response='generated' or 'gold_only'"
            )
        return prompts, []
    out, skipped = [], []
    for i, prompt in enumerate(prompts):
        source = prompt.gold_only() if response == "gold_only" else prompt
        text = greedy_answer(model, source, max_new_tokens=max_new_tokens).text
        if text.strip():
            out.append(prompt.with_response(text))
        else:
            skipped.append(i)
    if not out:
        raise ValueError(f"no prompt left: all {len(skipped)} greedy answers were empty")
    return out, skipped


__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "DEFAULT_STOP_STRINGS",
    "RESPONSES",
    "answer_settings",
    "greedy_answer",
    "with_responses",
]
