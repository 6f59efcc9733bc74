"""Shared test prompts and independent oracles (full attention caches), used across the
test folders."""

from __future__ import annotations

from dataclasses import replace

import torch
from _tiny import labeled_prompts

from focuslens.prompts import LabeledPrompt, tokenize_prompt
from focuslens.scores.result import KINDS


def make_prompts(n: int, seed: int = 0, n_docs: int = 4) -> list[LabeledPrompt]:
    """Prompts of different lengths and gold positions (those of ``labeled_prompts``, with
    the gold answer ``"x"``: the response is teacher-forced, not the answer)."""
    return [replace(p, answers=["x"]) for p in labeled_prompts(n, seed=seed, n_docs=n_docs)]


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
