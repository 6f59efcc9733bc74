"""Reproduce the focus-direction results on the demo model (numbers for docs/directions.md).

Learns focus directions on training prompts at ``DISTRACTING_DOCS`` documents, then
evaluates on held-out prompts (other seeds): accuracy and attention allocation for a
sweep of alpha (negative too) and ``alpha="auto"``, on the top-k contextual heads and on
random heads, on prompts whose key is present and on prompts whose key is absent; the
closed-form direction against the learned one. Prints markdown tables and writes JSON.

Run: ``python scripts/repro_directions.py`` (``--model FOLDER`` for another demo model
folder; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

import focuslens
from focuslens.demo import DISTRACTING_DOCS, load_demo_model
from focuslens.heads import random_heads, str_head
from focuslens.learn import direction_cosine
from focuslens.tasks import synthetic_retrieval

ALPHAS: list[Any] = [-0.5, -0.2, 0.0, 0.1, 0.2, 0.3, 0.5, 1.0, "auto"]


def run_condition(model, prompts, directions, heads, alpha) -> dict[str, Any]:
    steering = directions.steering(heads, alpha)
    result = focuslens.evaluate(model, prompts, intervention=steering, heads=heads, progress=False)
    frame = result.to_dataframe()
    row = {"accuracy": result.accuracy, "n": result.n}
    for kind in ("relevant", "distractors", "sink"):
        row[f"attn_{kind}"] = float(frame[f"attn_{kind}"].mean())
    row["mean_alpha"] = float(torch.tensor(steering.history).mean()) if steering.history else None
    row["answers_none"] = float((frame["prediction"].str.strip() == "NONE").mean())
    return row


def sweep(model, present, absent, directions, heads, alphas) -> list[dict[str, Any]]:
    rows = []
    for alpha in alphas:
        start = time.perf_counter()
        p = run_condition(model, present, directions, heads, alpha)
        a = run_condition(model, absent, directions, heads, alpha)
        rows.append(
            {
                "alpha": alpha,
                "present": p,
                "absent": a,
                "seconds": time.perf_counter() - start,
            }
        )
        print(
            f"  alpha={alpha!s:>5}: present acc {p['accuracy']:.3f} (rel {p['attn_relevant']:.3f}, "
            f"dis {p['attn_distractors']:.3f}, sink {p['attn_sink']:.3f}), absent acc "
            f"{a['accuracy']:.3f}, mean alpha {p['mean_alpha']}",
            flush=True,
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| alpha | accuracy (key present) | relevant | distractors | sink | accuracy (key absent) "
        "| mean alpha (present / absent) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p, a = r["present"], r["absent"]
        ma = "" if r["alpha"] != "auto" else f"{p['mean_alpha']:.2f} / {a['mean_alpha']:.2f}"
        lines.append(
            f"| {r['alpha']} | {p['accuracy']:.3f} | {p['attn_relevant']:.3f} | "
            f"{p['attn_distractors']:.3f} | {p['attn_sink']:.3f} | {a['accuracy']:.3f} | {ma} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="demo model folder (default: shipped)")
    parser.add_argument("--docs", type=int, default=DISTRACTING_DOCS)
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--n-absent", type=int, default=100)
    parser.add_argument("--k", type=int, default=2, help="steered heads")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default="repro_directions.json")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.n_train, args.n_test, args.n_absent, args.epochs = 16, 16, 8, 2
    torch.set_num_threads(1)
    model = load_demo_model(args.model)
    d = args.docs
    train = synthetic_retrieval(args.n_train, n_documents=d, seed=0)
    present = synthetic_retrieval(args.n_test, n_documents=d, seed=1)
    absent = synthetic_retrieval(args.n_absent, n_documents=d, absent=1.0, seed=2)
    out: dict[str, Any] = {"docs": d, "n_train": len(train), "n_test": len(present)}

    base = focuslens.evaluate(model, present, progress=False).accuracy
    gold = focuslens.evaluate(model, [p.gold_only() for p in present], progress=False).accuracy
    out["baseline"], out["gold_only"] = base, gold
    print(f"baseline accuracy {base:.3f}, gold-only {gold:.3f} ({d} documents)")

    scores = focuslens.contextual_scores(model, train)
    top = scores.top_heads(args.k)
    rand = random_heads(model, args.k, seed=0, exclude=top)
    out["top_heads"] = [str_head(h) for h in top]
    out["random_heads"] = [str_head(h) for h in rand]
    out["relevant_scores"] = scores.relevant.tolist()
    print(f"top heads {out['top_heads']}, random heads {out['random_heads']}")

    start = time.perf_counter()
    learned = focuslens.learn_focus_directions(model, train, epochs=args.epochs, seed=0)
    out["learn_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    closed = focuslens.learn_focus_directions(model, train, method="closed_form")
    out["closed_form_seconds"] = time.perf_counter() - start
    cos = direction_cosine(learned, closed, top)
    out["cosine_top"] = cos.tolist()
    all_heads = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    out["cosine_all"] = direction_cosine(learned, closed, all_heads).tolist()
    out["norms_learned"] = learned.norms()["q"].tolist()
    out["norms_closed"] = closed.norms()["q"].tolist()
    out["loss_history"] = learned.training["loss_history"]
    print(
        f"learned in {out['learn_seconds']:.1f} s; closed form in {out['closed_form_seconds']:.1f} s"
    )
    print(f"cosine learned vs closed form, top heads: {[round(c, 3) for c in out['cosine_top']]}")

    print("top-k heads, learned directions")
    out["top"] = sweep(model, present, absent, learned, top, ALPHAS)
    print("random heads, learned directions")
    out["random"] = sweep(model, present, absent, learned, rand, ALPHAS)
    print("top-k heads, closed-form directions")
    out["closed"] = sweep(model, present, absent, closed, top, ALPHAS)
    Path(args.out).write_text(json.dumps(out, indent=1))
    for name in ("top", "random", "closed"):
        print(f"\n### {name}\n" + table(out[name]))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
