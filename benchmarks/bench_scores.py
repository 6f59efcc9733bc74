"""Cost of contextual_scores against a plain forward pass and a naive full cache.

Model: GPT-2-small-shaped random HookedTransformer (12 layers x 12 heads, d_model 768,
vocabulary 50257), one prompt of ~2,000 tokens with a 16-token response. Each case runs
in its own process; the script prints time and peak-memory ratios against the plain
forward pass measured in the same run.

    python benchmarks/bench_scores.py            # all cases, prints the table
    python benchmarks/bench_scores.py --json F   # also write the numbers to F
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _measure import documents_prompt, measure, print_ratios, run_cases  # noqa: E402

N_PROMPT, N_RESPONSE, N_DOCS = 2000, 16, 20


def build():
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from focuslens import tokenize_prompt

    torch.set_num_threads(2)
    cfg = HookedTransformerConfig(
        n_layers=12,
        d_model=768,
        n_heads=12,
        d_head=64,
        d_mlp=3072,
        d_vocab=50257,
        n_ctx=4096,
        act_fn="gelu",
        normalization_type="LN",
        seed=0,
    )
    model = HookedTransformer(cfg)
    model.eval()

    model.set_tokenizer(word_tokenizer(cfg.d_vocab))
    prompt = documents_prompt(N_PROMPT // N_DOCS - 1, N_DOCS, 7, N_RESPONSE)
    tokens = tokenize_prompt(model, prompt).tokens[None]
    return model, prompt, tokens


def word_tokenizer(vocab_size: int):
    """A word-level fast tokenizer over the words t0 .. t{vocab_size - 3}, built offline."""
    import tempfile

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<bos>": 0, "<pad>": 1, **{f"t{i}": i + 2 for i in range(vocab_size - 2)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder = tempfile.mkdtemp()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>"
    ).save_pretrained(folder)
    return PreTrainedTokenizerFast.from_pretrained(folder)


def run_case(case: str) -> dict[str, float]:
    import torch

    from focuslens import contextual_scores

    model, prompt, tokens = build()
    n_prompt = tokens.shape[1] - N_RESPONSE

    def forward():
        with torch.no_grad():
            model(tokens)

    def forward_no_logits():
        with torch.no_grad():
            model(tokens, return_type=None)

    def ours():
        contextual_scores(model, [prompt])

    def ours_chunked():
        contextual_scores(model, [prompt], chunk_size=512)

    def naive():
        with torch.no_grad():
            _, cache = model.run_with_cache(
                tokens, names_filter=lambda n: n.endswith("hook_pattern")
            )
        s, e = tokenize_prompt_spans(model, prompt)
        return torch.stack(
            [cache["pattern", l][0, :, n_prompt:, s:e].sum(-1).mean(-1) for l in range(12)]
        )

    ops = {
        "forward": forward,
        "forward_no_logits": forward_no_logits,
        "ours": ours,
        "ours_chunked": ours_chunked,
        "naive": naive,
    }
    result = measure(ops[case], repeats=2)
    result["n_tokens"] = int(tokens.shape[1])
    return result


def tokenize_prompt_spans(model, prompt):
    from focuslens import tokenize_prompt

    return tokenize_prompt(model, prompt).relevant


def main() -> None:
    cases = ("forward", "forward_no_logits", "ours", "ours_chunked", "naive")
    ran = run_cases(__file__, __doc__, cases, run_case)
    if ran is None:
        return
    res, json_path = ran
    base = res["forward"]
    print(f"GPT-2-small-shaped random model, {base['n_tokens']} tokens ({N_RESPONSE} response)")
    print_ratios(res, 22)
    print(
        f"naive cache / ours, peak memory: {res['naive']['peak_mib'] / res['ours']['peak_mib']:.1f}x"
    )
    if json_path:
        Path(json_path).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
