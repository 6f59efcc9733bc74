"""Tokenised prompts: the exact mapping of a labelled prompt's character spans to tokens.

:func:`tokenize_prompt` tokenises a :class:`~focuslens.prompts.spans.LabeledPrompt` as
``model.to_tokens`` would and maps each labelled span through the tokenizer's own character
offsets: a token belongs to a span when it shares at least one character with it, a token
that straddles two labelled spans is refused, and a span that covers no token is an error
that names it. The mapping costs ``O(tokens + spans log tokens)``, and a prompt longer than
the model's context is refused before any span is mapped.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from focuslens.prompts.spans import LabeledPrompt, preview
from focuslens.typing import Span


# ---------------------------------------------------------------------- tokenisation
@dataclass(frozen=True)
class TokenizedPrompt:
    """A labelled prompt in token positions.

    Attributes:
        tokens: ``[pos]`` token ids: BOS (if prepended), prompt, response.
        n_prompt: Number of prompt tokens, BOS included; response starts here.
        relevant: Token span of the relevant document, or ``None``.
        distractors: Token spans of the distractors.
        source: The labelled prompt.
        spans: Token spans of the prompt's named spans, ``{name: [span, ...]}``.
    """

    tokens: torch.Tensor
    n_prompt: int
    relevant: Span | None
    distractors: list[Span]
    source: LabeledPrompt
    spans: dict[str, list[Span]] = field(default_factory=dict)

    @property
    def n_response(self) -> int:
        return int(self.tokens.shape[0]) - self.n_prompt

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def _offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} gives no character offsets; focuslens "
            "needs a Hugging Face fast tokenizer (PreTrainedTokenizerFast) to map spans exactly"
        )
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def char_to_token_span(
    offsets: Sequence[tuple[int, int]],
    span: Span,
    *,
    shift: int = 0,
    name: str = "span",
    text: str = "",
    index: _OffsetIndex | None = None,
) -> Span:
    """Token span ``[first, last + 1)`` of the tokens that share a character with ``span``.

    Args:
        offsets: Per-token character offsets ``(start, end)``.
        span: Character span.
        shift: Added to the token indices (1 when a BOS token is prepended).
        index: A prebuilt :class:`_OffsetIndex` of ``offsets`` (mapping many spans of one
            prompt then costs ``O(tokens + spans log tokens)``, not ``O(tokens x spans)``).

    Raises:
        ValueError: When no token covers any character of the span.
    """
    start, end = span
    found = (index or _OffsetIndex(offsets)).covering(start, end)
    if found is None:
        raise ValueError(
            f"{name} {span} ({text[start:end][:60]!r}) covers no token of the prompt "
            f"({preview(text)!r})"
        )
    return found[0] + shift, found[1] + shift


class _OffsetIndex:
    """The tokens with at least one character, searchable by character position.

    Tokenizers give offsets whose starts and ends never decrease; then the tokens sharing a
    character with a span are a contiguous run found by two binary searches. Otherwise
    (never seen, but not assumed away) each query scans the tokens.
    """

    def __init__(self, offsets: Sequence[tuple[int, int]]) -> None:
        kept = [(i, s, e) for i, (s, e) in enumerate(offsets) if s < e]
        self.index = [i for i, _, _ in kept]
        self.starts = [s for _, s, _ in kept]
        self.ends = [e for _, _, e in kept]
        self.sorted = all(a <= b for a, b in zip(self.starts, self.starts[1:])) and all(
            a <= b for a, b in zip(self.ends, self.ends[1:])
        )

    def covering(self, start: int, end: int) -> tuple[int, int] | None:
        """``(first, last + 1)`` token indices sharing a character with ``[start, end)``."""
        if self.sorted:
            first = bisect.bisect_right(self.ends, start)  # first token ending after start
            last = bisect.bisect_left(self.starts, end) - 1  # last token starting before end
            if first > last:
                return None
            return self.index[first], self.index[last] + 1
        hits = [i for i, s, e in zip(self.index, self.starts, self.ends) if s < end and e > start]
        return (hits[0], hits[-1] + 1) if hits else None


def tokenize_prompt(
    model: Any,
    prompt: LabeledPrompt,
    *,
    prepend_bos: bool | None = None,
    require_response: bool = False,
    max_tokens: int | None = None,
) -> TokenizedPrompt:
    """Tokenise a labelled prompt as ``model.to_tokens`` would, with exact token spans.

    Args:
        model: A HookedTransformer or TransformerBridge (anything with ``.tokenizer``
            and ``.cfg``), or a bare tokenizer (then ``prepend_bos`` defaults to True).
        prompt: The labelled prompt.
        prepend_bos: Override ``model.cfg.default_prepend_bos``.
        require_response: Raise when the prompt has no response.
        max_tokens: Refuse a prompt (with its response) of more tokens, before its spans
            are mapped (e.g. the model's ``n_ctx``).
    """
    tokenizer = getattr(model, "tokenizer", model)
    if tokenizer is None:
        raise ValueError("the model has no tokenizer; call model.set_tokenizer(...) first")
    if prepend_bos is None:
        cfg = getattr(model, "cfg", None)
        prepend_bos = bool(getattr(cfg, "default_prepend_bos", True))
    if require_response and not prompt.response:
        raise ValueError(
            f"prompt {preview(prompt.text)!r} has no response; query='response' needs one "
            "(give LabeledPrompt(response=...) or use query='last')"
        )
    ids, offsets = _offsets(tokenizer, prompt.text)
    if prepend_bos:
        if tokenizer.bos_token_id is None:
            raise ValueError("prepend_bos is set but the tokenizer has no BOS token")
        ids = [tokenizer.bos_token_id, *ids]
    response_ids = (
        list(tokenizer(prompt.response, add_special_tokens=False)["input_ids"])
        if prompt.response
        else []
    )
    if max_tokens is not None and len(ids) + len(response_ids) > max_tokens:
        raise ValueError(
            f"it has {len(ids) + len(response_ids)} tokens, more than the model's context "
            f"n_ctx={max_tokens}"
        )
    shift = 1 if prepend_bos else 0
    index = _OffsetIndex(offsets)
    relevant = (
        char_to_token_span(
            offsets,
            prompt.relevant,
            shift=shift,
            name="relevant span",
            text=prompt.text,
            index=index,
        )
        if prompt.relevant is not None
        else None
    )
    distractors = [
        char_to_token_span(
            offsets, s, shift=shift, name=f"distractor span {i}", text=prompt.text, index=index
        )
        for i, s in enumerate(prompt.distractors)
    ]
    named = ([("relevant", relevant)] if relevant else []) + [
        (f"distractor {i}", s) for i, s in enumerate(distractors)
    ]
    named.sort(key=lambda item: item[1])
    for (n1, s1), (n2, s2) in zip(named, named[1:]):
        if s2[0] < s1[1]:
            tok = s2[0] - shift
            raise ValueError(
                f"token {s2[0]} ({prompt.text[offsets[tok][0] : offsets[tok][1]]!r}) straddles "
                f"the {n1} and {n2} spans in prompt {preview(prompt.text)!r}; put a separator "
                "between the documents"
            )
    spans = {
        name: [
            char_to_token_span(
                offsets, s, shift=shift, name=f"span {name!r}", text=prompt.text, index=index
            )
            for s in char_spans
        ]
        for name, char_spans in prompt.spans.items()
    }
    n_prompt = len(ids)
    ids = ids + response_ids
    return TokenizedPrompt(
        tokens=torch.tensor(ids, dtype=torch.long),
        n_prompt=n_prompt,
        relevant=relevant,
        distractors=distractors,
        source=prompt,
        spans=spans,
    )


__all__ = ["TokenizedPrompt", "char_to_token_span", "tokenize_prompt"]
