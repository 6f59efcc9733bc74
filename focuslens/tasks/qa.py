"""Multi-document question answering in natural language, for real models.

A prompt is an instruction, N documents and a question, in the "lost in the middle"
format (Liu et al. 2024, ``prompts/qa.prompt``), which the focus-direction paper uses::

    Write a high-quality answer for the given question using only the provided search
    results (some of which might be irrelevant).

    Document [1](Title: ...) ...
    Document [2](Title: ...) ...

    Question: ...
    Answer:

Exactly one document, the *gold* one, contains the answer; its span (title and text,
without the ``Document [i]`` prefix) is the prompt's ``relevant`` span, the others are
``distractors``. With ``chat_template`` (a Hugging Face tokenizer) the whole text
becomes the user turn and the assistant's generation prompt follows, as for the
paper's instruction-tuned models.

Which builder?

* :func:`qa_prompt`: given documents, put the gold one at ``gold_position``.
* :func:`qa_prompt_of_length`: as many distractors from a pool as fit in ``n_tokens``
  tokens of a given tokenizer (accuracy against context length).

Spans end at a document's last character. Models often gather a passage's content on
the token that closes it (here the newline before the next ``Document``), which lies
outside the span: when a head's relevant score looks uniformly low, look at the
tokens just after the spans too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from focuslens.prompts.spans import (
    DEFAULT_DOC_BODY,
    DEFAULT_DOC_PREFIX,
    DEFAULT_INSTRUCTION,
    LabeledPrompt,
)
from focuslens.prompts.tokens import tokenize_prompt

Document = tuple[str, str] | dict[str, Any] | str
"""A document: ``(title, text)``, ``{"title": ..., "text": ...}`` or plain text."""

HELMET_INSTRUCTION = (
    "Use the given documents to write a concise and short answer to the question. "
    "Write your answer in the following format:\nAnswer: [answer]"
)
"""The instruction of HELMET's retrieval-augmented QA tasks."""


@dataclass(frozen=True)
class QAFormat:
    """How a QA prompt lays out its documents.

    Attributes:
        instruction: First paragraph.
        doc_prefix: Per-document text outside the span; ``{i}`` is the 1-based number.
        doc_body: Per-document text inside the span; ``{title}`` and ``{text}``.
    """

    instruction: str = DEFAULT_INSTRUCTION
    doc_prefix: str = DEFAULT_DOC_PREFIX
    doc_body: str = DEFAULT_DOC_BODY


FORMATS: dict[str, QAFormat] = {
    "lost_in_the_middle": QAFormat(),
    "helmet": QAFormat(HELMET_INSTRUCTION, "Document ", "(Title: {title}): {text}"),
}
"""Prompt formats by name. ``"helmet"`` follows HELMET's passage template, except that
documents are separated by one newline (HELMET uses a blank line)."""


def _format(style: str | QAFormat) -> QAFormat:
    if isinstance(style, QAFormat):
        return style
    if style not in FORMATS:
        raise ValueError(f"unknown QA format {style!r}; choose from {sorted(FORMATS)}")
    return FORMATS[style]


def check_document(doc: Any, name: str = "document") -> tuple[str, str]:
    """``(title, text)`` of a document, with an error naming a malformed one."""
    if isinstance(doc, str):
        return "", doc
    if isinstance(doc, dict):
        text, title = doc.get("text"), doc.get("title") or ""
    elif isinstance(doc, (tuple, list)) and len(doc) == 2:
        title, text = doc
    else:
        raise ValueError(f"{name} must be (title, text), a dict or a str, got {doc!r:.120}")
    if not isinstance(text, str) or not isinstance(title, str):
        raise ValueError(f"{name} needs a str 'text' (and 'title'), got {doc!r:.120}")
    return title, text


def resolve_position(position: int | float, n_documents: int) -> int:
    """0-based index of the gold document among ``n_documents``.

    ``position`` is an int index (negative counts from the end, as in Python) or a
    float depth in [0, 1] (0.0 first, 1.0 last, rounded to the nearest index).

    Example:
        >>> resolve_position(-1, 20), resolve_position(0.5, 20), resolve_position(1.0, 20)
        (19, 10, 19)
    """
    if isinstance(position, bool) or not isinstance(position, (int, float)):
        raise ValueError(f"gold_position must be an int index or a float depth, got {position!r}")
    if isinstance(position, float):
        if not 0.0 <= position <= 1.0:
            raise ValueError(f"a float gold_position is a depth in [0, 1], got {position}")
        return round(position * (n_documents - 1))
    if not -n_documents <= position < n_documents:
        raise ValueError(f"gold_position {position} is out of range for {n_documents} documents")
    return position % n_documents


def _answers(answers: Sequence[str] | str) -> list[str]:
    out = [answers] if isinstance(answers, str) else list(answers)
    if not out or not all(isinstance(a, str) for a in out):
        raise ValueError(f"answers must be a non-empty list of strings, got {answers!r:.120}")
    return out


def qa_prompt(
    question: str,
    answers: Sequence[str] | str,
    gold_document: Document | None,
    distractors: Sequence[Document],
    *,
    gold_position: int | float = 0,
    chat_template: Any | None = None,
    style: str | QAFormat = "lost_in_the_middle",
    meta: dict[str, Any] | None = None,
) -> LabeledPrompt:
    """A "lost in the middle" prompt with the gold document at ``gold_position``.

    Args:
        question: The question.
        answers: Gold answers (for the metric).
        gold_document: The document that contains the answer; None for a prompt of
            distractors only (``relevant=None``).
        distractors: The other documents, in order.
        gold_position: Index of the gold document among all documents (negative from
            the end) or a float depth in [0, 1]; see :func:`resolve_position`.
        chat_template: A Hugging Face tokenizer whose chat template wraps the prompt.
        style: A name in :data:`FORMATS` or a :class:`QAFormat`.
        meta: Extra fields for ``prompt.meta`` (which gets ``question`` and
            ``metric="best_subspan_em"``).

    Example:
        >>> p = qa_prompt("Who wrote Hamlet?", ["Shakespeare"], ("Hamlet", "By Shakespeare."),
        ...               [("Paris", "A city."), ("Rome", "Another city.")], gold_position=1)
        >>> p.gold_position, p.n_documents, p.text[p.relevant[0]:p.relevant[1]]
        (1, 3, '(Title: Hamlet) By Shakespeare.')
    """
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question must be a non-empty string, got {question!r}")
    fmt = _format(style)
    docs = [check_document(d, f"distractor {i}") for i, d in enumerate(distractors)]
    gold_index = None
    if gold_document is not None:
        gold_index = resolve_position(gold_position, len(docs) + 1)
        docs.insert(gold_index, check_document(gold_document, "gold_document"))
    prompt = LabeledPrompt.from_documents(
        question,
        docs,
        gold_index,
        _answers(answers),
        instruction=fmt.instruction,
        doc_prefix=fmt.doc_prefix,
        doc_body=fmt.doc_body,
        chat_template=chat_template,
    )
    return replace(prompt, meta={"question": question, "metric": "best_subspan_em", **(meta or {})})


def qa_prompt_of_length(
    question: str,
    answers: Sequence[str] | str,
    gold_document: Document,
    distractors: Sequence[Document],
    *,
    tokenizer: Any,
    n_tokens: int,
    gold_position: int | float = 0.5,
    chat_template: Any | None = None,
    style: str | QAFormat = "lost_in_the_middle",
    meta: dict[str, Any] | None = None,
) -> LabeledPrompt:
    """The longest prompt of at most ``n_tokens`` tokens, padded with distractors.

    Distractors are taken from the pool in order, as many as fit. Tokens are counted
    as :func:`focuslens.tokenize_prompt` counts them (BOS included when the model
    prepends one). A float ``gold_position`` (a depth) keeps the gold document at the
    same relative place whatever the number of documents. The arguments not listed
    below are as in :func:`qa_prompt`.

    Args:
        tokenizer: A model (``HookedTransformer``) or a Hugging Face fast tokenizer
            (then a BOS token is counted).
        n_tokens: The most tokens the prompt may have.

    Raises:
        ValueError: When the gold document alone is longer than ``n_tokens``, or the
            pool runs out before the prompt reaches ``n_tokens`` (pass more
            distractors).
    """
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise ValueError(f"n_tokens must be a positive int, got {n_tokens!r}")
    pool = list(distractors)

    def build(k: int) -> LabeledPrompt:
        pos = gold_position
        if isinstance(pos, int) and not isinstance(pos, bool):
            pos = max(-k - 1, min(pos, k))  # only for counting; the final prompt checks it
        return qa_prompt(
            question,
            answers,
            gold_document,
            pool[:k],
            gold_position=pos,
            chat_template=chat_template,
            style=style,
            meta=meta,
        )

    def length(k: int) -> int:
        return len(tokenize_prompt(tokenizer, build(k)))

    if length(0) > n_tokens:
        raise ValueError(
            f"the prompt with the gold document alone has {length(0)} tokens, more than "
            f"n_tokens={n_tokens}"
        )
    if length(len(pool)) <= n_tokens:
        raise ValueError(
            f"all {len(pool)} distractors give only {length(len(pool))} tokens, fewer than "
            f"n_tokens={n_tokens}; pass a larger pool of distractors"
        )
    lo, hi = 0, len(pool)  # length(lo) <= n_tokens < length(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if length(mid) <= n_tokens else (lo, mid)
    prompt = qa_prompt(
        question,
        answers,
        gold_document,
        pool[:lo],
        gold_position=gold_position,
        chat_template=chat_template,
        style=style,
        meta=meta,
    )
    extra = {"n_tokens": len(tokenize_prompt(tokenizer, prompt)), "target_n_tokens": n_tokens}
    return replace(prompt, meta={**prompt.meta, **extra})


__all__ = [
    "FORMATS",
    "HELMET_INSTRUCTION",
    "Document",
    "QAFormat",
    "check_document",
    "qa_prompt",
    "qa_prompt_of_length",
    "resolve_position",
]
