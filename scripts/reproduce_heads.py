"""Reproduce the contextual-heads experiments of ``docs/heads.md`` on the demo model.

    python scripts/reproduce_heads.py                  # the shipped demo model
    python scripts/reproduce_heads.py --model DIR      # another demo-model folder
    python scripts/reproduce_heads.py --n 200 --json out.json

Prints markdown tables: contextual and retrieval scores per head, ablation and
attribution effects, and the split-softmax experiment (baseline, gold-only, top-k,
random-k, all heads) at ``focuslens.demo.DISTRACTING_DOCS`` documents. Heads are chosen
on prompts of another seed than the evaluation prompts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def table(values: torch.Tensor, fmt: str = "{:+.3f}") -> str:
    n_layers, n_heads = values.shape
    lines = ["| layer | " + " | ".join(f"H{h}" for h in range(n_heads)) + " |"]
    lines.append("|---" * (n_heads + 1) + "|")
    for l in range(n_layers):
        cells = " | ".join(fmt.format(float(v)) for v in values[l])
        lines.append(f"| L{l} | {cells} |")
    return "\n".join(lines)


def md(frame) -> str:
    """A DataFrame as a markdown table (floats with 3 decimals)."""

    def cell(v) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|---" * len(frame.columns) + "|"]
    lines += [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="demo-model folder (default: shipped)")
    parser.add_argument("--n", type=int, default=200, help="evaluation prompts")
    parser.add_argument("--n-select", type=int, default=100, help="head-selection prompts")
    parser.add_argument("--ks", default="1,2,4")
    parser.add_argument("--taus", default="0.1,0.5,2.0")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import focuslens
    from focuslens.demo import DISTRACTING_DOCS, load_demo_model
    from focuslens.heads import rank_correlation, top_k
    from focuslens.interventions import Pasta
    from focuslens.interventions.effects import ablation_effects, attribution_patching
    from focuslens.tasks import synthetic_retrieval

    torch.manual_seed(0)
    model = load_demo_model(args.model)
    n_docs = DISTRACTING_DOCS
    select = synthetic_retrieval(args.n_select, n_documents=n_docs, seed=101)
    prompts = synthetic_retrieval(args.n, n_documents=n_docs, seed=202)
    start = time.perf_counter()
    out: dict = {"n_documents": n_docs, "n": args.n, "n_select": args.n_select}

    scores = focuslens.contextual_scores(model, select)
    retrieval = focuslens.retrieval_scores(model, select)
    print(f"## Demo model at {n_docs} documents\n")
    print("Contextual score (mass of the answer rows on the relevant document):\n")
    print(table(scores.relevant, "{:.3f}"))
    print("\nRetrieval-head score (Wu et al. 2024):\n")
    print(table(retrieval.values, "{:.3f}"))
    rho_ret = rank_correlation(scores, retrieval)
    print(f"\nSpearman(contextual, retrieval) = {rho_ret:.2f}")

    zero = ablation_effects(model, select, mode="zero", target="response")
    mean = ablation_effects(model, select, mode="mean", target="response")
    attr = attribution_patching(model, select, mode="zero", target="response")
    attr_mean = attribution_patching(model, select, mode="mean", target="response")
    print("\nZero-ablation effect on log p(answer) (nats; negative = the head helps):\n")
    print(table(zero.values))
    print("\nMean-ablation effect:\n")
    print(table(mean.values))
    print("\nAttribution patching (zero), one forward + backward:\n")
    print(table(attr.values))
    print("\nAttribution patching (mean):\n")
    print(table(attr_mean.values))
    corr = {
        "attribution_vs_zero_spearman": rank_correlation(zero, attr),
        "attribution_vs_zero_kendall": rank_correlation(zero, attr, method="kendall"),
        "contextual_vs_zero_spearman": rank_correlation(scores.relevant, -zero.values),
        "attribution_vs_mean_spearman": rank_correlation(mean, attr_mean),
        "last_layer_attribution_vs_zero_spearman": rank_correlation(
            zero.values[-1:], attr.values[-1:]
        ),
        "zero_vs_mean_spearman": rank_correlation(zero, mean),
    }
    for name, value in corr.items():
        print(f"{name} = {value:.2f}")

    ks = [int(k) for k in args.ks.split(",")]
    taus = [float(t) for t in args.taus.split(",")]
    exp = focuslens.contextual_head_experiment(
        model, prompts, ks=ks, taus=taus, scores=scores, n_random=3, max_new_tokens=3
    )
    frame = exp.to_dataframe()
    print(
        "\nSplit-softmax experiment (accuracy; attention of the answer tokens in the top "
        f"{max(ks)} contextual heads):\n"
    )
    cols = ["condition", "k", "tau", "seed", "heads", "accuracy", "n", "attn_relevant",
            "attn_distractors", "attn_sink"]  # fmt: skip
    print(md(frame[cols]))
    print("\nPooled over random seeds:\n")
    for tau in taus:
        print(md(exp.curves(tau).assign(tau=tau)))
        print()

    pasta = {}
    for k in ks:
        for alpha in (0.01, 0.1):
            res = focuslens.evaluate(
                model,
                prompts,
                intervention=Pasta(top_k(scores, k), alpha),
                max_new_tokens=3,
                progress=False,
            )
            pasta[f"k={k},alpha={alpha}"] = res.accuracy
    print("PASTA on the top-k heads (accuracy):", json.dumps(pasta))
    out.update(
        relevant=scores.relevant.tolist(),
        retrieval=retrieval.values.tolist(),
        rho_contextual_retrieval=rho_ret,
        zero=zero.values.tolist(),
        mean=mean.values.tolist(),
        attribution=attr.values.tolist(),
        attribution_mean=attr_mean.values.tolist(),
        correlations=corr,
        experiment=frame.to_dict(orient="records"),
        pasta=pasta,
        seconds=time.perf_counter() - start,
    )
    print(f"\n{out['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
