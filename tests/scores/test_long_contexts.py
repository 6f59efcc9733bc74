"""Chunked prefill and pattern-free scores against one-pass and full-cache oracles."""

from __future__ import annotations

import math

import pytest
import torch
from _oracles import make_prompts, naive_scores
from _tiny import tiny_model

from focuslens import contextual_scores, tokenize_prompt
from focuslens.model.hooks import query_hook_name
from focuslens.model.memory import (
    attention_cache_bytes,
    chunk_bounds,
    chunk_size_for,
    estimate_memory,
    kv_cache_bytes,
    parse_memory,
)
from focuslens.model.prefill import chunked_forward, new_cache
from focuslens.scores.chunked import chunked_contextual_scores
from focuslens.scores.reduce import span_masks
from focuslens.scores.result import KINDS
from focuslens.scores.spanmass import span_labels, span_mass_from_keys


def assert_scores_close(a, b, atol=1e-5):
    for kind in KINDS:
        torch.testing.assert_close(
            a.per_example[kind], b.per_example[kind], atol=atol, rtol=0, equal_nan=True
        )


def no_hooks_left(model) -> bool:
    points = model.hook_dict.values()
    return all(len(p._forward_hooks) == 0 for p in points) and all(
        len(b.attn._forward_pre_hooks) == 0 for b in model.blocks
    )


# ------------------------------------------------------------------------------ scores
@pytest.mark.parametrize("kind", ["gpt2", "rotary", "gqa"])
@pytest.mark.parametrize("route", ["keys", "pattern"])
def test_chunked_scores_equal_full_cache_oracle(kind, route):
    model = tiny_model(kind)
    prompts = make_prompts(3)
    oracle = naive_scores(model, prompts)
    for chunk in (5, 1000):  # 1000 > every prompt: the one-pass case
        got = chunked_contextual_scores(model, prompts, chunk_size=chunk, scores_from=route)
        for name, expected in oracle.items():
            torch.testing.assert_close(got.per_example[name], expected, atol=1e-5, rtol=0)
        assert got.meta["scores_from"] == route and got.meta["chunk_sizes"] == [chunk] * 3
    assert got.relevant.std() > 0.01  # not a degenerate case


def test_a_local_attention_window_is_read_from_its_pattern():
    """Layer 0 of the "local" tiny model attends within a window of 3 positions, which
    the keys route does not reproduce: "auto" reads that layer from its pattern and the
    global layer from its keys, and both equal the full cache; "keys" is refused."""
    from focuslens.scores.spanmass import resolve_routes

    model = tiny_model("local")
    prompts = make_prompts(3)
    assert resolve_routes(model, "auto") == ["pattern", "keys"]
    oracle = naive_scores(model, prompts)
    for chunk in (5, 1000):
        got = chunked_contextual_scores(model, prompts, chunk_size=chunk)
        for name, expected in oracle.items():
            torch.testing.assert_close(got.per_example[name], expected, atol=1e-5, rtol=0)
        assert got.meta["scores_from"] == "mixed"
    with pytest.raises(ValueError, match=r"local attention windows in layers \[0\]"):
        chunked_contextual_scores(model, prompts, chunk_size=5, scores_from="keys")
    # the window matters here: the same weights with global attention score otherwise
    model.blocks[0].attn.attn_type = "global"
    assert (naive_scores(model, prompts)["relevant"] - oracle["relevant"]).abs().max() > 1e-3


@pytest.mark.parametrize("query", ["predict", "last"])
def test_other_query_conventions_and_the_public_dispatch(query):
    model = tiny_model("rotary")
    prompts = make_prompts(3)
    one_pass = contextual_scores(model, prompts, query=query, sink=1)
    chunked = contextual_scores(model, prompts, query=query, sink=1, chunk_size=4)
    assert_scores_close(one_pass, chunked)
    assert chunked.meta["chunk_sizes"] == [4, 4, 4]
    lengths = [len(tokenize_prompt(model, p)) for p in prompts]
    budget = estimate_memory(model, min(lengths), 6)  # chunks of at most 6 tokens
    by_budget = contextual_scores(model, prompts, query=query, sink=1, max_memory=budget)
    assert_scores_close(one_pass, by_budget)
    assert all(1 <= c <= 6 < n for c, n in zip(by_budget.meta["chunk_sizes"], lengths))


def test_a_response_longer_than_a_chunk_and_missing_relevant_spans():
    model = tiny_model("gqa")
    prompts = [p.with_response("w1 w2 w3 w4 w5 w6 w7") for p in make_prompts(2)]
    prompts.append(prompts[0].distractors_only())
    one_pass = contextual_scores(model, prompts, require_relevant=False)
    chunked = contextual_scores(model, prompts, require_relevant=False, chunk_size=3)
    assert_scores_close(one_pass, chunked)
    assert torch.isnan(chunked.per_example["relevant"][2]).all()


def test_span_mass_from_keys_equals_a_direct_softmax():
    """Hand computation: full logits, causal mask, softmax, span sums. Large logits check
    that the running log-sum-exp does not overflow; tiny blocks force many of them."""
    gen = torch.Generator().manual_seed(1)
    n, n_heads, n_kv, d = 23, 4, 2, 5
    q_all = torch.randn(n, n_heads, d, generator=gen) * 30
    k = torch.randn(n, n_kv, d, generator=gen) * 30
    rows = torch.tensor([3, 11, 22])
    labels = torch.randint(0, 6, (n,), generator=gen)
    scale = math.sqrt(d)
    logits = torch.einsum("rhd,khd->hrk", q_all[rows].double(), k.double().repeat_interleave(2, 1))
    logits = logits / scale
    logits = logits.masked_fill(torch.arange(n)[None, None] > rows[None, :, None], -torch.inf)
    p = logits.softmax(-1)
    expected = torch.stack([p[..., labels == m].sum((-1, -2)) for m in range(7)], -1)
    for block_elements in (1, 7, 10**6):
        got = span_mass_from_keys(q_all[rows], rows, k, labels, 7, scale, block_elements)
        torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)
    assert torch.isfinite(got).all() and expected[:, 6].abs().max() == 0


def test_span_labels_match_span_masks():
    model = tiny_model("rotary")
    for prompt in make_prompts(4):
        tp = tokenize_prompt(model, prompt)
        masks = span_masks(tp, 2, len(tp), len(tp.distractors))
        assert torch.equal(span_labels(tp, 2), masks.argmax(0))
        assert torch.equal(masks.sum(0), torch.ones(len(tp)))


# ------------------------------------------------------------------------------ logits
@pytest.mark.parametrize("kind", ["gpt2", "rotary", "gqa"])
def test_chunked_logits_equal_one_pass(kind):
    model = tiny_model(kind)
    tokens = tokenize_prompt(model, make_prompts(1)[0]).tokens
    with torch.no_grad():
        full = model(tokens[None])[0]
    for chunk in (4, len(tokens), 1000):
        got = chunked_forward(model, tokens, chunk_size=chunk, logits_at="all")
        torch.testing.assert_close(got, full, atol=1e-4, rtol=1e-4)
    one_token_chunks = chunked_forward(model, tokens[:10], chunk_size=1, logits_at="all")
    torch.testing.assert_close(one_token_chunks, full[:10], atol=1e-4, rtol=1e-4)
    last = chunked_forward(model, tokens[None], chunk_size=3)
    torch.testing.assert_close(last, full[-1:], atol=1e-4, rtol=1e-4)
    some = chunked_forward(model, tokens, chunk_size=3, logits_at=[5, 1, 5])
    torch.testing.assert_close(some, full[[1, 5]], atol=1e-4, rtol=1e-4)


def test_generation_continues_from_a_chunked_prefill():
    """Prefill in chunks into a cache, then feed tokens one at a time (as greedy
    generation does): every step's logits equal the one-pass logits."""
    model = tiny_model("rotary")
    tokens = tokenize_prompt(model, make_prompts(1)[0]).tokens
    with torch.no_grad():
        full = model(tokens[None])[0]
    cache = new_cache(model)
    split = len(tokens) - 4
    chunked_forward(model, tokens[:split], chunk_size=3, past_kv_cache=cache)
    assert cache[0].past_keys.shape[1] == split
    for pos in range(split, len(tokens)):
        step = chunked_forward(model, tokens[pos : pos + 1], chunk_size=3, past_kv_cache=cache)
        torch.testing.assert_close(step[0], full[pos], atol=1e-4, rtol=1e-4)


def test_no_layer_sees_more_than_a_chunk_of_queries():
    model = tiny_model("gpt2")
    prompts = make_prompts(2)
    seen: list[tuple[int, ...]] = []
    handles = [
        b.attn.register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape)))
        for b in model.blocks
    ]
    try:
        chunked_contextual_scores(model, prompts, chunk_size=4, scores_from="keys")
    finally:
        for h in handles:
            h.remove()
    lengths = [len(tokenize_prompt(model, p)) for p in prompts]
    assert max(shape[1] for shape in seen) == 4
    assert len(seen) == model.cfg.n_layers * sum(math.ceil(n / 4) for n in lengths)


# -------------------------------------------------------------- steering, interventions
def query_steer(model, heads, alpha=3.0, seed=0):
    """A steer of our own: add ``alpha * d`` to the (rotated) queries of chosen heads."""
    gen = torch.Generator().manual_seed(seed)
    by_layer: dict[int, dict[int, torch.Tensor]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, {})[head] = torch.randn(model.cfg.d_head, generator=gen)

    def make(layer):
        def hook(q, hook):
            q = q.clone()
            for head, vec in by_layer[layer].items():
                q[:, :, head] += alpha * vec.to(q)
            return q

        return hook

    return [(query_hook_name(model, layer), make(layer)) for layer in by_layer]


def pattern_boost(model, span, heads, tau=0.2):
    """An oracle of our own at hook_pattern: each row's mass p on the span (absolute key
    positions) becomes p ** tau, the split inside and outside the span kept."""

    def hook(pattern, hook):
        inside = torch.zeros(pattern.shape[-1], dtype=torch.bool)
        inside[span[0] : span[1]] = True
        sub = pattern[:, heads]
        p = sub[..., inside].sum(-1, keepdim=True)
        scale_in = torch.where(p > 0, p**tau / p, 1.0)
        scale_out = torch.where(p < 1, (1 - p**tau) / (1 - p), 1.0)
        pattern = pattern.clone()
        pattern[:, heads] = sub * torch.where(inside, scale_in, scale_out)
        return pattern

    return [(f"blocks.{layer}.attn.hook_pattern", hook) for layer in range(model.cfg.n_layers)]


@pytest.mark.parametrize("kind", ["gpt2", "rotary", "gqa"])
def test_steered_and_intervened_logits_equal_one_pass(kind):
    model = tiny_model(kind)
    prompt = make_prompts(1)[0]
    tp = tokenize_prompt(model, prompt)
    with torch.no_grad():
        plain = model(tp.tokens[None])[0]
    for fwd in (query_steer(model, [(0, 1), (1, 2)]), pattern_boost(model, tp.relevant, [0, 3])):
        with model.hooks(fwd_hooks=fwd):
            with torch.no_grad():
                one = model(tp.tokens[None])[0]
            chunked = chunked_forward(model, tp.tokens, chunk_size=3, logits_at="all")
        assert (one - plain).abs().max() > 1e-2  # the hooks do change the model
        torch.testing.assert_close(chunked, one, atol=1e-4, rtol=1e-4)
    assert no_hooks_left(model)


def test_scores_under_interventions_pick_the_right_route():
    model = tiny_model("rotary")
    prompts = make_prompts(1)
    tp = tokenize_prompt(model, prompts[0])
    plain = contextual_scores(model, prompts)
    # A query steer is seen by the pattern-free route.
    with model.hooks(fwd_hooks=query_steer(model, [(0, 1), (1, 2)])):
        one = contextual_scores(model, prompts)
        keys = chunked_contextual_scores(model, prompts, chunk_size=4)
    assert keys.meta["scores_from"] == "keys"
    assert (one.relevant - plain.relevant).abs().max() > 1e-3
    assert_scores_close(one, keys)
    # A pattern intervention is not: "auto" reads the patterns, "keys" is refused.
    with model.hooks(fwd_hooks=pattern_boost(model, tp.relevant, [0, 3])):
        one = contextual_scores(model, prompts)
        auto = chunked_contextual_scores(model, prompts, chunk_size=4)
        with pytest.raises(ValueError, match="scores_from='keys' would not match"):
            chunked_contextual_scores(model, prompts, chunk_size=4, scores_from="keys")
    assert auto.meta["scores_from"] == "pattern"
    assert (one.relevant - plain.relevant).abs().max() > 1e-3
    assert_scores_close(one, auto)


@pytest.mark.slow
def test_focuslens_steering_and_oracles_through_chunked_prefill():
    import focuslens.directions.steering as steering
    import focuslens.interventions as interventions
    from focuslens.directions import FocusDirections, ModelShape

    model = tiny_model("gqa")
    prompts = make_prompts(1)
    tp = tokenize_prompt(model, prompts[0])
    gen = torch.Generator().manual_seed(0)
    cfg = model.cfg
    shape = ModelShape.of(model)
    dq = torch.randn(cfg.n_layers, cfg.n_heads, cfg.d_head, generator=gen)
    fd = FocusDirections(dq, torch.randn(dq.shape, generator=gen), shape)
    contexts = [
        lambda: steering.steer(fd, model, [(0, 1), (1, 3)], 2.0),
        lambda: steering.steer(fd, model, [(0, 1), (1, 3)], 2.0, form="scores"),
        lambda: interventions.SplitSoftmax([(0, 1), (1, 0)], tau=0.2).apply(model, prompts),
        lambda: interventions.Pasta([(0, 1), (1, 0)], alpha=0.05).apply(model, prompts),
    ]
    with torch.no_grad():
        plain = model(tp.tokens[None])[0]
    for make in contexts:
        with make():
            with torch.no_grad():
                one = model(tp.tokens[None])[0]
            chunked = chunked_forward(model, tp.tokens, chunk_size=3, logits_at="all")
            scores_one = contextual_scores(model, prompts)
            scores_chunked = contextual_scores(model, prompts, chunk_size=3)
        assert (one - plain).abs().max() > 1e-2
        torch.testing.assert_close(chunked, one, atol=1e-4, rtol=1e-4)
        assert_scores_close(scores_one, scores_chunked)
    assert no_hooks_left(model)


# ----------------------------------------------------------------------- contracts
def test_hooks_removed_also_after_an_exception():
    model = tiny_model("gqa")
    prompts = make_prompts(2)
    tokens = tokenize_prompt(model, prompts[0]).tokens[None]
    before = model(tokens)

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    for route in ("keys", "pattern"):
        with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", boom)]):
            with pytest.raises(RuntimeError, match="boom"):
                chunked_contextual_scores(model, prompts, chunk_size=3, scores_from=route)
        chunked_contextual_scores(model, prompts, chunk_size=3, scores_from=route)
    assert no_hooks_left(model)
    assert torch.equal(model(tokens), before)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chunk_size": 0}, "chunk_size must be a positive int.*got 0"),
        ({"chunk_size": -3}, "chunk_size must be a positive int.*got -3"),
        ({"chunk_size": True}, "chunk_size must be a positive int.*got True"),
        ({"chunk_size": 4, "max_memory": "1GiB"}, "give chunk_size or max_memory, not both"),
        ({"max_memory": "lots"}, "cannot read max_memory 'lots'"),
        ({"max_memory": 0}, "max_memory must be positive"),
        ({"max_memory": 100}, "prompt 0: max_memory=.* is too small for .* tokens"),
    ],
)
def test_bad_options_name_the_problem(kwargs, message):
    model = tiny_model("rotary")
    with pytest.raises(ValueError, match=message):
        contextual_scores(model, make_prompts(1), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chunk_size": 2.5}, "chunk_size must be a positive int.*got 2.5"),
        ({"chunk_size": "64"}, "chunk_size must be a positive int.*got '64'"),
        ({"chunk_size": 4, "scores_from": "cache"}, "scores_from must be"),
    ],
)
def test_options_of_the_wrong_type_name_the_problem(kwargs, message):
    """A ValueError, or jaxtyping's TypeError naming the argument when the tests run with
    --jaxtyping-packages."""
    model = tiny_model("rotary")
    name = next(iter(kwargs)) if len(kwargs) == 1 else "scores_from"
    with pytest.raises((ValueError, TypeError), match=f"{message}|{name}"):
        chunked_contextual_scores(model, make_prompts(1), **kwargs)


def test_bad_forward_inputs():
    model = tiny_model("rotary")
    tokens = tokenize_prompt(model, make_prompts(1)[0]).tokens
    with pytest.raises(ValueError, match="one sequence as"):
        chunked_forward(model, torch.stack([tokens, tokens]), chunk_size=2)
    with pytest.raises(ValueError, match="out of range"):
        chunked_forward(model, tokens, chunk_size=2, logits_at=[len(tokens)])
    with pytest.raises((ValueError, TypeError), match="logits_at"):
        chunked_forward(model, tokens, chunk_size=2, logits_at="first")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        chunk_bounds(10, 0)


# -------------------------------------------------------------------- memory model
def test_memory_arithmetic():
    model = tiny_model("gqa", n_layers=2, n_heads=4, d_head=8)
    assert attention_cache_bytes(model, 100) == 2 * 4 * 100 * 100 * 4
    assert kv_cache_bytes(model, 100) == 2 * 2 * 100 * 2 * 8 * 4  # 2 KV heads
    assert parse_memory("1.5 GiB") == 3 * 2**29 and parse_memory("2MB") == 2_000_000
    # The estimate grows linearly in the chunk size, and the picked chunk is the largest
    # that fits the budget.
    n = 200
    sizes = [estimate_memory(model, n, c) for c in (1, 2, 3, 50)]
    assert sizes[1] - sizes[0] == sizes[2] - sizes[1] > 0
    budget = estimate_memory(model, n, 37) + 1
    assert chunk_size_for(model, n, budget) == 37
    assert estimate_memory(model, n, 38) > budget
    assert chunk_size_for(model, n, "1GiB") == n
    assert estimate_memory(model, n, 10**6) == estimate_memory(model, n, n)


def test_the_estimate_bounds_the_recorded_benchmark_and_the_docs_quote_it():
    """``benchmarks/results/long_context.json`` holds the peaks measured by
    ``bench_long_context.py``: the estimate behind ``max_memory`` is above each of them
    (a budget it picks is not exceeded) and within 1.8x; the docs quote the 32k case."""
    import json
    from pathlib import Path
    from types import SimpleNamespace

    from transformer_lens import HookedTransformerConfig

    root = Path(__file__).resolve().parents[2]
    rows = json.loads((root / "benchmarks" / "results" / "long_context.json").read_text())
    cfg = HookedTransformerConfig(
        n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257,
        n_ctx=32768, act_fn="gelu", normalization_type="LN",
        positional_embedding_type="rotary", rotary_dim=64,
    )  # fmt: skip
    shape = SimpleNamespace(cfg=cfg)
    chunked = [r for r in rows if r["case"] == "chunked"]
    assert max(r["n_tokens"] for r in chunked) > 32_000
    for r in chunked:
        estimate = estimate_memory(shape, r["n_tokens"], 512) / 2**20
        assert r["peak_mib"] < estimate < 1.8 * r["peak_mib"], r
    docs = (root / "docs" / "long-contexts.md").read_text()
    assert f"# {chunk_size_for(shape, 32_768, '6GiB')} for the GPT-2 small shape" in docs
    assert f"# {estimate_memory(shape, 32_768, 512) / 2**30:.1f} GiB" in docs


# ------------------------------------------------------------------ prompts of a length
@pytest.mark.parametrize("n_tokens", [10, 100, 1001])
def test_synthetic_prompts_of_a_requested_length(n_tokens):
    from focuslens.tasks.lengths import synthetic_retrieval_of_length

    prompts = synthetic_retrieval_of_length(3, n_tokens=n_tokens, seed=1, gold_position="last")
    for p in prompts:
        n_prompt = len(p.text.split()) + 1  # one token per word, plus BOS
        assert p.meta["n_prompt_tokens"] == n_prompt
        assert n_tokens - 6 < n_prompt <= n_tokens  # one more document would not fit
        assert p.meta["target_n_tokens"] == n_tokens
        assert p.meta["gold_position"] == p.n_documents - 1


def test_synthetic_lengths_out_of_reach_are_refused():
    from focuslens.tasks.lengths import synthetic_retrieval_of_length

    with pytest.raises(ValueError, match="n_tokens=5 is too short"):
        synthetic_retrieval_of_length(1, n_tokens=5)
    with pytest.raises(ValueError, match="too long for the synthetic task.*qa_prompt_of_length"):
        synthetic_retrieval_of_length(1, n_tokens=40_000)
    with pytest.raises(ValueError, match="not both"):
        synthetic_retrieval_of_length(1, n_tokens=100, n_documents=3)


def test_qa_prompts_of_a_requested_length_score_the_same_chunked():
    from _tiny import random_text

    from focuslens.tasks import qa_prompt_of_length

    model = tiny_model("rotary")
    gen = torch.Generator().manual_seed(3)
    pool = [("w1", random_text(gen, 12)) for _ in range(30)]
    prompt = qa_prompt_of_length(
        "w7 w8", ["w9"], ("w2", random_text(gen, 12)), pool, tokenizer=model, n_tokens=200
    ).with_response("w3 w4")
    n_prompt = tokenize_prompt(model, prompt).n_prompt
    assert 200 - 20 < n_prompt <= 200 and prompt.meta["n_tokens"] == n_prompt
    one_pass = contextual_scores(model, [prompt])
    assert_scores_close(one_pass, contextual_scores(model, [prompt], chunk_size=64))


def test_greedy_generation_after_a_chunked_prefill_is_the_same():
    from focuslens.model.generation import generate_greedy

    model = tiny_model("rotary")
    tp = tokenize_prompt(model, make_prompts(1)[0])
    prompt = tp.tokens[: tp.n_prompt]
    options = {"max_new_tokens": 6, "stop_ids": ()}
    plain = generate_greedy(model, prompt, **options)
    assert torch.equal(generate_greedy(model, prompt, chunk_size=4, **options).tokens, plain.tokens)
    with model.hooks(fwd_hooks=query_steer(model, [(0, 1), (1, 2)], alpha=6.0)):
        steered = generate_greedy(model, prompt, **options)
        chunked = generate_greedy(model, prompt, chunk_size=4, **options)
    assert not torch.equal(steered.tokens, plain.tokens)  # the steer changes the answer
    assert torch.equal(chunked.tokens, steered.tokens)
    with pytest.raises(ValueError, match="chunk_size=4 needs the KV cache"):
        generate_greedy(model, prompt, chunk_size=4, use_cache=False, **options)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        generate_greedy(model, prompt, chunk_size=0, **options)
