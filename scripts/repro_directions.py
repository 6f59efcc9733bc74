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
from focuslens.directions.learn import direction_cosine
from focuslens.heads import random_heads, str_head
from focuslens.tasks import synthetic_retrieval

ALPHAS: list[Any] = [-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0, "auto"]


def last_row_allocation(model, prompts, steering, heads) -> dict[str, float]:
    """Mean over prompts and heads of the last prompt token's attention mass (the row
    that predicts the first answer token), measured under the steering, one prompt at a
    time (``auto`` calibrates per prompt)."""
    sums = {"relevant": 0.0, "distractors": 0.0, "sink": 0.0}
    layers = torch.tensor([layer for layer, _ in heads])
    idx = torch.tensor([head for _, head in heads])
    for p in prompts:
        with steering.apply(model, [p]):
            s = focuslens.contextual_scores(model, [p.with_response(None)], query="last")
        for kind in sums:
            sums[kind] += float(s.per_example[kind][0, layers, idx].mean())
    return {f"last_{k}": v / len(prompts) for k, v in sums.items()}


def run_condition(model, prompts, directions, heads, alpha, measure=True) -> dict[str, Any]:
    steering = directions.steering(heads, alpha)
    result = focuslens.evaluate(
        model, prompts, intervention=steering, heads=heads if measure else None, progress=False
    )
    frame = result.to_dataframe()
    row: dict[str, Any] = {"accuracy": result.accuracy, "n": result.n}
    row["mean_alpha"] = float(torch.tensor(steering.history).mean()) if steering.history else None
    row["answers_none"] = float(frame["prediction"].str.strip().str.endswith("NONE").mean())
    if measure:
        for kind in ("relevant", "distractors", "sink"):
            row[f"attn_{kind}"] = float(frame[f"attn_{kind}"].mean())
        row.update(last_row_allocation(model, prompts, steering, heads))
    return row


def sweep(model, present, absent, directions, heads, alphas, log) -> list[dict[str, Any]]:
    rows = []
    for alpha in alphas:
        start = time.perf_counter()
        p = run_condition(model, present, directions, heads, alpha)
        a = run_condition(model, absent, directions, heads, alpha, measure=False)
        rows.append(
            {"alpha": alpha, "present": p, "absent": a, "seconds": time.perf_counter() - start}
        )
        print(
            f"  alpha={alpha!s:>5}: present acc {p['accuracy']:.3f} (last row: rel "
            f"{p['last_relevant']:.3f}, dis {p['last_distractors']:.3f}, sink {p['last_sink']:.3f}; "
            f"answer rows: rel {p['attn_relevant']:.3f}), NONE {p['answers_none']:.2f}, absent acc "
            f"{a['accuracy']:.3f}, mean alpha {p['mean_alpha']:.3f} / {a['mean_alpha']:.3f}",
            flush=True,
        )
        log(rows)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Accuracy (key present / absent) and the steered heads' attention: on the answer
    rows (relevant / distractors / sink) and on the last prompt row (relevant)."""
    lines = [
        "| alpha | accuracy, key present | relevant | distractors | sink | relevant, last row "
        "| answered NONE | accuracy, key absent | mean alpha (present / absent) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p, a = r["present"], r["absent"]
        ma = "" if r["alpha"] != "auto" else f"{p['mean_alpha']:.2f} / {a['mean_alpha']:.2f}"
        lines.append(
            f"| {r['alpha']} | {p['accuracy']:.2f} | {p['attn_relevant']:.3f} | "
            f"{p['attn_distractors']:.3f} | {p['attn_sink']:.3f} | {p['last_relevant']:.3f} | "
            f"{p['answers_none']:.2f} | {a['accuracy']:.2f} | {ma} |"
        )
    return "\n".join(lines)


SHORT: list[Any] = [-4.0, 0.0, 1.0, 4.0, "auto"]
CLOSED: list[Any] = [-0.3, 0.0, 0.1, 0.3, 1.0, "auto"]
"""The closed form is scaled to a query's norm, so its useful alphas are small."""


def directions_for(model, train, args, method: str, folder: Path):
    """Learn (or reload from an earlier run in the same ``--out`` folder, whatever its
    settings) one kind of directions, timed."""
    path = folder / f"directions_{method}.safetensors"
    if path.is_file():
        return focuslens.FocusDirections.load(path, model), None
    start = time.perf_counter()
    fd = focuslens.learn_focus_directions(
        model, train, epochs=args.epochs, lr=args.lr, seed=0, method=method
    )
    seconds = time.perf_counter() - start
    folder.mkdir(parents=True, exist_ok=True)
    fd.save(path)
    return fd, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="demo model folder (default: shipped)")
    parser.add_argument("--docs", type=int, default=DISTRACTING_DOCS)
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--n-test", type=int, default=120)
    parser.add_argument("--n-absent", type=int, default=60)
    parser.add_argument("--k", type=int, default=3, help="steered heads")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--lr", type=float, default=1e-3, help="AdamW learning rate (with another --out)"
    )
    parser.add_argument(
        "--only-top", action="store_true", help="sweep the learned top-k directions only"
    )
    parser.add_argument("--out", default="repro_directions", help="folder for JSON and directions")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.n_train, args.n_test, args.n_absent, args.epochs = 8, 8, 4, 1
    torch.set_num_threads(1)
    model = load_demo_model(args.model)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    d = args.docs
    train = synthetic_retrieval(args.n_train, n_documents=d, seed=0)
    present = synthetic_retrieval(args.n_test, n_documents=d, seed=1)
    absent = synthetic_retrieval(args.n_absent, n_documents=d, absent=1.0, seed=2)
    out: dict[str, Any] = {"docs": d, "n_train": len(train), "n_test": len(present)}
    out.update(lr=args.lr, epochs=args.epochs)
    out["n_absent"] = len(absent)

    def log(_: Any = None) -> None:
        (folder / "results.json").write_text(json.dumps(out, indent=1))

    gold = focuslens.evaluate(model, [p.gold_only() for p in present], progress=False).accuracy
    out["gold_only"] = gold
    print(f"gold-only accuracy {gold:.3f} ({d} documents)", flush=True)

    scores = focuslens.contextual_scores(model, train)
    top = scores.top_heads(args.k)
    rand = random_heads(model, args.k, seed=0, exclude=top)
    out["top_heads"] = [str_head(h) for h in top]
    out["random_heads"] = [str_head(h) for h in rand]
    out["relevant_scores"] = scores.relevant.tolist()
    print(f"top heads {out['top_heads']}, random heads {out['random_heads']}", flush=True)

    learned, out["learn_seconds"] = directions_for(model, train, args, "learned", folder)
    closed, out["closed_form_seconds"] = directions_for(model, train, args, "closed_form", folder)
    all_heads = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    out["cosine_all"] = direction_cosine(learned, closed, all_heads).tolist()
    out["cosine_top"] = direction_cosine(learned, closed, top).tolist()
    out["norms_learned"] = learned.norms()["q"].tolist()
    out["norms_closed"] = closed.norms()["q"].tolist()
    out["loss_history"] = learned.training["loss_history"]
    out["auto"] = {k: v for k, v in learned.training["auto"].items()}
    print(f"learned in {out['learn_seconds']} s; closed form in {out['closed_form_seconds']} s")
    print(f"cosine learned vs closed form, top heads: {[round(c, 3) for c in out['cosine_top']]}")
    log()

    runs = [("top", learned, top, ALPHAS), ("random", learned, rand, SHORT)]
    runs += [("closed", closed, top, CLOSED)]
    if args.only_top:
        runs = runs[:1]
    for name, fd, heads, alphas in runs:
        print(f"{name}: heads {[str_head(h) for h in heads]}", flush=True)
        out[name] = []
        out[name] = sweep(
            model,
            present,
            absent,
            fd,
            heads,
            alphas,
            lambda rows, n=name: (out.__setitem__(n, rows), log()),
        )
    log()
    for name, *_ in runs:
        print(f"\n### {name}\n" + table(out[name]))
    print(f"\nwrote {folder / 'results.json'}")


if __name__ == "__main__":
    main()
