"""Long contexts: peak memory and time of contextual_scores from 2k to 32k tokens.

Model: a GPT-2-small-shaped random rotary HookedTransformer (12 layers x 12 heads,
d_model 768, d_mlp 3072, vocabulary 50257, n_ctx 32768). One QA prompt per length,
padded with distractor documents by ``focuslens.tasks.qa_prompt_of_length``, plus a
16-token response (the scored rows). Each case runs in its own process: the model and
prompt are built, the scoring runs once on a 600-token prompt (warm-up), the kernel's
peak-RSS counter is reset, and the measured call runs once. Compared, at each length:

* chunked ``contextual_scores(..., chunk_size=512)`` (pattern-free ``"keys"`` route);
* the one-pass ``contextual_scores`` where its estimated peak fits ``--one-pass-budget``
  (ratios are chunked / one-pass, measured in the same run);
* the computed bytes of a full attention cache (every layer's pattern, what
  ``run_with_cache`` or ``output_attentions=True`` would hold) and of the KV cache;
* ``focuslens.model.memory.estimate_memory``, the model behind ``max_memory``.

    python benchmarks/bench_long_context.py                      # 2k .. 32k, ~1 h on 2 cores
    python benchmarks/bench_long_context.py --lengths 2048 4096  # quick
    python benchmarks/bench_long_context.py --json results.json
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).parent))

from _measure import _status_kib, run_isolated  # noqa: E402

N_RESPONSE = 16
DOC_WORDS = 50
LENGTHS = [2048, 4096, 8192, 16384, 32768]
SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>"]
PUNCT = ["[", "]", "(", ")", "](", "):", ":", "?", ".", "Document", "Title", "Question", "Answer"]


def config():
    import torch
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(
        n_layers=12,
        d_model=768,
        n_heads=12,
        d_head=64,
        d_mlp=3072,
        d_vocab=50257,
        n_ctx=32768,
        act_fn="gelu",
        normalization_type="LN",
        positional_embedding_type="rotary",
        rotary_dim=64,
        default_prepend_bos=True,
        dtype=torch.float32,
        seed=0,
    )


def word_tokenizer(vocab_size: int):
    """A word-level fast tokenizer (words t0, t1, ..., digits, QA punctuation), offline."""
    import tempfile

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = SPECIAL + PUNCT + [str(i) for i in range(1000)]
    words += [f"t{i}" for i in range(vocab_size - len(words))]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tempfile.mkdtemp(prefix="focuslens-bench-tok-")
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    ).save_pretrained(folder)
    return PreTrainedTokenizerFast.from_pretrained(folder)


def build_model():
    import torch
    from transformer_lens import HookedTransformer

    torch.set_num_threads(2)
    model = HookedTransformer(config())
    model.set_tokenizer(word_tokenizer(model.cfg.d_vocab))
    model.eval()
    return model


def build_prompt(model, n_tokens: int, seed: int = 0):
    """A QA prompt of at most ``n_tokens`` tokens, response included, gold in the middle."""
    from focuslens.tasks import qa_prompt_of_length

    rng = random.Random(seed)

    def words(k: int) -> str:
        return " ".join(f"t{rng.randrange(40_000)}" for _ in range(k))

    pool = [(f"t{d}", words(DOC_WORDS)) for d in range(n_tokens // DOC_WORDS + 4)]
    prompt = qa_prompt_of_length(
        words(8),
        [words(2)],
        ("t7", words(DOC_WORDS)),
        pool,
        tokenizer=model,
        n_tokens=n_tokens - N_RESPONSE,
        gold_position=0.5,
    )
    return prompt.with_response(words(N_RESPONSE))


def run_case(case: str, n_tokens: int, chunk_size: int, scores_from: str) -> dict:
    import torch

    from focuslens import contextual_scores, tokenize_prompt

    model = build_model()
    prompt, warm = build_prompt(model, n_tokens), build_prompt(model, 600, seed=1)
    if case == "chunked":
        options = {"chunk_size": chunk_size, "scores_from": scores_from}

        def score(p):
            from focuslens.scores.chunked import chunked_contextual_scores

            return chunked_contextual_scores(model, [p], **options)
    else:

        def score(p):
            return contextual_scores(model, [p])

    score(warm)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    result = score(prompt)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    with torch.no_grad():
        relevant = result.relevant.tolist()
    return {
        "case": case,
        "n_tokens": len(tokenize_prompt(model, prompt)),
        "seconds": seconds,
        "peak_mib": (peak - before) / 1024,
        "rss_peak_mib": peak / 1024,
        "rss_before_mib": before / 1024,
        "relevant": relevant,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["chunked", "onepass"])
    parser.add_argument("--n", type=int)
    parser.add_argument("--lengths", type=int, nargs="+", default=LENGTHS)
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--scores-from", default="auto", choices=["auto", "keys", "pattern"])
    parser.add_argument(
        "--one-pass-budget",
        type=float,
        default=6.0,
        help="GiB: run the one-pass computation where its estimated peak fits (default 6)",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.n, args.chunk_size, args.scores_from)))
        return
    report(args)


def report(args) -> None:
    from focuslens.model.memory import attention_cache_bytes, estimate_memory, kv_cache_bytes

    shape = SimpleNamespace(cfg=config())  # the memory model needs only the config
    gib, mib = 2**30, 2**20
    common = ["--chunk-size", str(args.chunk_size), "--scores-from", args.scores_from]
    print(
        f"GPT-2-small-shaped rotary model, chunk_size={args.chunk_size}, response "
        f"{N_RESPONSE} tokens; peak = peak RSS above the RSS before the call (model loaded)"
    )
    header = (
        f"{'tokens':>7} {'case':>8} {'seconds':>8} {'peak MiB':>9} {'RSS MiB':>8} "
        f"{'est. MiB':>9} {'KV MiB':>7} {'full attn GiB':>13} {'t/1pass':>8} {'mem/1pass':>9} "
        f"{'max|d rel|':>10}"
    )
    print(header, flush=True)
    rows = []
    for n in args.lengths:
        results = {"chunked": run_isolated(__file__, "chunked", "--n", str(n), *common)}
        one_pass_estimate = estimate_memory(shape, n, n) - kv_cache_bytes(shape, n)
        if one_pass_estimate <= args.one_pass_budget * gib:
            results["onepass"] = run_isolated(__file__, "onepass", "--n", str(n), *common)
        base = results.get("onepass")
        for case, r in results.items():
            import torch

            size = args.chunk_size if case == "chunked" else n
            r["estimate_mib"] = estimate_memory(shape, r["n_tokens"], size) / mib
            if case == "onepass":
                r["estimate_mib"] -= kv_cache_bytes(shape, r["n_tokens"]) / mib
            r["kv_cache_mib"] = kv_cache_bytes(shape, r["n_tokens"]) / mib
            r["full_attention_gib"] = attention_cache_bytes(shape, r["n_tokens"]) / gib
            r["time_ratio"] = r["seconds"] / base["seconds"] if base else None
            r["memory_ratio"] = r["peak_mib"] / base["peak_mib"] if base else None
            diff = None
            if base:
                diff = (torch.tensor(r["relevant"]) - torch.tensor(base["relevant"])).abs().max()
            r["max_abs_diff_relevant"] = None if diff is None else float(diff)
            rows.append({k: v for k, v in r.items() if k != "relevant"})
            print(_line(rows[-1]), flush=True)
    chunked = [r for r in rows if r["case"] == "chunked"]
    for a, b in zip(chunked, chunked[1:]):
        print(
            f"{a['n_tokens']} -> {b['n_tokens']} tokens (x{b['n_tokens'] / a['n_tokens']:.2f}): "
            f"peak x{b['peak_mib'] / a['peak_mib']:.2f}, time x{b['seconds'] / a['seconds']:.2f}, "
            f"full attention cache x{b['full_attention_gib'] / a['full_attention_gib']:.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def _line(r: dict) -> str:
    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    return (
        f"{r['n_tokens']:>7} {r['case']:>8} {r['seconds']:>8.1f} {r['peak_mib']:>9.0f} "
        f"{r['rss_peak_mib']:>8.0f} {r['estimate_mib']:>9.0f} {r['kv_cache_mib']:>7.0f} "
        f"{r['full_attention_gib']:>13.1f} {fmt(r['time_ratio'], '>8.2f')} "
        f"{fmt(r['memory_ratio'], '>9.3f')} {fmt(r['max_abs_diff_relevant'], '>10.1e')}"
    )


if __name__ == "__main__":
    main()
