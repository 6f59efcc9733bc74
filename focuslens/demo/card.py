"""The demo model's measurements and its card (``MODEL_CARD.md``, ``measurements.json``).

:func:`accuracy_table` and :func:`head_table` compute the numbers of the card; the card
writer (``python -m focuslens.demo.card``, also run at the end of ``train.py``) and
``tests/demo/test_demo_model.py`` both call them, so the card's table is what the tests
measure. Accuracy comes from :func:`focuslens.evaluate` (greedy answers, exact match);
head scores from :func:`focuslens.contextual_scores`.
"""

from __future__ import annotations

import json
import math
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

CARD_DOCS = (2, 4, 8, 12, 16, 24, 32, 40, 48, 56, 64)
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


def answered_none(frame: pd.DataFrame) -> float:
    """Fraction of the answers in ``frame`` (a :func:`predictions` table) that say the key
    is absent: they end with ``NONE`` (after the echoed key)."""
    return float(frame["prediction"].str.strip().str.endswith(syn.NONE).mean())


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
                row["present_none"] = answered_none(frame)
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


CARD_ALPHAS: tuple[float | str, ...] = (-4.0, -2.0, -1.0, 1.0, 2.0, 4.0, 8.0, 16.0, "auto")
"""Steering strengths of the card's method table."""

CARD_RANDOM_SETS = 3
"""Random head sets per control (their accuracies are pooled)."""


def card_k(model) -> int:
    """The top 10% of the model's heads, rounded up (3 of the demo model's 24)."""
    return max(1, math.ceil(0.1 * model.cfg.n_layers * model.cfg.n_heads))


def _cell(frame: pd.DataFrame) -> dict[str, Any]:
    """Accuracy, its Wilson interval, n and the fraction of answers ending in ``NONE``."""
    from focuslens.evaluation.curves import wilson_interval

    acc, n = float(frame["correct"].mean()), len(frame)
    lo, hi = wilson_interval(acc, n)
    none = answered_none(frame)
    return {"accuracy": acc, "lo": lo, "hi": hi, "n": n, "none": none}


def method_table(
    model,
    n_documents: int,
    *,
    n: int = CARD_N,
    n_train: int = 100,
    seed: int = CARD_SEED,
    similar: float = 0.0,
    alphas: Sequence[float | str] = CARD_ALPHAS,
    n_random: int = CARD_RANDOM_SETS,
    directions: bool = True,
) -> dict[str, Any]:
    """The method on the demo model, with its controls, on held-out prompts.

    The top heads (:func:`card_k` of them) are ranked by their contextual score
    (``query="response"``) on ``n_train`` training prompts; focus directions are learned
    on the same prompts with :func:`focuslens.learn_focus_directions`'s defaults. The
    test prompts (``n`` present keys, ``n`` absent keys) use other seeds.

    Returns:
        ``top`` (heads), ``top_share`` (their share of the summed relevant-span mass),
        ``random`` (the random head sets, disjoint from ``top``), and ``rows``: one row
        per condition (``condition``, ``heads``, ``setting``, ``prompts`` ("present",
        "absent", "gold_only"), then :func:`_cell`'s accuracy, Wilson interval, n and
        NONE fraction). Random-head rows pool their ``n_random`` sets.
    """
    from focuslens.directions.learn import learn_focus_directions
    from focuslens.evaluation.accuracy import evaluate
    from focuslens.heads.ranking import random_heads, top_k
    from focuslens.interventions.oracles import SplitSoftmax
    from focuslens.scores.contextual import contextual_scores

    nd = n_documents
    train = synthetic_retrieval(n_train, n_documents=nd, seed=seed + 2000 + nd, similar=similar)
    test = synthetic_retrieval(n, n_documents=nd, seed=seed + 3000 + nd, similar=similar)
    absent = synthetic_retrieval(n, n_documents=nd, absent=1.0, seed=seed + 4000 + nd)
    sets = {"present": test, "absent": absent, "gold_only": [p.gold_only() for p in test]}
    k = card_k(model)
    scores = contextual_scores(model, train, query="response", sink=2)
    top = top_k(scores, k)
    rel = scores.relevant.flatten().clamp(min=0)
    share = float(sum(scores.relevant[h] for h in top) / rel.sum())
    randoms = [random_heads(model, k, seed=i, exclude=top) for i in range(n_random)]
    rows: list[dict[str, Any]] = []

    head_sets = {"": [None], "top": [top], "random": randoms}

    def run(condition, name, setting, make, prompts="present"):
        frames, alphas = [], []
        for h in head_sets[name]:
            intervention = make(h)
            result = evaluate(model, sets[prompts], intervention=intervention, progress=False)
            frames.append(result.to_dataframe())
            alphas += list(getattr(intervention, "history", []))
        cell = _cell(pd.concat(frames))
        if setting == "alpha=auto":  # the alphas the rule chose, one per prompt
            cell["mean_alpha"] = sum(alphas) / len(alphas)
        rows.append(
            {"condition": condition, "heads": name, "setting": setting, "prompts": prompts, **cell}
        )
        return cell

    for prompts in ("present", "absent", "gold_only"):
        run("baseline", "", "", lambda h: None, prompts)
    for name in ("top", "random"):
        run("split_softmax", name, "tau=0.1", lambda h: SplitSoftmax(h, tau=0.1))
    best: tuple[float, Any] = (-1.0, None)
    if directions:
        learned = list(top) + [h for r in randoms for h in r if h not in top]
        fd = learn_focus_directions(model, train, heads=learned)
        for alpha in alphas:
            cell = run("steering", "top", f"alpha={alpha}", lambda h, a=alpha: fd.steering(h, a))
            if alpha != "auto" and float(alpha) > 0 and cell["accuracy"] > best[0]:
                best = (cell["accuracy"], alpha)
        for alpha in [best[1], "auto"]:
            run("steering", "random", f"alpha={alpha}", lambda h, a=alpha: fd.steering(h, a))
            run(
                "steering",
                "top",
                f"alpha={alpha}",
                lambda h, a=alpha: fd.steering(h, a),
                "absent",
            )
    return {
        "n_documents": nd,
        "similar": similar,
        "top": [list(h) for h in top],
        "top_share": share,
        "random": [[list(h) for h in r] for r in randoms],
        "best_alpha": best[1],
        "rows": rows,
    }


CARD_EXTRA: tuple[tuple[int, float], ...] = ((32, 0.0), (48, 0.0), (40, 0.5))
"""``(n_documents, similar)`` of the card's smaller method tables (other lengths, similar
distractors), run with half the prompts and :data:`EXTRA_ALPHAS`."""

EXTRA_ALPHAS: tuple[float | str, ...] = (-4.0, -1.0, 2.0, 4.0, "auto")

PARTS = ("accuracy", "heads", "method", "extra")
"""The card's measurements, computed separately (``python -m focuslens.demo.card --parts``)."""


def measure(
    model, distracting_docs: int, *, n: int = CARD_N, parts: Sequence[str] = PARTS
) -> dict[str, Any]:
    """The card's numbers, as plain data (saved as ``measurements.json``).

    ``parts`` selects what to measure (see :data:`PARTS`); the card needs all of them.
    """
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown parts {unknown}; choose among {PARTS}")
    m: dict[str, Any] = {
        "settings": {"n": n, "seed": CARD_SEED, "distracting_docs": distracting_docs}
    }
    if "accuracy" in parts:
        m["accuracy"] = accuracy_table(model, n=n).to_dict("records")
        m["gold_only"] = {
            str(nd): accuracy(model, "gold_only", nd, n=n) for nd in (4, distracting_docs)
        }
        m["by_gold_position"] = by_gold_position(model, distracting_docs, n=n).to_dict("records")
    if "heads" in parts:
        n_heads = min(n, 100)
        m["heads_4"] = head_table(model, 4, n=n_heads).to_dict("records")
        m["heads"] = {
            query: head_table(model, distracting_docs, n=n_heads, query=query).to_dict("records")
            for query in ("response", "predict")
        }
    if "method" in parts:
        m["method"] = method_table(model, distracting_docs, n=n)
    if "extra" in parts:
        m["method_extra"] = [
            method_table(model, nd, n=n // 2, similar=sim, alphas=EXTRA_ALPHAS)
            for nd, sim in CARD_EXTRA
        ]
    return m


def _row(
    table: dict[str, Any],
    condition: str,
    heads: str = "",
    setting: str = "",
    prompts: str = "present",
) -> dict[str, Any]:
    for row in table["rows"]:
        if (row["condition"], row["heads"], row["setting"], row["prompts"]) == (
            condition,
            heads,
            setting,
            prompts,
        ):
            return row
    raise KeyError(f"no row {condition}/{heads}/{setting}/{prompts} in the method table")


def criteria(m: dict[str, Any]) -> list[dict[str, Any]]:
    """The acceptance criteria of the demo model (issue 13), evaluated on the card's numbers.

    Returns:
        One dict per criterion: ``criterion`` (text), ``value``, ``target`` (text) and
        ``holds`` (bool).
    """
    dd = m["settings"]["distracting_docs"]
    rows = {r["n_documents"]: r for r in m["accuracy"]}
    t = m["method"]
    base = _row(t, "baseline")["accuracy"]
    absent = _row(t, "baseline", prompts="absent")["accuracy"]
    best = t["best_alpha"]
    steer = lambda heads, alpha, prompts="present": _row(  # noqa: E731
        t, "steering", heads, f"alpha={alpha}", prompts
    )["accuracy"]
    ss_top = _row(t, "split_softmax", "top", "tau=0.1")["accuracy"]
    ss_random = _row(t, "split_softmax", "random", "tau=0.1")["accuracy"]
    out = [
        ("accuracy at 4 documents", rows[4]["present"], ">= 0.95", rows[4]["present"] >= 0.95),
        (f"accuracy at {dd} documents", base, "0.3-0.7", 0.3 <= base <= 0.7),
        (
            f"gold-only accuracy at {dd}",
            _row(t, "baseline", prompts="gold_only")["accuracy"],
            ">= 0.9",
            None,
        ),
        (
            "top 10% of heads' share of relevant mass",
            t["top_share"],
            ">= 0.50",
            t["top_share"] >= 0.5,
        ),
        ("split-softmax top - baseline", ss_top - base, ">= +0.15", ss_top - base >= 0.15),
        ("split-softmax top - random", ss_top - ss_random, ">= +0.10", ss_top - ss_random >= 0.10),
        (
            f"directions, best alpha ({best}) - baseline",
            steer("top", best) - base,
            ">= +0.08",
            None,
        ),
        ("directions, alpha -1 - baseline", steer("top", -1.0) - base, "<= -0.05", None),
        (
            "same directions on random heads - baseline",
            steer("random", best) - base,
            "<= +0.03",
            None,
        ),
        ("directions, auto - baseline", steer("top", "auto") - base, ">= +0.05", None),
        (
            "absent keys under auto - baseline",
            steer("top", "auto", "absent") - absent,
            ">= -0.05",
            None,
        ),
    ]
    checks = {
        2: lambda v: v >= 0.9,
        6: lambda v: v >= 0.08,
        7: lambda v: v <= -0.05,
        8: lambda v: v <= 0.03,
        9: lambda v: v >= 0.05,
        10: lambda v: v >= -0.05,
    }
    return [
        {
            "criterion": c,
            "value": v,
            "target": target,
            "holds": bool(checks[i](v) if holds is None else holds),
        }
        for i, (c, v, target, holds) in enumerate(out)
    ]


def method_md(table: dict[str, Any]) -> str:
    """A method table (:func:`method_table`) as markdown, with 95% Wilson intervals."""
    lines = [
        "| condition | heads | setting | prompts | accuracy | 95% interval | n | answered NONE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table["rows"]:
        lines.append(
            f"| {r['condition']} | {r['heads'] or '-'} | {r['setting'] or '-'} | {r['prompts']} "
            f"| {r['accuracy']:.2f} | {r['lo']:.2f}-{r['hi']:.2f} | {r['n']} | {r['none']:.2f} |"
        )
    return "\n".join(lines)


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


def _method_numbers(t: dict[str, Any]) -> dict[str, Any]:
    """The method table's numbers that the card's prose quotes."""
    baseline = _row(t, "baseline")
    worst_alpha = min(a for a in CARD_ALPHAS if a != "auto")
    return {
        "base": baseline["accuracy"],
        "base_lo": baseline["lo"],
        "base_hi": baseline["hi"],
        "ss_top": _row(t, "split_softmax", "top", "tau=0.1")["accuracy"],
        "ss_random": _row(t, "split_softmax", "random", "tau=0.1")["accuracy"],
        "best_acc": _row(t, "steering", "top", f"alpha={t['best_alpha']}")["accuracy"],
        "worst_alpha": worst_alpha,
        "worst_acc": _row(t, "steering", "top", f"alpha={worst_alpha}")["accuracy"],
        "base_absent": _row(t, "baseline", prompts="absent")["accuracy"],
        "auto": _row(t, "steering", "top", "alpha=auto"),
        "auto_absent": _row(t, "steering", "top", "alpha=auto", "absent"),
    }


def render(folder: Path, m: dict[str, Any]) -> str:
    """The text of ``MODEL_CARD.md`` from the training record and the measurements."""
    from focuslens.demo._card_text import render_card

    training = json.loads((Path(folder) / "training.json").read_text())
    config = json.loads((Path(folder) / "config.json").read_text())
    acc = pd.DataFrame(m["accuracy"])
    crit = pd.DataFrame(criteria(m))
    crit["holds"] = crit["holds"].map({True: "yes", False: "**no**"})
    extra = [
        (
            f"{t['n_documents']} documents"
            + (f", similar={t['similar']}" if t["similar"] else "")
            + f" (top heads {', '.join(f'L{a}H{b}' for a, b in t['top'])},"
            f" share {t['top_share']:.0%})",
            method_md(t),
        )
        for t in m["method_extra"]
    ]
    return render_card(
        config=config,
        training=training,
        measurements=m,
        accuracy_md=_md(acc),
        heads_md=_heads_md(m["heads"]["response"]),
        heads_predict_md=_heads_md(m["heads"]["predict"]),
        heads_4_md=_heads_md(m["heads_4"]),
        by_position_md=_md(pd.DataFrame(m["by_gold_position"])),
        method_md=method_md(m["method"]),
        method_numbers=_method_numbers(m["method"]),
        extra_md=extra,
        criteria_md=_md(crit, floatfmt="+.3f"),
    )


def write_card(
    folder: str | Path | None = None,
    *,
    n: int = CARD_N,
    remeasure: bool = True,
    parts: Sequence[str] = PARTS,
) -> dict[str, Any]:
    """Measure the model in ``folder`` and write ``measurements.json`` and ``MODEL_CARD.md``.

    Args:
        folder: The model's folder (default: the shipped model).
        n: Prompts per cell (the shipped card uses :data:`CARD_N`).
        remeasure: False: only re-render the card from the saved ``measurements.json``.
        parts: Measure only these (see :data:`PARTS`); the others are kept from the saved
            ``measurements.json``, and the card is rendered once every part is there.
    """
    from focuslens.demo import DEMO_DIR, DISTRACTING_DOCS, load_demo_model

    folder = Path(folder) if folder is not None else DEMO_DIR
    saved = folder / "measurements.json"
    m = json.loads(saved.read_text()) if saved.is_file() else {}
    if remeasure:
        if m.get("settings", {}).get("distracting_docs") != DISTRACTING_DOCS:
            m = {}
        m.update(measure(load_demo_model(folder), DISTRACTING_DOCS, n=n, parts=parts))
        saved.write_text(json.dumps(m, indent=1) + "\n")
    if all(k in m for k in ("accuracy", "heads", "method", "method_extra")):
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
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}"
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # one prompt at a time: one thread is fastest, busy or not
    write_card(args.folder, n=args.n, remeasure=not args.render_only, parts=args.parts.split(","))
