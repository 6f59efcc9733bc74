"""Labelled prompts in JSON Lines files: write any prompt and read it back, or read the
loaders' formats.

The command line (``focuslens scores --data FILE``) reads prompts from a JSONL file.
:func:`read_prompts` detects the format from the first record:

* ``"documents"`` (written by :func:`write_prompts` for prompts built from documents,
  e.g. :func:`focuslens.tasks.synthetic_retrieval`): the arguments of
  :func:`focuslens.prompts.spans.assemble` (``header``, ``prefixes``, ``bodies``,
  ``gold_index``, ``footer``, ``separator``, ``answers``, ``response``, ``meta`` and
  the ``named`` spans of the header and footer), so the gold-only and
  distractors-only variants can be rebuilt::

      {"header": "", "prefixes": ["[DOC ", "[DOC "], "bodies": ["k1 k2 v3 v4 ]", "k5 k6 v7 v8 ]"],
       "gold_index": 1, "footer": " [Q k5 k6", "separator": " ", "answers": ["v7 v8"],
       "response": "v7 v8 <eos>", "meta": {"metric": "exact"}}

* ``"labeled"``: a prompt with character spans, ``{"text", "relevant", "distractors",
  "answers", "response", "meta", "spans"}`` (``spans``: named spans, ``{name: [[start,
  end], ...]}``) (no gold-only variant: learning directions with
  ``response="gold_only"`` needs the ``documents`` form);
* ``"helmet"`` / ``"lost_in_the_middle"``: QA records with ``question``, ``answers``
  and ``ctxs``, read by :mod:`focuslens.tasks.loaders` (HELMET by default; pass
  ``fmt="lost_in_the_middle"`` for the retrieval files of Liu et al.).

Every error names the file and the line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from focuslens.prompts.spans import LabeledPrompt, assemble

FORMATS = ("auto", "documents", "labeled", "helmet", "lost_in_the_middle")
"""Accepted values of ``fmt``."""


def _record(prompt: LabeledPrompt) -> dict[str, Any]:
    layout = prompt.layout()
    meta = {k: v for k, v in prompt.meta.items() if _jsonable(v)}
    if layout is not None:
        return {
            **layout,
            "answers": list(prompt.answers),
            "response": prompt.response,
            "meta": meta,
        }
    return {
        "text": prompt.text,
        "relevant": None if prompt.relevant is None else list(prompt.relevant),
        "distractors": [list(s) for s in prompt.distractors],
        "answers": list(prompt.answers),
        "response": prompt.response,
        "meta": meta,
        "spans": {name: [list(s) for s in spans] for name, spans in prompt.spans.items()},
    }


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def write_prompts(prompts: Sequence[LabeledPrompt], path: str | Path) -> Path:
    """Write prompts as JSONL, one per line (``documents`` form when possible).

    Prompts built from documents keep their layout (so their variants can be rebuilt),
    unless a chat template wrapped them (a function cannot be stored): those, and
    prompts made from plain text, are written in the ``labeled`` form. ``meta`` values
    that are not JSON are left out.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for prompt in prompts:
            f.write(json.dumps(_record(prompt)) + "\n")
    return path


def detect_format(record: dict[str, Any]) -> str:
    """``"documents"``, ``"labeled"`` or ``"helmet"`` from a record's keys."""
    if "bodies" in record:
        return "documents"
    if "text" in record and "relevant" in record:
        return "labeled"
    if "ctxs" in record:
        return "helmet"
    raise ValueError(
        f"unknown prompt record with keys {sorted(record)}; expected the 'documents' form "
        "(bodies, prefixes, gold_index, ...), the 'labeled' form (text, relevant, "
        "distractors, answers) or a QA record (question, answers, ctxs)"
    )


def _from_documents(r: dict[str, Any]) -> LabeledPrompt:
    need = ["bodies", "prefixes", "answers"]
    missing = [k for k in need if k not in r]
    if missing:
        raise ValueError(f"missing fields {missing}")
    return assemble(
        header=r.get("header", ""),
        prefixes=r["prefixes"],
        bodies=r["bodies"],
        gold_index=r.get("gold_index"),
        footer=r.get("footer", ""),
        answers=r["answers"],
        separator=r.get("separator", "\n"),
        prefix_format=r.get("prefix_format"),
        response=r.get("response"),
        meta=r.get("meta") or {},
        named=[tuple(n) for n in r.get("named") or []],
    )


def _from_labeled(r: dict[str, Any]) -> LabeledPrompt:
    missing = [k for k in ("text", "answers") if k not in r]
    if missing:
        raise ValueError(f"missing fields {missing}")
    return LabeledPrompt(
        text=r["text"],
        relevant=None if r.get("relevant") is None else tuple(r["relevant"]),
        distractors=[tuple(s) for s in r.get("distractors", [])],
        answers=r["answers"],
        response=r.get("response"),
        meta=r.get("meta") or {},
        spans={k: [tuple(s) for s in v] for k, v in (r.get("spans") or {}).items()},
    )


def read_prompts(path: str | Path, fmt: str = "auto", *, limit: int | None = None) -> list:
    """Read labelled prompts from a JSONL file (see the module docstring for formats).

    Args:
        path: The ``.jsonl`` (or ``.jsonl.gz``) file.
        fmt: One of :data:`FORMATS`; ``"auto"`` detects from the first record.
        limit: Read at most this many prompts.

    Raises:
        ValueError: For an unreadable file or a malformed record, naming the line.
        FileNotFoundError: When the file does not exist.
    """
    from focuslens.tasks.loaders import load_helmet, load_lost_in_the_middle, read_jsonl

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"prompt file {path} is a folder; give a .jsonl file")
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int, got {limit!r}")
    records = read_jsonl(path)
    if fmt == "auto":
        first = next(records, None)
        if first is None:
            raise ValueError(f"{path} holds no prompts (empty file)")
        line, record = first
        try:
            fmt = detect_format(record)
        except ValueError as exc:
            raise ValueError(f"{path}, line {line}: {exc}") from None
        records = _chain([first], records)
    if fmt == "helmet":
        return load_helmet(path, limit=limit)
    if fmt == "lost_in_the_middle":
        return load_lost_in_the_middle(path, limit=limit)
    build = _from_documents if fmt == "documents" else _from_labeled
    prompts = []
    for line, record in records:
        if limit is not None and len(prompts) >= limit:
            break
        try:
            prompts.append(build(record))
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{path}, line {line}: not a valid {fmt!r} prompt: {exc}") from None
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts


def _chain(first: list, rest: Any) -> Any:
    yield from first
    yield from rest


__all__ = [
    "FORMATS",
    "detect_format",
    "read_prompts",
    "write_prompts",
]
