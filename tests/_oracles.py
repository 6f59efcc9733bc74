"""Shared test prompts and independent oracles (full attention caches), used across the
test folders."""

from __future__ import annotations

import torch
from _tiny import random_text

from focuslens.prompts import LabeledPrompt, tokenize_prompt
from focuslens.scores.result import KINDS


def make_prompts(n: int, seed: int = 0, n_docs: int = 4) -> list[LabeledPrompt]:
    """Prompts of different lengths and gold positions."""
    rng = torch.Generator().manual_seed(seed)
    prompts = []
    for i in range(n):
        docs = [("w1", random_text(rng, 2 + (i + d) % 5)) for d in range(n_docs + i % 3)]
        gold = i % len(docs)
        response = random_text(rng, 1 + i % 3)
        prompts.append(
            LabeledPrompt.from_documents(
                "w7 w8", docs, gold, ["x"], instruction="w9 w10", response=response
            )
        )
    return prompts


def naive_scores(model, prompts, query="response", sink=2):
    """The oracle: one unbatched run_with_cache per prompt, sums over the full patterns."""
    out = {k: [] for k in KINDS}
    for p in prompts:
        tp = tokenize_prompt(model, p)
        _, cache = model.run_with_cache(
            tp.tokens[None], names_filter=lambda n: n.endswith("hook_pattern")
        )
        pattern = torch.stack(
            [cache["pattern", l][0] for l in range(model.cfg.n_layers)]
        )  # l h q k
        if query == "response":
            rows = list(range(tp.n_prompt, len(tp)))
        elif query == "predict":
            rows = list(range(tp.n_prompt - 1, len(tp) - 1))
        else:
            rows = [tp.n_prompt - 1]
        a = pattern[:, :, rows, :]
        rel = a[..., tp.relevant[0] : tp.relevant[1]].sum(-1).mean(-1)
        dis = torch.stack([a[..., s:e].sum(-1).mean(-1) for s, e in tp.distractors])
        snk = a[..., :sink].sum(-1).mean(-1)
        out["relevant"].append(rel)
        out["distractors"].append(dis.sum(0))
        out["distractor_max"].append(dis.max(0).values)
        out["sink"].append(snk)
        out["other"].append(1 - rel - dis.sum(0) - snk)
    return {k: torch.stack(v) for k, v in out.items()}
