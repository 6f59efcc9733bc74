"""Where the demo model's heads look at the row that decides the answer.

    python scripts/decisive_row.py [--docs N] [--n PROMPTS] [--model FOLDER]

For present-key prompts at N documents (default ``DISTRACTING_DOCS``), on the row of the
echoed key's last word (the row that predicts the first value word), prints each head's
mean attention mass on: the gold document's span, the gold document's closing ``]``
alone, the other documents' ``]``, the other document tokens (``[DOC`` and words), the
query and echoed key, and ``<bos>``; then the same split by whether the model's greedy
first value word is right. Numbers for docs/focusing-fails.md and the model card.
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from focuslens.demo import DISTRACTING_DOCS, load_demo_model
from focuslens.prompts.tokens import tokenize_prompt
from focuslens.tasks import synthetic as syn
from focuslens.tasks import synthetic_retrieval

KINDS = ("gold span", "gold ]", "other ]", "other document tokens", "query and echo", "<bos>")


def decisive_row_masses(model, prompts) -> pd.DataFrame:
    """One row per (prompt, layer, head): the masses of :data:`KINDS` and ``correct``."""
    close = model.tokenizer.convert_tokens_to_ids(syn.DOC_CLOSE)
    rows = []
    for i, p in enumerate(prompts):
        tp = tokenize_prompt(model, p)
        start, end = tp.relevant
        row = tp.n_prompt + syn.KEY_LEN - 1  # the echoed key's last word
        tokens = tp.tokens[: row + 1]
        pos = torch.arange(len(tokens))
        gold = (pos >= start) & (pos < end)
        in_docs = (pos > 0) & (pos < tp.n_prompt - syn.QUERY_TOKENS)
        masks = {
            "gold span": gold,
            "gold ]": pos == end - 1,
            "other ]": (tokens == close) & ~gold & in_docs,
            "other document tokens": (tokens != close) & ~gold & in_docs,
            "query and echo": pos >= tp.n_prompt - syn.QUERY_TOKENS,
            "<bos>": pos == 0,
        }
        with torch.no_grad():
            logits, cache = model.run_with_cache(
                tokens[None], names_filter=lambda n: n.endswith("hook_pattern")
            )
        correct = int(logits[0, row].argmax()) == int(tp.tokens[row + 1])
        for layer in range(model.cfg.n_layers):
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0, :, row]
            for head in range(model.cfg.n_heads):
                masses = {k: float(pattern[head][m].sum()) for k, m in masks.items()}
                rows.append(
                    {"prompt": i, "layer": layer, "head": head, "correct": correct, **masses}
                )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=DISTRACTING_DOCS)
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--seed", type=int, default=5000)
    parser.add_argument("--model", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = load_demo_model(args.model)
    prompts = synthetic_retrieval(args.n, n_documents=args.docs, seed=args.seed + args.docs)
    frame = decisive_row_masses(model, prompts)
    last = frame[frame["layer"] == model.cfg.n_layers - 1]
    print(f"{args.n} prompts at {args.docs} documents; last layer, mean mass at the decisive row")
    print(last.groupby("head")[list(KINDS)].mean().round(2).to_string())
    print(f"\nfirst value word right: {last.groupby('prompt')['correct'].first().mean():.2f}")
    print("gold-span mass by whether the first value word is right:")
    print(
        last.pivot_table(index="head", columns="correct", values="gold span").round(2).to_string()
    )


if __name__ == "__main__":
    main()
