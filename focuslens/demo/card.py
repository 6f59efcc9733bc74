"""The demo model's measurements and its card (``MODEL_CARD.md``, ``measurements.json``).

:func:`accuracy_table` and :func:`head_table` compute the numbers of the card; the card
writer (``python -m focuslens.demo.card``, also run at the end of ``train.py``) and
``tests/demo/test_demo_model.py`` both call them, so the card's table is what the tests
measure. Accuracy comes from :func:`focuslens.evaluate` (greedy answers, exact match);
head scores from :func:`focuslens.contextual_scores`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from focuslens.tasks import synthetic as syn
from focuslens.tasks.synthetic import synthetic_retrieval

CARD_SEED = 1000
"""Seed of the card's prompts (``seed = CARD_SEED + n_documents``)."""

CARD_N = 300
"""Prompts per cell of the card's table."""

CARD_DOCS = (2, 4, 8, 12, 16, 20, 24, 28, 32, 48, 64)
"""Numbers of documents in the card's table."""

KINDS = ("present", "absent", "similar", "gold_only")
"""Prompt sets per number of documents: present keys, absent keys, present keys with
half the distractors sharing a key word, and the gold-only variants of ``present``."""


def card_prompts(kind: str, n_documents: int, *, n: int = CARD_N, seed: int = CARD_SEED):
    """The card's prompts of one kind (see :data:`KINDS`) at ``n_documents`` documents."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    s = seed + n_documents
    if kind == "absent":
        return synthetic_retrieval(n, n_documents=n_documents, absent=1.0, seed=s)
    if kind == "similar":
        return synthetic_retrieval(n, n_documents=n_documents, similar=0.5, seed=s)
    prompts = synthetic_retrieval(n, n_documents=n_documents, seed=s)
    return [p.gold_only() for p in prompts] if kind == "gold_only" else prompts


def predictions(model, prompts: Sequence) -> pd.DataFrame:
    """Greedy answers with ``prediction``, ``correct`` and ``gold_position`` columns.

    Uses :func:`focuslens.evaluate`; falls back to the batched loop of
    :mod:`focuslens.demo._measure` where that is not available.
    """
    try:
        from focuslens.evaluation.accuracy import evaluate
    except ImportError:  # pragma: no cover - only before focuslens.evaluate existed
        from focuslens.demo._measure import exact_match, greedy_answers

        preds = greedy_answers(model, prompts)
        return pd.DataFrame(
            {
                "prediction": preds,
                "correct": exact_match(preds, prompts),
                "gold_position": [p.gold_position for p in prompts],
            }
        )
    return evaluate(model, prompts, progress=False).to_dataframe()


def accuracy(model, kind: str, n_documents: int, **kwargs: Any) -> float:
    """Exact-match accuracy (0-1) on the card's prompts of one kind."""
    return float(predictions(model, card_prompts(kind, n_documents, **kwargs))["correct"].mean())


def accuracy_table(
    model,
    n_documents: Sequence[int] = CARD_DOCS,
    *,
    kinds: Sequence[str] = ("present", "absent", "similar"),
    n: int = CARD_N,
    seed: int = CARD_SEED,
) -> pd.DataFrame:
    """Accuracy by number of documents.

    Returns:
        One row per number of documents: ``n_documents``, ``n_tokens`` (prompt length
        with BOS), one accuracy column per kind, and ``present_none`` (fraction of
        present-key prompts answered ``NONE``) when ``present`` is measured.
    """
    rows = []
    for nd in n_documents:
        row: dict[str, Any] = {"n_documents": nd, "n_tokens": syn.prompt_length(nd)}
        for kind in kinds:
            frame = predictions(model, card_prompts(kind, nd, n=n, seed=seed))
            row[kind] = float(frame["correct"].mean())
            if kind == "present":
                row["present_none"] = float((frame["prediction"].str.strip() == syn.NONE).mean())
        rows.append(row)
    return pd.DataFrame(rows)


def by_gold_position(
    model, n_documents: int, *, n: int = CARD_N, seed: int = CARD_SEED
) -> pd.DataFrame:
    """Accuracy with the gold document first, in the middle and last (present keys)."""
    rows = []
    for where in ("first", "middle", "last"):
        prompts = synthetic_retrieval(
            n, n_documents=n_documents, gold_position=where, seed=seed + n_documents
        )
        acc = float(predictions(model, prompts)["correct"].mean())
        rows.append({"gold_position": where, "accuracy": acc})
    return pd.DataFrame(rows)


def head_table(
    model, n_documents: int, *, n: int = 100, seed: int = CARD_SEED, query: str = "response"
) -> pd.DataFrame:
    """Per-head attention of the teacher-forced answer rows (present keys).

    Returns:
        One row per head: ``layer``, ``head``, ``relevant`` (mass on the gold
        document), ``distractors`` (on all distractors together), ``per_distractor``
        (that divided by ``n_documents - 1``), ``sink`` (positions 0-1: BOS and
        ``[DOC``) and ``gold_only_relevant`` (mass on the document of the gold-only
        prompt); sorted by ``relevant``, best first.
    """
    from focuslens.scores.contextual import contextual_scores

    prompts = synthetic_retrieval(n, n_documents=n_documents, seed=seed + n_documents)
    scores = contextual_scores(model, prompts, query=query, sink=2)
    gold = contextual_scores(model, [p.gold_only() for p in prompts], query=query, sink=2)
    rows = []
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            dis = float(scores.distractors[layer, head])
            rows.append(
                {
                    "layer": layer,
                    "head": head,
                    "relevant": float(scores.relevant[layer, head]),
                    "distractors": dis,
                    "per_distractor": dis / max(1, n_documents - 1),
                    "sink": float(scores.sink[layer, head]),
                    "gold_only_relevant": float(gold.relevant[layer, head]),
                }
            )
    return pd.DataFrame(rows).sort_values("relevant", ascending=False, ignore_index=True)


def measure(model, distracting_docs: int, *, n: int = CARD_N) -> dict[str, Any]:
    """Every number of the card, as plain data (saved as ``measurements.json``)."""
    table = accuracy_table(model, n=n)
    gold_only = {nd: accuracy(model, "gold_only", nd, n=n) for nd in (4, distracting_docs)}
    n_heads = min(n, 100)
    heads = {
        query: head_table(model, distracting_docs, n=n_heads, query=query).to_dict("records")
        for query in ("response", "predict")
    }
    return {
        "settings": {"n": n, "seed": CARD_SEED, "distracting_docs": distracting_docs},
        "accuracy": table.to_dict("records"),
        "gold_only": {str(k): v for k, v in gold_only.items()},
        "by_gold_position": by_gold_position(model, distracting_docs, n=n).to_dict("records"),
        "heads_4": head_table(model, 4, n=n_heads).to_dict("records"),
        "heads": heads,
    }


def _md(frame: pd.DataFrame, floatfmt: str = ".2f") -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    columns = [frame[c].tolist() for c in cols]  # per column, so ints stay ints
    for row in zip(*columns):
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _heads_md(records: list[dict]) -> str:
    frame = pd.DataFrame(records)[
        ["layer", "head", "relevant", "per_distractor", "distractors", "sink", "gold_only_relevant"]
    ]
    return _md(frame)


def render(folder: Path, m: dict[str, Any]) -> str:
    """The text of ``MODEL_CARD.md`` from the training record and the measurements."""
    from focuslens.demo._card_text import render_card

    training = json.loads((Path(folder) / "training.json").read_text())
    config = json.loads((Path(folder) / "config.json").read_text())
    acc = pd.DataFrame(m["accuracy"])
    return render_card(
        config=config,
        training=training,
        measurements=m,
        accuracy_md=_md(acc),
        heads_md=_heads_md(m["heads"]["response"]),
        heads_predict_md=_heads_md(m["heads"]["predict"]),
        heads_4_md=_heads_md(m["heads_4"]),
        by_position_md=_md(pd.DataFrame(m["by_gold_position"])),
    )


def write_card(
    folder: str | Path | None = None, *, n: int = CARD_N, remeasure: bool = True
) -> dict[str, Any]:
    """Measure the model in ``folder`` and write ``measurements.json`` and ``MODEL_CARD.md``.

    Args:
        folder: The model's folder (default: the shipped model).
        n: Prompts per cell (the shipped card uses :data:`CARD_N`).
        remeasure: False: only re-render the card from the saved ``measurements.json``.
    """
    from focuslens.demo import DEMO_DIR, DISTRACTING_DOCS, load_demo_model

    folder = Path(folder) if folder is not None else DEMO_DIR
    if remeasure:
        m = measure(load_demo_model(folder), DISTRACTING_DOCS, n=n)
        (folder / "measurements.json").write_text(json.dumps(m, indent=1) + "\n")
    else:
        m = json.loads((folder / "measurements.json").read_text())
    (folder / "MODEL_CARD.md").write_text(render(folder, m))
    return m


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Measure the demo model and write its card.")
    parser.add_argument("folder", nargs="?", default=None)
    parser.add_argument("--n", type=int, default=CARD_N, help="prompts per cell")
    parser.add_argument(
        "--render-only", action="store_true", help="re-render from measurements.json"
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # one prompt at a time: one thread is fastest, busy or not
    write_card(args.folder, n=args.n, remeasure=not args.render_only)
