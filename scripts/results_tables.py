"""Markdown tables of ``docs/results.md``, from the measurements they report.

    python scripts/results_tables.py                 # the demo model card's tables
    python scripts/results_tables.py --run RUN_DIR   # also a `focuslens demo` run folder's

The card tables come from ``focuslens/demo/measurements.json`` (written by
``python -m focuslens.demo.card``); ``tests/test_docs.py`` checks that ``docs/results.md``
contains them exactly as this script prints them. The run tables come from a run
folder's ``evals.jsonl`` (what ``focuslens demo`` wrote), with 95 % Wilson intervals.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEASUREMENTS = ROOT / "focuslens" / "demo" / "measurements.json"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def accuracy_table(m: dict) -> str:
    """Accuracy against the number of documents (present, absent and similar keys)."""
    rows = [
        [
            str(r["n_documents"]),
            str(r["n_tokens"]),
            f"{r['present']:.2f}",
            f"{r['present_none']:.2f}",
            f"{r['absent']:.2f}",
            f"{r['similar']:.2f}",
        ]
        for r in m["accuracy"]
    ]
    header = ["documents", "tokens", "key present", "answered NONE", "key absent", "similar keys"]
    return _table(header, rows)


def position_table(m: dict) -> str:
    """Accuracy by position of the relevant document."""
    rows = [[r["gold_position"], f"{r['accuracy']:.2f}"] for r in m["by_gold_position"]]
    return _table(["relevant document", "accuracy"], rows)


def heads_table(m: dict) -> str:
    """Contextual scores per head at the distracting length and at 4 documents."""
    at_4 = {(r["layer"], r["head"]): r for r in m["heads_4"]}
    n = m["settings"]["distracting_docs"]
    rows = []
    for r in m["heads"]["response"]:
        four = at_4[(r["layer"], r["head"])]
        rows.append(
            [
                f"L{r['layer']}H{r['head']}",
                f"{four['relevant']:.2f}",
                f"{r['relevant']:.2f}",
                f"{r['distractors']:.2f}",
                f"{r['sink']:.2f}",
                f"{r['gold_only_relevant']:.2f}",
            ]
        )
    header = [
        "head",
        "relevant, 4 documents",
        f"relevant, {n} documents",
        f"distractors, {n} documents",
        f"sink, {n} documents",
        "relevant, gold only",
    ]
    return _table(header, rows)


def criteria_table(m: dict) -> str:
    """The demo model against its acceptance criteria (``focuslens.demo.card.criteria``)."""
    from focuslens.demo.card import criteria

    rows = [
        [c["criterion"], f"{c['value']:+.3f}", c["target"], "yes" if c["holds"] else "**no**"]
        for c in criteria(m)
    ]
    return _table(["criterion", "measured", "target", "holds"], rows)


def card_tables(m: dict | None = None) -> dict[str, str]:
    from focuslens.demo.card import method_md

    m = m if m is not None else json.loads(MEASUREMENTS.read_text())
    return {
        "accuracy": accuracy_table(m),
        "position": position_table(m),
        "heads": heads_table(m),
        "method": method_md(m["method"]),
        "criteria": criteria_table(m),
    }


def run_tables(run_dir: str | Path) -> dict[str, str]:
    """One table per prompt set of a run folder: condition, accuracy, interval, attention."""
    from focuslens.app.run import RunFolder
    from focuslens.app.story import condition_table

    evals = RunFolder(run_dir).evals()
    out = {}
    for data, group in evals.groupby("data", sort=False):
        frame = condition_table(group)
        rows = [
            [
                str(r["condition"]),
                f"{r['accuracy']:.2f}",
                f"[{r['low']:.2f}, {r['high']:.2f}]",
                str(int(r["n"])),
                f"{r['attn_relevant']:.2f}",
                f"{r['attn_distractors']:.2f}",
            ]
            for _, r in frame.iterrows()
        ]
        header = [
            "condition",
            "accuracy",
            "95 % interval",
            "n",
            "attn. relevant",
            "attn. distractors",
        ]
        out[str(data)] = _table(header, rows)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a run folder of `focuslens demo`")
    args = parser.parse_args(argv)
    for name, text in card_tables().items():
        print(f"<!-- card: {name} -->\n{text}\n")
    if args.run:
        for name, text in run_tables(args.run).items():
            print(f"<!-- run: {name} -->\n{text}\n")


if __name__ == "__main__":
    main()
