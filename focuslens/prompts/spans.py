"""Labelled prompts and the exact mapping of their character spans to token positions.

A :class:`LabeledPrompt` is the text a model reads (chat template already applied
where there is one) plus character spans that say which part is the *relevant*
document and which parts are *distractors*, the gold answers, and optionally a
``response`` that follows the prompt (teacher forcing).

Character spans become token spans through the tokenizer's character offsets
(:func:`tokenize_prompt`), so they are exact for the model's own tokenizer.

Boundary convention: a token belongs to a span when it shares **at least one
character** with it. A token that straddles a span boundary (for example GPT-2's
``" Document"``, whose leading space lies before the span) is therefore counted in the
span. Every character of a span that some token covers lies in a token of the span,
and no token outside the token span touches the character span. Characters that no
token covers (the spaces a whitespace pre-tokenizer drops) belong to no token. A
single token that touches two labelled spans is refused, since its attention would
be counted twice.

Tokenisation follows TransformerLens's ``model.to_tokens``: the prompt text is
tokenised without the tokenizer's own special tokens, and the BOS token is prepended
when ``model.cfg.default_prepend_bos`` says so. The response is tokenised on its own
(so the prompt's tokens never change with it) and appended: include the leading space
in the response text if your tokenizer expects one (``" Paris"`` for GPT-2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from focuslens.typing import Span

DEFAULT_INSTRUCTION = (
    "Write a high-quality answer for the given question using only the provided search "
    "results (some of which might be irrelevant)."
)
"""The instruction of the "lost in the middle" QA prompt (``prompts/qa.prompt``)."""

DEFAULT_DOC_PREFIX = "Document [{i}]"
"""The part of each document outside its span; ``{i}`` is the 1-based document number."""

DEFAULT_DOC_BODY = "(Title: {title}) {text}"
"""The part of each document inside its span (title and text, as in the authors' code)."""


def preview(text: str, n: int = 80) -> str:
    """The first ``n`` characters of a prompt, newlines shown, for error messages."""
    short = text[:n].replace("\n", "\\n")
    return short + ("..." if len(text) > n else "")


RESERVED_SPAN_NAMES = ("relevant", "distractors", "distractor_max", "sink", "other")
"""Names a named span cannot take: the score kinds every prompt has."""


def _span(name: str, span: Any) -> tuple:
    """A span as a tuple; refuses what is not a pair of ints (a bool is not an int here)."""
    if isinstance(span, (str, bytes)) or not isinstance(span, Iterable):
        raise ValueError(f"{name} span {span!r} must be two ints (start, end)")
    out = tuple(span)
    if len(out) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in out):
        raise ValueError(f"{name} span {span!r} must be two ints (start, end)")
    return out


@dataclass(frozen=True)
class _Parts:
    """How a prompt was assembled, so that its gold-only and distractors-only variants
    can be rebuilt with the same layout."""

    header: str
    prefixes: tuple[str, ...]
    bodies: tuple[str, ...]
    gold_index: int | None
    footer: str
    separator: str
    prefix_format: str | None
    wrap: Callable[[str], str] | None
    named: tuple[tuple[str, str, int, int], ...] = ()  # (name, "header" | "footer", start, end)


@dataclass(frozen=True)
class LabeledPrompt:
    """A prompt with labelled character spans.

    Attributes:
        text: The prompt exactly as the model sees it (chat template applied).
        relevant: Character span ``(start, end)`` of the relevant document in ``text``,
            or ``None`` when no document is relevant (e.g. a query whose key is absent).
        distractors: Character spans of the distractor documents.
        answers: The gold answer strings.
        response: Optional text that follows the prompt (teacher forcing); its tokens
            are the query rows of ``contextual_scores(query="response")``.
        spans: Named character spans: ``{"question": (s, e), "instructions": [(s, e),
            ...]}`` (a span or a list of spans each). Every contextual score also gives
            the attention mass on each of them (:meth:`ContextualScores.mass
            <focuslens.ContextualScores.mass>`). They may overlap each other and the
            documents; stored as ``{name: tuple of spans}``.
            :meth:`from_documents` names the ``"instruction"`` and the ``"question"``.

    Example:
        >>> p = LabeledPrompt.from_documents(
        ...     question="Who wrote Hamlet?",
        ...     documents=[("Hamlet", "A play by Shakespeare."), ("Paris", "A city.")],
        ...     gold_index=0, answers=["Shakespeare"])
        >>> p.text[p.relevant[0]:p.relevant[1]]
        '(Title: Hamlet) A play by Shakespeare.'
        >>> len(p.gold_only().distractors), len(p.distractors_only().distractors)
        (0, 1)
        >>> [p.text[s:e] for s, e in p.spans["question"]]
        ['Who wrote Hamlet?']
    """

    text: str
    relevant: Span | None
    distractors: list[Span]
    answers: list[str]
    response: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    spans: dict[str, Any] = field(default_factory=dict)
    _parts: _Parts | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"LabeledPrompt.text must be a str, got {type(self.text).__name__}")
        object.__setattr__(self, "distractors", [_span("distractor", s) for s in self.distractors])
        if self.relevant is not None:
            object.__setattr__(self, "relevant", _span("relevant", self.relevant))
        if isinstance(self.answers, str):
            object.__setattr__(self, "answers", [self.answers])
        if self.answers is None or not all(isinstance(a, str) for a in self.answers):
            raise ValueError(
                f"answers must be a list of strings (may be empty), got {self.answers!r}"
            )
        object.__setattr__(self, "answers", list(self.answers))
        if self.response is not None and not isinstance(self.response, str):
            raise ValueError(f"response must be a str or None, got {self.response!r}")
        labelled = ([("relevant", self.relevant)] if self.relevant is not None else []) + [
            (f"distractor {i}", s) for i, s in enumerate(self.distractors)
        ]
        for name, span in labelled:
            if len(span) != 2 or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in span
            ):
                raise ValueError(f"{name} span {span!r} must be two ints (start, end)")
            start, end = span
            if start >= end:
                raise ValueError(f"{name} span {span} is empty in prompt {preview(self.text)!r}")
            if start < 0 or end > len(self.text):
                raise ValueError(
                    f"{name} span {span} is out of range for a prompt of {len(self.text)} "
                    f"characters ({preview(self.text)!r})"
                )
        object.__setattr__(self, "spans", self._named_spans(self.spans))
        ordered = sorted(labelled, key=lambda item: item[1])
        for (n1, s1), (n2, s2) in zip(ordered, ordered[1:]):
            if s2[0] < s1[1]:
                raise ValueError(
                    f"{n1} span {s1} overlaps {n2} span {s2} in prompt {preview(self.text)!r}"
                )

    def _named_spans(self, spans: Any) -> dict[str, tuple[tuple[int, int], ...]]:
        """``spans`` checked and normalised to ``{name: tuple of (start, end)}``."""
        if spans is None:
            return {}
        if not isinstance(spans, dict):
            raise ValueError(
                f"spans must be a dict {{name: span or list of spans}}, got {type(spans).__name__}"
            )
        out = {}
        for name, value in spans.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"span names must be non-empty strings, got {name!r}")
            if name in RESERVED_SPAN_NAMES:
                raise ValueError(
                    f"span name {name!r} is taken by a score kind; reserved names: "
                    f"{RESERVED_SPAN_NAMES}"
                )
            many = (
                isinstance(value, (list, tuple))
                and len(value) > 0
                and all(isinstance(v, (list, tuple)) for v in value)
            )
            items = (
                [_span(f"span {name!r}", v) for v in value]
                if many
                else [_span(f"span {name!r}", value)]
            )
            for start, end in items:
                if start >= end:
                    raise ValueError(
                        f"span {name!r} {(start, end)} is empty in prompt {preview(self.text)!r}"
                    )
                if start < 0 or end > len(self.text):
                    raise ValueError(
                        f"span {name!r} {(start, end)} is out of range for a prompt of "
                        f"{len(self.text)} characters ({preview(self.text)!r})"
                    )
            out[name] = tuple(sorted(items))
        return out

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_documents(
        cls,
        question: str,
        documents: Sequence[tuple[str, str] | dict[str, str] | str],
        gold_index: int | None,
        answers: Sequence[str],
        *,
        instruction: str = DEFAULT_INSTRUCTION,
        doc_prefix: str = DEFAULT_DOC_PREFIX,
        doc_body: str = DEFAULT_DOC_BODY,
        chat_template: Any | None = None,
        response: str | None = None,
        separator: str = "\n",
    ) -> LabeledPrompt:
        """Build a multi-document QA prompt in the "lost in the middle" format.

        Args:
            question: The question.
            documents: ``(title, text)`` pairs, ``{"title", "text"}`` dicts or plain
                strings (title left empty).
            gold_index: 0-based index of the relevant document, or ``None``.
            answers: Gold answers.
            instruction: First paragraph of the prompt.
            doc_prefix: Per-document text outside the span (``{i}`` = 1-based number).
            doc_body: Per-document text inside the span (``{title}``, ``{text}``).
            chat_template: A Hugging Face tokenizer with a chat template; when given,
                the prompt becomes the user turn and a generation prompt is added.
            response: Optional teacher-forced response.
            separator: Text between documents (HELMET uses a blank line, ``"\n\n"``).
        """
        bodies = []
        for i, doc in enumerate(documents):
            if isinstance(doc, str):
                title, body_text = "", doc
            elif isinstance(doc, dict):
                if "text" not in doc:
                    raise ValueError(f"document {i} has no 'text' field: {doc!r}")
                title, body_text = doc.get("title", ""), doc["text"]
            else:
                title, body_text = doc
            bodies.append(doc_body.format(title=title, text=body_text))
        prefixes = [doc_prefix.format(i=i + 1) for i in range(len(bodies))]
        wrap = _chat_wrapper(chat_template) if chat_template is not None else None
        footer = f"\n\nQuestion: {question}\nAnswer:"
        q_start = len("\n\nQuestion: ")
        named = []
        if instruction:
            named.append(("instruction", "header", 0, len(instruction)))
        if question:
            named.append(("question", "footer", q_start, q_start + len(question)))
        return assemble(
            header=f"{instruction}\n\n",
            prefixes=prefixes,
            bodies=bodies,
            gold_index=gold_index,
            footer=footer,
            answers=answers,
            separator=separator,
            prefix_format=doc_prefix,
            wrap=wrap,
            response=response,
            named=named,
        )

    def _variant(self, keep: Callable[[int], bool], gold: bool) -> LabeledPrompt:
        parts = self._parts
        if parts is None:
            raise ValueError(
                "this LabeledPrompt was not built from documents (LabeledPrompt.from_documents "
                "or focuslens.prompts.spans.assemble), so its gold-only and distractors-only variants "
                "cannot be rebuilt"
            )
        placed = {name for name, *_ in parts.named}
        lost = [name for name in self.spans if name not in placed]
        if lost:
            raise ValueError(
                f"the named span(s) {lost} were not given to assemble(named=...), so the "
                "gold-only and distractors-only variants cannot place them"
            )
        idx = [i for i in range(len(parts.bodies)) if keep(i)]
        new_gold = idx.index(parts.gold_index) if gold and parts.gold_index in idx else None
        if parts.prefix_format is not None:
            prefixes = [parts.prefix_format.format(i=j + 1) for j in range(len(idx))]
        else:
            prefixes = [parts.prefixes[i] for i in idx]
        return assemble(
            header=parts.header,
            prefixes=prefixes,
            bodies=[parts.bodies[i] for i in idx],
            gold_index=new_gold,
            footer=parts.footer,
            answers=self.answers,
            separator=parts.separator,
            prefix_format=parts.prefix_format,
            wrap=parts.wrap,
            response=self.response,
            named=parts.named,
            meta=self._variant_meta(
                len(idx), new_gold, "gold_only" if gold else "distractors_only"
            ),
        )

    def _variant_meta(self, n_documents: int, gold_position: int | None, variant: str) -> dict:
        """The meta of a variant: document counts that describe the variant, not the
        original (``original_<key>`` keeps the original's ``n_documents``,
        ``gold_position`` and ``n_prompt_tokens``)."""
        meta = dict(self.meta)
        for key, value in (("n_documents", n_documents), ("gold_position", gold_position)):
            if key in meta:
                meta[f"original_{key}"] = meta[key]
                meta[key] = value
        if "n_prompt_tokens" in meta:  # the variant's length is not known without a tokenizer
            meta["original_n_prompt_tokens"] = meta.pop("n_prompt_tokens")
        meta["variant"] = variant
        return meta

    @property
    def has_variants(self) -> bool:
        """Whether :meth:`gold_only` and :meth:`distractors_only` can rebuild this prompt
        (it was assembled from documents, with :meth:`from_documents` or :func:`assemble`)."""
        return self._parts is not None

    def layout(self) -> dict[str, Any] | None:
        """How the prompt was assembled from documents, as plain JSON values, or ``None``
        when it was not assembled from documents, wraps a chat template function (which
        JSON cannot hold) or has named spans that were not given to :func:`assemble`. :func:`assemble` rebuilds the prompt from it."""
        parts = self._parts
        if parts is None or parts.wrap is not None:
            return None
        if set(self.spans) - {name for name, *_ in parts.named}:
            return None  # named spans the layout cannot place: keep the labelled form
        return {
            "header": parts.header,
            "prefixes": list(parts.prefixes),
            "bodies": list(parts.bodies),
            "gold_index": parts.gold_index,
            "footer": parts.footer,
            "separator": parts.separator,
            "prefix_format": parts.prefix_format,
            "named": [list(n) for n in parts.named],
        }

    def gold_only(self) -> LabeledPrompt:
        """The same prompt with only the relevant document."""
        if self._parts is not None and self._parts.gold_index is None:
            raise ValueError("this prompt has no relevant document, so it has no gold-only variant")
        return self._variant(lambda i: i == self._parts.gold_index, gold=True)  # type: ignore[union-attr]

    def distractors_only(self) -> LabeledPrompt:
        """The same prompt without the relevant document (the "negative" prompt)."""
        return self._variant(lambda i: i != self._parts.gold_index, gold=False)  # type: ignore[union-attr]

    def with_response(self, response: str | None) -> LabeledPrompt:
        """A copy with another teacher-forced response."""
        return replace(self, response=response)

    @property
    def n_documents(self) -> int:
        """Number of labelled documents (relevant and distractors)."""
        return len(self.distractors) + (self.relevant is not None)

    @property
    def gold_position(self) -> int | None:
        """0-based rank of the relevant document among all labelled documents."""
        if self.relevant is None:
            return None
        return sum(1 for s in self.distractors if s[0] < self.relevant[0])


def _chat_wrapper(tokenizer: Any) -> Callable[[str], str]:
    if not hasattr(tokenizer, "apply_chat_template"):
        raise ValueError("chat_template must be a Hugging Face tokenizer with apply_chat_template")

    def wrap(user_text: str) -> str:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True
        )

    return wrap


def assemble(
    *,
    header: str,
    prefixes: Sequence[str],
    bodies: Sequence[str],
    gold_index: int | None,
    footer: str,
    answers: Sequence[str],
    separator: str = "\n",
    prefix_format: str | None = None,
    wrap: Callable[[str], str] | None = None,
    response: str | None = None,
    meta: dict[str, Any] | None = None,
    named: Sequence[Sequence[Any]] = (),
) -> LabeledPrompt:
    """Join documents into a prompt and record the exact span of each body.

    The prompt is ``header + sep.join(prefix_i + body_i) + footer``, optionally passed
    through ``wrap`` (a chat template), which must contain the joined text verbatim.
    Spans cover the bodies; the prefixes lie outside them.

    ``named`` gives named spans inside the header or the footer, as ``(name, "header" |
    "footer", start, end)`` with offsets into that part; they become the prompt's
    ``spans`` and follow it into its gold-only and distractors-only variants. A name
    given several times is a list of spans.
    """
    if len(prefixes) != len(bodies):
        raise ValueError(f"{len(prefixes)} prefixes for {len(bodies)} documents")
    if gold_index is not None and not 0 <= gold_index < len(bodies):
        raise ValueError(f"gold_index {gold_index} is out of range for {len(bodies)} documents")
    pieces, spans, pos = [header], [], len(header)
    for k, (prefix, body) in enumerate(zip(prefixes, bodies)):
        if k:
            pieces.append(separator)
            pos += len(separator)
        pieces.append(prefix + body)
        start = pos + len(prefix)
        spans.append((start, start + len(body)))
        pos += len(prefix) + len(body)
    pieces.append(footer)
    inner = "".join(pieces)
    offset = 0
    text = inner
    if wrap is not None:
        text = wrap(inner)
        offset = text.find(inner)
        if offset < 0:
            raise ValueError(
                "the chat template changed the prompt text, so spans cannot be placed: "
                f"{preview(text)!r}"
            )
    spans = [(s + offset, e + offset) for s, e in spans]
    named = tuple(_named_part(n, header, footer) for n in named)
    footer_start = offset + len(inner) - len(footer)
    named_spans: dict[str, list[tuple[int, int]]] = {}
    for name, where, start, end in named:
        base = offset if where == "header" else footer_start
        named_spans.setdefault(name, []).append((base + start, base + end))
    relevant = spans[gold_index] if gold_index is not None else None
    distractors = [s for i, s in enumerate(spans) if i != gold_index]
    parts = _Parts(
        header=header,
        prefixes=tuple(prefixes),
        bodies=tuple(bodies),
        gold_index=gold_index,
        footer=footer,
        separator=separator,
        prefix_format=prefix_format,
        wrap=wrap,
        named=named,
    )
    return LabeledPrompt(
        text=text,
        relevant=relevant,
        distractors=distractors,
        answers=list(answers),
        response=response,
        meta=dict(meta or {}),
        spans=named_spans,
        _parts=parts,
    )


def _named_part(item: Sequence[Any], header: str, footer: str) -> tuple[str, str, int, int]:
    """One ``(name, part, start, end)`` of :func:`assemble`'s ``named``, checked."""
    if len(item) != 4:
        raise ValueError(f"a named span is (name, 'header' | 'footer', start, end), got {item!r}")
    name, where, start, end = item
    parts = {"header": header, "footer": footer}
    if where not in parts:
        raise ValueError(
            f"named span {name!r}: its part must be 'header' or 'footer', got {where!r}"
        )
    start, end = _span(f"span {name!r}", (start, end))
    if not 0 <= start < end <= len(parts[where]):
        raise ValueError(
            f"named span {name!r} {(start, end)} does not lie inside the {where} "
            f"({len(parts[where])} characters)"
        )
    return str(name), str(where), start, end


__all__ = [
    "RESERVED_SPAN_NAMES",
    "DEFAULT_DOC_BODY",
    "DEFAULT_DOC_PREFIX",
    "DEFAULT_INSTRUCTION",
    "LabeledPrompt",
    "assemble",
]
