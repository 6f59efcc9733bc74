"""Loaders for multi-document QA files: "lost in the middle" and HELMET-style JSONL.

Both read JSON Lines, plain or gzipped (detected from the file's first bytes), and
return :class:`~focuslens.LabeledPrompt` lists built by
:func:`focuslens.tasks.qa.qa_prompt`. A malformed line raises a ``ValueError`` that
names the file and the line number; nothing is skipped silently.

Which one?

* :func:`load_lost_in_the_middle` rebuilds the focus-direction paper's setting from
  ``nq-open-contriever-msmarco-retrieved-documents.jsonl.gz`` (Liu et al. 2024): 20
  documents, the gold one at 0, 4, 9, 14 or 19, distractors that do not contain the
  answer, a seeded 50/50 train/test split by question.
* :func:`load_helmet` reads HELMET's retrieval-augmented QA files (question, answers,
  retrieved passages) as they are, one prompt per line.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from focuslens.prompts.spans import LabeledPrompt
from focuslens.tasks.qa import QAFormat, check_document, qa_prompt

_MAX_META_STR = 200


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line_number, record)`` for each non-blank line of a (gzipped) JSONL file.

    Raises:
        ValueError: For a line that is not a JSON object, naming the file and line.
    """
    path = Path(path)
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    lineno = 0
    try:
        with opener(path, "rb") as f:  # bytes: each line is decoded alone, so errors name it
            for lineno, raw_line in enumerate(f, 1):
                try:
                    line = raw_line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ValueError(
                        f"{path}, line {lineno}: not UTF-8 text ({exc.reason} at byte {exc.start})"
                    ) from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(
                        f"{path}, line {lineno}: not valid JSON ({exc.msg}, column {exc.colno})"
                    ) from None
                if not isinstance(record, dict):
                    raise ValueError(
                        f"{path}, line {lineno}: expected a JSON object, got "
                        f"{type(record).__name__}"
                    )
                yield lineno, record
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}, line {lineno + 1}: cannot be read ({exc})") from None


@dataclass(frozen=True)
class _Example:
    """One question of a lost-in-the-middle file, validated."""

    line: int
    question: str
    answers: list[str]
    gold: tuple[str, str]
    distractors: list[tuple[str, str]]


def _located(where: str, exc: ValueError) -> ValueError:
    return ValueError(f"{where}: {exc}")


def _question_answers(record: dict[str, Any]) -> tuple[str, list[str]]:
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"'question' must be a non-empty string, got {question!r:.80}")
    answers = record.get("answers", record.get("answer"))
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise ValueError(f"'answers' must be a non-empty list of strings, got {answers!r:.80}")
    return question, answers


def _contexts(record: dict[str, Any]) -> list[dict[str, Any]]:
    ctxs = record.get("ctxs")
    if not isinstance(ctxs, list) or not all(isinstance(c, dict) for c in ctxs):
        raise ValueError(f"'ctxs' must be a list of objects, got {ctxs!r:.80}")
    for i, ctx in enumerate(ctxs):
        check_document(ctx, f"ctxs[{i}]")
    return ctxs


def _litm_gold(record: dict[str, Any], ctxs: list[dict[str, Any]]) -> tuple[str, str]:
    annotated = record.get("nq_annotated_gold")
    if annotated is not None:
        if not isinstance(annotated, dict) or "chunked_long_answer" not in annotated:
            raise ValueError("'nq_annotated_gold' needs 'title' and 'chunked_long_answer'")
        doc = {"title": annotated.get("title"), "text": annotated["chunked_long_answer"]}
        return check_document(doc, "nq_annotated_gold")
    golds = [c for c in ctxs if c.get("isgold") is True]
    if not golds:
        raise ValueError(
            "no gold document (neither 'nq_annotated_gold' nor a ctx with isgold true)"
        )
    return check_document(golds[0])


def _litm_example(record: dict[str, Any], line: int, n_distractors: int) -> _Example:
    question, answers = _question_answers(record)
    ctxs = _contexts(record)
    gold = _litm_gold(record, ctxs)
    # As the authors: distractors are the retrieved documents with hasanswer exactly false.
    distractors = [
        check_document(c)
        for c in ctxs
        if c.get("hasanswer") is False and c.get("isgold") is not True
    ]
    if len(distractors) < n_distractors:
        raise ValueError(
            f"only {len(distractors)} documents without the answer (hasanswer false); "
            f"n_documents={n_distractors + 1} needs {n_distractors}"
        )
    return _Example(line, question, answers, gold, distractors[:n_distractors])


def _read_examples(path: str | Path, n_distractors: int) -> list[_Example]:
    examples = []
    for line, record in read_jsonl(path):
        try:
            examples.append(_litm_example(record, line, n_distractors))
        except ValueError as exc:
            raise _located(f"{path}, line {line}", exc) from None
    return examples


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")


def _check_setting(n_documents: int, gold_positions: Sequence[int], split: str | None) -> None:
    if isinstance(n_documents, bool) or not isinstance(n_documents, int) or n_documents < 1:
        raise ValueError(f"n_documents must be a positive int, got {n_documents!r}")
    bad = [g for g in gold_positions if not isinstance(g, int) or not 0 <= g < n_documents]
    if bad or not gold_positions:
        raise ValueError(
            f"gold_positions must be indices in [0, {n_documents}), got {list(gold_positions)!r}"
        )
    if split not in (None, "train", "test"):
        raise ValueError(f"split must be 'train', 'test' or None, got {split!r}")


def load_lost_in_the_middle(
    path: str | Path,
    *,
    n_documents: int = 20,
    gold_positions: Sequence[int] = (0, 4, 9, 14, 19),
    split: str | None = None,
    seed: int = 42,
    shuffle_distractors: bool = True,
    chat_template: Any | None = None,
    limit: int | None = None,
    style: str | QAFormat = "lost_in_the_middle",
) -> list[LabeledPrompt]:
    """Multi-document QA prompts from a "lost in the middle" retrieval file.

    Accepted records (one JSON object per line): ``question`` (str), ``answers`` (list
    of str), ``ctxs`` (list of ``{"title", "text", "hasanswer", "isgold"}``) and the
    gold passage as ``nq_annotated_gold`` (``{"title", "chunked_long_answer"}``, as in
    ``nq-open-contriever-msmarco-retrieved-documents.jsonl.gz``) or, failing that, the
    ctx with ``isgold`` true (as in the ready-made ``..._gold_at_K`` files).

    The setting, as in the authors' ``generate_focus_dataset.py``:

    * distractors: the first ``n_documents - 1`` ctxs with ``hasanswer`` false, in
      retrieval order, then shuffled (``shuffle_distractors``); a question with too few
      raises an error;
    * one prompt per question and gold position, question by question;
    * the split: questions shuffled with ``random.Random(seed)``, the first half (rounded
      down) is ``"train"``, the rest ``"test"``; the same generator then shuffles the
      distractors, train questions first. With the default ``seed=42`` this is the
      authors' procedure (they seed Python's global generator with 42), so it should
      give their split and distractor order. A question's prompts do not depend on
      ``split`` or ``limit``.

    Args:
        path: The ``.jsonl`` or ``.jsonl.gz`` file.
        n_documents: Documents per prompt (gold included).
        gold_positions: 0-based positions of the gold document; one prompt each.
        split: ``"train"``, ``"test"`` or None (all questions, in file order).
        seed: Seed of the split and the distractor order.
        shuffle_distractors: Shuffle the distractors (the focus-direction setting);
            False keeps retrieval order (the original lost-in-the-middle files).
        chat_template: A Hugging Face tokenizer whose chat template wraps each prompt.
        limit: Keep the first ``limit`` questions (each gives ``len(gold_positions)``
            prompts).
        style: The prompt format (see :data:`focuslens.tasks.qa.FORMATS`).

    Returns:
        Prompts with ``meta``: ``question``, ``metric``, ``source``, ``line``,
        ``example`` (0-based record index in the file), ``split``.
    """
    _check_setting(n_documents, gold_positions, split)
    _check_limit(limit)
    examples = _read_examples(path, n_documents - 1)
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    half = len(order) // 2
    chosen: list[tuple[int, str, list[list[tuple[str, str]]]]] = []
    for rank, index in enumerate(order):
        which = "train" if rank < half else "test"
        orders = []
        for _ in gold_positions:
            docs = list(examples[index].distractors)
            if shuffle_distractors:
                rng.shuffle(docs)
            orders.append(docs)
        if split is None or split == which:
            chosen.append((index, which, orders))
    if split is None:
        chosen.sort(key=lambda item: item[0])
    prompts = []
    for index, which, orders in chosen[:limit]:
        ex = examples[index]
        meta = {"source": "lost_in_the_middle", "line": ex.line, "example": index, "split": which}
        for position, docs in zip(gold_positions, orders):
            prompts.append(
                qa_prompt(
                    ex.question,
                    ex.answers,
                    ex.gold,
                    docs,
                    gold_position=position,
                    chat_template=chat_template,
                    style=style,
                    meta=meta,
                )
            )
    return prompts


def _helmet_gold(ctxs: list[dict[str, Any]]) -> int | None:
    for key in ("isgold", "is_gold", "gold"):
        flagged = [i for i, c in enumerate(ctxs) if c.get(key) is True]
        if flagged:
            return flagged[0]
    for key in ("has_answer", "hasanswer"):
        flagged = [i for i, c in enumerate(ctxs) if c.get(key) is True]
        if flagged:
            return flagged[0]
    return None


def _scalar_fields(record: dict[str, Any], skip: set[str]) -> dict[str, Any]:
    out = {}
    for key, value in record.items():
        if key in skip or isinstance(value, (dict, list)):
            continue
        if isinstance(value, str) and len(value) > _MAX_META_STR:
            continue
        out[key] = value
    return out


def load_helmet(
    path: str | Path,
    *,
    chat_template: Any | None = None,
    limit: int | None = None,
    style: str | QAFormat = "helmet",
) -> list[LabeledPrompt]:
    """Multi-document QA prompts from a HELMET-style JSONL file, one per line.

    Accepted records: ``question`` (str); ``answers`` (list of str, or one str; also
    read from ``answer``); ``ctxs`` (list of ``{"title", "text", ...}``, in prompt
    order). The relevant document is the first ctx flagged ``isgold``/``is_gold``/
    ``gold`` true, else the first with ``has_answer``/``hasanswer`` true, else none
    (``relevant=None``: accuracy still counts, attention allocation reports no
    relevant mass). Other ctxs are distractors, even when they also contain the answer
    (their count is ``meta["n_answer_documents"]``). Other scalar fields (``id``,
    ``depth``, ...) are copied into ``meta``.

    Args:
        path: The ``.jsonl`` or ``.jsonl.gz`` file.
        chat_template: A Hugging Face tokenizer whose chat template wraps each prompt.
        limit: Read at most this many records.
        style: The prompt format; ``"helmet"`` (default) or ``"lost_in_the_middle"``.
    """
    _check_limit(limit)
    prompts = []
    for line, record in read_jsonl(path):
        if limit is not None and len(prompts) >= limit:
            break
        try:
            prompts.append(_helmet_prompt(record, line, chat_template, style))
        except ValueError as exc:
            raise _located(f"{path}, line {line}", exc) from None
    return prompts


def _helmet_prompt(
    record: dict[str, Any], line: int, chat_template: Any, style: str | QAFormat
) -> LabeledPrompt:
    question, answers = _question_answers(record)
    ctxs = _contexts(record)
    gold = _helmet_gold(ctxs)
    docs = [check_document(c) for c in ctxs]
    n_answer = sum(1 for c in ctxs if c.get("has_answer", c.get("hasanswer")) is True)
    meta = _scalar_fields(record, {"question", "answers", "answer", "ctxs"})
    meta.update({"source": "helmet", "line": line, "n_answer_documents": n_answer})
    gold_doc = docs.pop(gold) if gold is not None else None
    return qa_prompt(
        question,
        answers,
        gold_doc,
        docs,
        gold_position=gold or 0,
        chat_template=chat_template,
        style=style,
        meta=meta,
    )


__all__ = ["load_helmet", "load_lost_in_the_middle", "read_jsonl"]
