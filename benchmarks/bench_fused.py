"""Fused attention: contextual scores at the cost of a fused forward pass, and their peers.

Model: a GPT-2-small-shaped random model (12 layers x 12 heads, d_model 768, d_mlp
3072, vocabulary 50,257, learned positions) built from config, as a TransformerLens
``HookedTransformer`` and, with the same shape, as a Hugging Face ``GPT2Model``. One
prompt per length (20 documents of random words, the relevant one 8th) and a 16-token
response. Each case runs in its own process (time: wall clock of one call after a
warm-up on a short prompt; memory: peak RSS above what was resident before the call):

* ``bound``: the fused bound, a Hugging Face forward with SDPA attention (no LM head);
* ``ours``: ``focuslens.contextual_scores`` (fused attention, masses from queries and
  keys), and ``ours chunked``: the same with ``chunk_size=512``;
* at 2k tokens, the old way: ``contextual_scores(scores_from="pattern")`` (every
  layer's pattern, TransformerLens's attention), a plain TransformerLens forward, and
  the authors' style: Hugging Face eager attention with ``output_attentions=True``,
  then Python loops over layers, heads and documents;
* steered / unsteered greedy generation on the demo model (interleaved rounds, median
  of the per-round ratios);
* ``evaluate`` on 16 prompts of the demo model, ``batch_size=16`` against one at a time.

Ratios are against baselines measured in the same run. Targets: ours <= 1.3x the bound
at each length; >= 3x faster and >= 5x less memory than the authors' style at 2k;
steered generation <= 1.05x unsteered; batched evaluate >= 2x faster.

    python benchmarks/bench_fused.py                 # 2k, 8k, 32k tokens (~40 min, 2 cores)
    python benchmarks/bench_fused.py --quick         # a small model and short prompts
    python benchmarks/bench_fused.py --json F        # also write the results to F
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _measure import _status_kib, run_isolated  # noqa: E402

N_RESPONSE, N_DOCS, RELEVANT = 16, 20, 7
LENGTHS, QUICK_LENGTHS = [2048, 8192, 32768], [512, 1024]
SHAPE = {"n_layers": 12, "d_model": 768, "n_heads": 12, "d_mlp": 3072}
QUICK_SHAPE = {"n_layers": 2, "d_model": 128, "n_heads": 4, "d_mlp": 512}
VOCAB = 50257


# ------------------------------------------------------------------------ building
def word_tokenizer(vocab_size: int):
    """A word-level fast tokenizer over the words t0 .. t{vocab_size - 3}, built offline."""
    import tempfile

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<bos>": 0, "<pad>": 1, **{f"t{i}": i + 2 for i in range(vocab_size - 2)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder = tempfile.mkdtemp(prefix="focuslens-bench-tok-")
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>"
    ).save_pretrained(folder)
    return PreTrainedTokenizerFast.from_pretrained(folder)


def prompt_of_length(n_tokens: int):
    """A prompt of about ``n_tokens`` words: 20 documents, the 8th relevant."""
    from _measure import documents_prompt

    doc_words = max(2, (n_tokens - N_RESPONSE) // N_DOCS - 1)
    return documents_prompt(doc_words, N_DOCS, RELEVANT, N_RESPONSE)


def tl_model(shape: dict, n_ctx: int):
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        **shape,
        d_head=64 if shape["d_model"] >= 768 else 32,
        d_vocab=VOCAB,
        n_ctx=n_ctx,
        act_fn="gelu_new",
        normalization_type="LN",
        default_prepend_bos=True,
        dtype=torch.float32,
        seed=0,
    )
    model = HookedTransformer(cfg).eval()
    model.set_tokenizer(word_tokenizer(VOCAB))
    return model


def hf_model(shape: dict, n_ctx: int, attention: str):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_positions=n_ctx,
        n_embd=shape["d_model"],
        n_layer=shape["n_layers"],
        n_head=shape["n_heads"],
        n_inner=shape["d_mlp"],
    )
    cls = GPT2Model if attention == "sdpa" else GPT2LMHeadModel
    return cls._from_config(cfg, attn_implementation=attention).eval()


# ------------------------------------------------------------------------ one case
def authors_style(model, tokens, tp) -> list:
    """Their released recipe: all attentions from ``output_attentions=True``, then Python
    loops over layers, heads and spans (relevant, each distractor, sink)."""
    import torch

    with torch.no_grad():
        attentions = model(tokens, output_attentions=True).attentions
    rows = slice(tp.n_prompt, len(tp))
    out = []
    for layer in range(len(attentions)):
        for head in range(attentions[layer].shape[1]):
            a = attentions[layer][0, head, rows]
            s, e = tp.relevant
            relevant = a[:, s:e].sum(-1).mean().item()
            distractors = [a[:, ds:de].sum(-1).mean().item() for ds, de in tp.distractors]
            sink = a[:, :2].sum(-1).mean().item()
            out.append((layer, head, relevant, sum(distractors), max(distractors), sink))
    return out


def run_case(case: str, n_tokens: int, quick: bool) -> dict:
    import torch

    from focuslens import contextual_scores, tokenize_prompt

    torch.set_num_threads(2)
    shape = QUICK_SHAPE if quick else SHAPE
    n_ctx = max(n_tokens + 64, 1024)
    warm_prompt, prompt = prompt_of_length(256), prompt_of_length(n_tokens)
    if case in ("bound", "authors"):
        model = hf_model(shape, n_ctx, "sdpa" if case == "bound" else "eager")
        tl = tl_model(QUICK_SHAPE, 1024)  # only its tokenizer, for the same token ids
        tps = [tokenize_prompt(tl, p) for p in (warm_prompt, prompt)]
        del tl

        def call(tp):
            if case == "authors":
                return authors_style(model, tp.tokens[None], tp)
            with torch.no_grad():
                return model(tp.tokens[None]).last_hidden_state
    else:
        model = tl_model(shape, n_ctx)
        tps = [tokenize_prompt(model, p) for p in (warm_prompt, prompt)]
        options = {
            "ours": {},
            "ours chunked": {"chunk_size": 512},
            "pattern": {"scores_from": "pattern"},
        }

        def call(tp):
            if case == "tl forward":
                with torch.no_grad():
                    return model(tp.tokens[None], return_type=None)
            return contextual_scores(model, [tp], **options[case])

    call(tps[0])  # warm-up on a short prompt
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    call(tps[1])
    seconds = time.perf_counter() - start
    peak = (_status_kib("VmHWM") - before) / 1024
    return {"seconds": seconds, "peak_mib": peak, "n_tokens": len(tps[1])}


# ------------------------------------------------------------------------ steering, evaluate
def steering_ratio(rounds: int, new_tokens: int) -> dict:
    import torch
    from bench_steering import random_directions

    from focuslens import load_demo_model, tokenize_prompt
    from focuslens.demo import DISTRACTING_DOCS
    from focuslens.model.generation import generate_greedy
    from focuslens.tasks import synthetic_retrieval

    torch.set_num_threads(1)
    model = load_demo_model()
    tp = tokenize_prompt(model, synthetic_retrieval(1, n_documents=DISTRACTING_DOCS, seed=1)[0])
    tokens = tp.tokens[: tp.n_prompt]
    fd = random_directions(model)
    heads = fd.heads[:4]

    def run(steered: bool) -> float:
        start = time.perf_counter()
        if steered:
            with fd.steer(model, heads, 0.5):
                generate_greedy(model, tokens, max_new_tokens=new_tokens, stop_ids=())
        else:
            generate_greedy(model, tokens, max_new_tokens=new_tokens, stop_ids=())
        return time.perf_counter() - start

    run(False), run(True)
    pairs = [(run(False), run(True)) for _ in range(rounds)]
    return {
        "n_prompt": tp.n_prompt,
        "unsteered": statistics.median(a for a, _ in pairs),
        "steered": statistics.median(b for _, b in pairs),
        "ratio": statistics.median(b / a for a, b in pairs),
    }


def evaluate_ratio(n_prompts: int, rounds: int) -> dict:
    import torch

    from focuslens import evaluate, load_demo_model
    from focuslens.demo import DISTRACTING_DOCS
    from focuslens.tasks import synthetic_retrieval

    torch.set_num_threads(2)
    model = load_demo_model()
    prompts = synthetic_retrieval(n_prompts, n_documents=DISTRACTING_DOCS, seed=2)

    def run(batch_size: int):
        start = time.perf_counter()
        frame = evaluate(model, prompts, batch_size=batch_size, progress=False).to_dataframe()
        return time.perf_counter() - start, frame

    run(n_prompts)
    times: dict[int, list[float]] = {1: [], n_prompts: []}
    frames = {}
    for _ in range(rounds):
        for size in times:
            seconds, frames[size] = run(size)
            times[size].append(seconds)
    alone, batched = statistics.median(times[1]), statistics.median(times[n_prompts])
    return {
        "n_prompts": n_prompts,
        "one_at_a_time": alone,
        "batched": batched,
        "speedup": alone / batched,
        "same_rows": bool(frames[1].equals(frames[n_prompts])),
        "accuracy": float(frames[1]["correct"].mean()),
    }


# ------------------------------------------------------------------------ report
def ratio_table(res: dict, lengths: list[int]) -> list[str]:
    lines = [
        "| tokens | case | time (s) | peak MiB | time / bound | memory / bound |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for n in lengths:
        bound = res[f"bound@{n}"]
        for key, r in res.items():
            if key.endswith(f"@{n}") and "seconds" in r:
                lines.append(
                    f"| {r['n_tokens']:,} | {key.split('@')[0]} | {r['seconds']:.1f} | "
                    f"{r['peak_mib']:,.0f} | {r['seconds'] / bound['seconds']:.2f} | "
                    f"{r['peak_mib'] / max(bound['peak_mib'], 1):.2f} |"
                )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case")
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    flags = ["--quick"] if args.quick else []
    if args.case:
        if args.case == "steering":
            out = steering_ratio(3 if args.quick else 15, 8 if args.quick else 32)
        elif args.case == "evaluate":
            out = evaluate_ratio(4 if args.quick else 16, 1 if args.quick else 3)
        else:
            out = run_case(args.case, args.n, args.quick)
        print(json.dumps(out))
        return
    lengths = QUICK_LENGTHS if args.quick else LENGTHS
    short, mid = lengths[0], lengths[min(1, len(lengths) - 1)]
    plan = [("bound", n) for n in lengths] + [("ours", n) for n in lengths]
    plan += [("ours chunked", n) for n in (short, mid)]
    plan += [("pattern", short), ("tl forward", short), ("authors", short)]
    res = {}
    for case, n in plan:
        res[f"{case}@{n}"] = run_isolated(__file__, case, "--n", str(n), *flags)
        print(f"{case} at {n}: {res[f'{case}@{n}']}", flush=True)
    res["steering"] = run_isolated(__file__, "steering", *flags)
    res["evaluate"] = run_isolated(__file__, "evaluate", *flags)
    lines = ratio_table(res, lengths)
    ours = [res[f"ours@{n}"]["seconds"] / res[f"bound@{n}"]["seconds"] for n in lengths]
    authors, mine = res[f"authors@{short}"], res[f"ours@{short}"]
    lines += [
        "",
        "contextual_scores / fused bound, time: "
        + ", ".join(f"{r:.2f}x at {n}" for r, n in zip(ours, lengths))
        + " (target <= 1.3)",
        f"authors' style / contextual_scores at {short}: "
        f"{authors['seconds'] / mine['seconds']:.1f}x time (target >= 3), "
        f"{authors['peak_mib'] / max(mine['peak_mib'], 1):.1f}x memory (target >= 5)",
        f"steered / unsteered generation: {res['steering']['ratio']:.3f} (target <= 1.05)",
        f"evaluate one at a time / batched ({res['evaluate']['n_prompts']} prompts): "
        f"{res['evaluate']['speedup']:.2f}x (target >= 2), same rows: "
        f"{res['evaluate']['same_rows']}",
    ]
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
