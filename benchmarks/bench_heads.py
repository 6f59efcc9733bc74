"""Cost of the head interventions and of per-head effects, against a plain forward pass.

Model: a random rotary HookedTransformer (4 layers x 8 heads, d_model 256, grouped-query
attention with 4 key/value heads), 2 prompts of ~500 tokens with 3-token answers,
batched. Each case runs in its own process; the script prints time and peak-memory
ratios against the plain forward pass measured in the same run, and the speed-up of
attribution patching (one forward and backward) over exact ablation (one forward per
head).

    python benchmarks/bench_heads.py            # all cases, prints the table
    python benchmarks/bench_heads.py --json F   # also write the numbers to F
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _measure import measure, print_ratios, run_cases  # noqa: E402

N_LAYERS, N_HEADS, N_PROMPTS, N_DOCS, DOC_WORDS = 4, 8, 2, 20, 25
CASES = ("forward", "split_softmax", "pasta", "head_ablation", "attribution", "ablation")


def build():
    import torch
    from bench_scores import word_tokenizer
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from focuslens import LabeledPrompt

    torch.set_num_threads(2)
    vocab = 5000
    cfg = HookedTransformerConfig(
        n_layers=N_LAYERS,
        d_model=256,
        n_heads=N_HEADS,
        d_head=32,
        n_key_value_heads=4,
        d_mlp=1024,
        d_vocab=vocab,
        n_ctx=2048,
        act_fn="gelu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=32,
        seed=0,
    )
    model = HookedTransformer(cfg)
    model.eval()
    model.set_tokenizer(word_tokenizer(vocab))
    prompts = []
    for p in range(N_PROMPTS):
        docs = [
            " ".join(f"t{(d * 97 + i * 31 + p) % 4990}" for i in range(DOC_WORDS - p))
            for d in range(N_DOCS)
        ]
        text = "t1 t2 " + " ".join(docs) + " t1"
        spans, pos = [], len("t1 t2 ")
        for d in docs:
            spans.append((pos, pos + len(d)))
            pos += len(d) + 1
        gold = (5 * p) % N_DOCS
        others = spans[:gold] + spans[gold + 1 :]
        prompts.append(LabeledPrompt(text, spans[gold], others, ["t7 t8 t9"]))
    return model, prompts


def run_case(case: str) -> dict[str, float]:
    import torch

    from focuslens import HeadAblation, Pasta, SplitSoftmax
    from focuslens.interventions.effects import (
        ablation_effects,
        answer_prompts,
        attribution_patching,
    )

    model, prompts = build()
    tps = answer_prompts(model, prompts)
    length = max(len(tp) for tp in tps)
    tokens = torch.zeros(len(tps), length, dtype=torch.long)
    for b, tp in enumerate(tps):
        tokens[b, : len(tp)] = tp.tokens
    heads = [(l, h) for l in range(1, 3) for h in range(N_HEADS)]  # 16 of 32 heads

    def under(intervention):
        def op():
            with torch.no_grad(), intervention.apply(model, tps):
                model(tokens)

        return op

    def forward():
        with torch.no_grad():
            model(tokens)

    ops = {
        "forward": forward,
        "split_softmax": under(SplitSoftmax(heads, 0.1)),
        "pasta": under(Pasta(heads, 0.01)),
        "head_ablation": under(HeadAblation(heads)),
        "attribution": lambda: attribution_patching(model, prompts, batch_size=N_PROMPTS),
        "ablation": lambda: ablation_effects(model, prompts, batch_size=N_PROMPTS),
    }
    result = measure(ops[case], repeats=1 if case == "ablation" else 5)
    result["n_tokens"] = int(tokens.numel())
    return result


def main() -> None:
    ran = run_cases(__file__, __doc__, CASES, run_case)
    if ran is None:
        return
    res, json_path = ran
    base = res["forward"]
    print(
        f"random rotary GQA model, {N_LAYERS} x {N_HEADS} heads, batch of {N_PROMPTS} prompts, "
        f"{base['n_tokens']} tokens in all; interventions on 16 heads"
    )
    print_ratios(res, 16)
    speedup = res["ablation"]["seconds"] / res["attribution"]["seconds"]
    print(
        f"exact ablation of {N_LAYERS * N_HEADS} heads / attribution patching, time: {speedup:.1f}x"
    )
    if json_path:
        Path(json_path).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
