"""A head study with intervals on the demo model (numbers for docs/head-studies.md).

On prompts at ``DISTRACTING_DOCS`` documents whose key is present, every head is measured
three ways, each with a 95 % bootstrap interval over prompts:

* contextual score: attention mass of the answer rows on the relevant document;
* ablation: change of log p(answer) when the head's output is zeroed, and when it is
  resampled from another prompt of the same length;
* patching: change of log p(answer) when the head's output at the answer rows is taken
  from the gold-only prompt (the relevant document alone).

Then the three top-3 sets and their agreement (Spearman over the 24 heads, Jaccard of the
top-3 sets), and the joint effect of each top-3 set against three random heads, as a
paired difference with its interval. Prints markdown tables and writes JSON.

Run: ``python scripts/head_study.py`` (``--n 128`` prompts by default; ``--quick`` for a
smoke run).
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
from focuslens.heads import HeadScores, bootstrap_ci, jaccard, random_heads, rank_correlation
from focuslens.interventions import joint_patch_effect
from focuslens.interventions.effects import ablation_effects, joint_ablation_effect
from focuslens.tasks import synthetic_retrieval

K = 3
LEVEL = 0.95
N_BOOT = 2000


def head_name(head: tuple[int, int]) -> str:
    return f"L{head[0]}H{head[1]}"


def measure(model: Any, prompts: list, seed: int) -> dict[str, Any]:
    """Every table, interval, top set, agreement and joint effect of the study."""
    scores = focuslens.contextual_scores(model, prompts)
    tables = {
        "contextual score": HeadScores(
            scores.relevant, per_example=scores.per_example["relevant"], name="relevant"
        ),
        "zero ablation": ablation_effects(model, prompts, mode="zero"),
        "resample ablation": ablation_effects(model, prompts, mode="resample"),
        "gold-only patching": focuslens.patch_heads(model, prompts, source="gold_only"),
    }
    # What ranks a head first: most attention; most harm when removed; most help when
    # patched in from the gold-only run.
    sign = {"contextual score": 1, "zero ablation": -1, "resample ablation": -1}
    sign["gold-only patching"] = 1
    out: dict[str, Any] = {"methods": {}}
    for name, table in tables.items():
        low, high = table.ci(LEVEL, n_boot=N_BOOT, seed=seed)
        ranking = HeadScores(sign[name] * table.values)
        top = ranking.top_heads(K)
        out["methods"][name] = {
            "values": table.values.tolist(),
            "low": low.tolist(),
            "high": high.tolist(),
            "top": [list(h) for h in top],
            "sign": sign[name],
        }
    names = list(tables)
    out["spearman"] = {
        f"{a} / {b}": rank_correlation(sign[a] * tables[a].values, sign[b] * tables[b].values)
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    }
    out["jaccard"] = {
        f"{a} / {b}": jaccard(
            [tuple(h) for h in out["methods"][a]["top"]],
            [tuple(h) for h in out["methods"][b]["top"]],
        )
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    }
    control = random_heads(model, K, seed=seed)
    joint: dict[str, Any] = {"random heads": [list(h) for h in control]}
    random_patch = joint_patch_effect(model, prompts, control)
    random_zero = joint_ablation_effect(model, prompts, control)
    for name in names:
        top = [tuple(h) for h in out["methods"][name]["top"]]
        patch = joint_patch_effect(model, prompts, top)
        zero = joint_ablation_effect(model, prompts, top)
        joint[name] = {
            "heads": [list(h) for h in top],
            "patch": _mean_ci(patch, seed),
            "patch minus random": _mean_ci(patch - random_patch, seed),
            "zero": _mean_ci(zero, seed),
            "zero minus random": _mean_ci(zero - random_zero, seed),
        }
    joint["random"] = {"patch": _mean_ci(random_patch, seed), "zero": _mean_ci(random_zero, seed)}
    out["joint"] = joint
    patch = tables["gold-only patching"]
    out["baseline_logprob"] = float(patch.baseline.mean())
    out["gold_only_logprob"] = float(patch.reference.mean())
    return out


def _mean_ci(x: torch.Tensor, seed: int) -> list[float]:
    low, high = bootstrap_ci(x[:, None], level=LEVEL, n_boot=N_BOOT, seed=seed)
    return [float(x.mean()), float(low[0]), float(high[0])]


def render(result: dict[str, Any]) -> str:
    """The markdown tables of docs/head-studies.md."""
    methods = result["methods"]
    names = list(methods)
    lines = [
        "| rank | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for r in range(K):
        cells = []
        for name in names:
            l, h = methods[name]["top"][r]
            v, lo, hi = (methods[name][key][l][h] for key in ("values", "low", "high"))
            cells.append(f"L{l}H{h} {v:.3g} [{lo:.3g}, {hi:.3g}]")
        lines.append(f"| {r + 1} | " + " | ".join(cells) + " |")
    lines += ["", "| methods | Spearman (24 heads) | Jaccard (top 3) |", "|---|---|---|"]
    for pair, rho in result["spearman"].items():
        lines.append(f"| {pair} | {rho:.2f} | {result['jaccard'][pair]:.2f} |")
    joint = result["joint"]
    control = " ".join(head_name(tuple(h)) for h in joint["random heads"])
    lines += [
        "",
        "| top 3 by | heads | patched together | minus random | zeroed together | minus random |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        row = joint[name]
        heads = " ".join(head_name(tuple(h)) for h in row["heads"])
        cells = [
            _fmt(row[key]) for key in ("patch", "patch minus random", "zero", "zero minus random")
        ]
        lines.append(f"| {name} | {heads} | " + " | ".join(cells) + " |")
    random_row = joint["random"]
    lines.append(
        f"| random | {control} | {_fmt(random_row['patch'])} | | {_fmt(random_row['zero'])} | |"
    )
    return "\n".join(lines)


def _fmt(mean_ci: list[float]) -> str:
    m, lo, hi = mean_ci
    return f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128, help="prompts (default 128)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--model", default=None, help="demo model folder (default: shipped)")
    parser.add_argument("--quick", action="store_true", help="8 prompts at 12 documents")
    parser.add_argument("--out", default="head_study.json", help="JSON file to write")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = load_demo_model(args.model) if args.model else load_demo_model()
    n, docs = (8, 12) if args.quick else (args.n, DISTRACTING_DOCS)
    prompts = synthetic_retrieval(n, n_documents=docs, seed=args.seed, absent=0.0)
    start = time.perf_counter()
    result = measure(model, prompts, args.seed)
    result["settings"] = {"n_prompts": n, "n_documents": docs, "seed": args.seed, "level": LEVEL}
    result["seconds"] = round(time.perf_counter() - start, 1)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(render(result))
    print(
        f"\nmean log p(answer): distracted {result['baseline_logprob']:.2f}, gold-only "
        f"{result['gold_only_logprob']:.2f}; {n} prompts, {result['seconds']} s"
    )
    return result


if __name__ == "__main__":
    main()
