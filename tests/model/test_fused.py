"""Fused attention against TransformerLens's own (pattern) attention."""

from __future__ import annotations

import pytest
import torch
from _oracles import make_prompts, naive_scores
from _tiny import tiny_model

import focuslens
from focuslens import contextual_scores, tokenize_prompt
from focuslens.directions import FocusDirections, ModelShape
from focuslens.directions.steering import steer
from focuslens.interventions import Pasta, SplitSoftmax
from focuslens.model.fused import fused_attention, fused_unsupported
from focuslens.model.generation import generate_greedy
from focuslens.model.hooks import attn_hook
from focuslens.model.prefill import chunked_forward
from focuslens.scores.result import KINDS

KINDS_OF_MODEL = ["gpt2", "rotary", "gqa", "local"]


def close(a, b, atol=1e-5):
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)


def assert_scores_close(a, b, atol=1e-5):
    for kind in KINDS:
        torch.testing.assert_close(
            a.per_example[kind], b.per_example[kind], atol=atol, rtol=0, equal_nan=True
        )


def untouched(model) -> bool:
    """No swapped forward and no hook left on any attention module or hook point."""
    return all("forward" not in b.attn.__dict__ for b in model.blocks) and all(
        len(p._forward_hooks) == 0 for p in model.hook_dict.values()
    )


def directions(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    dq = torch.randn(cfg.n_layers, cfg.n_heads, cfg.d_head, generator=gen)
    return FocusDirections(dq, torch.randn(dq.shape, generator=gen), ModelShape.of(model))


def tokens_of(model, n=1):
    return [tokenize_prompt(model, p).tokens for p in make_prompts(n)]


# ------------------------------------------------------------------------------ logits
@pytest.mark.parametrize("kind", KINDS_OF_MODEL)
def test_fused_logits_equal_the_pattern_path(kind):
    model = tiny_model(kind)
    tokens = tokens_of(model)[0][None]
    with torch.no_grad():
        plain = model(tokens)
        with fused_attention(model) as fused:
            got = model(tokens)
    close(got, plain)
    assert fused.layers == list(range(model.cfg.n_layers))
    assert fused.fused_calls == dict.fromkeys(fused.layers, 1) and not fused.pattern_calls
    assert untouched(model)


@pytest.mark.parametrize("kind", KINDS_OF_MODEL)
def test_fused_chunks_and_padding_equal_the_pattern_path(kind):
    model = tiny_model(kind)
    tokens = tokens_of(model)[0]
    for chunk in (3, 7):
        plain = chunked_forward(model, tokens, chunk_size=chunk, logits_at="all", fused=False)
        got = chunked_forward(model, tokens, chunk_size=chunk, logits_at="all")
        close(got, plain)
    # A batch with padding (left and right): the real positions agree.
    batch = torch.stack([tokens[:20], tokens[5:25]])
    mask = torch.ones_like(batch)
    mask[0, 15:] = 0
    mask[1, :4] = 0
    with torch.no_grad():
        plain = model(batch, attention_mask=mask)
        with fused_attention(model):
            got = model(batch, attention_mask=mask)
    real = mask.bool()
    close(got[real], plain[real])
    assert untouched(model)


def test_hooks_fire_and_take_writes_under_fused_attention():
    model = tiny_model("rotary")
    tokens = tokens_of(model)[0][None]
    seen: list[str] = []

    def record(act, hook):
        seen.append(hook.name.split(".")[-1])

    points = ["hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k", "hook_z"]
    with model.hooks(fwd_hooks=[(attn_hook(1, p), record) for p in points]):
        with fused_attention(model) as fused:
            model(tokens)
    assert seen == ["hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k", "hook_z"]
    assert fused.fused_calls == {0: 1, 1: 1}

    def zero_head(z, hook):
        z = z.clone()
        z[:, :, 2] = 0
        return z

    with torch.no_grad(), model.hooks(fwd_hooks=[(attn_hook(0, "hook_z"), zero_head)]):
        plain = model(tokens)
        with fused_attention(model):
            got = model(tokens)
    assert (plain - model(tokens)).abs().max() > 1e-3  # the ablation changes the logits
    close(got, plain)


def test_a_hooked_pattern_runs_transformer_lens_attention_on_that_layer_only():
    model = tiny_model("gqa")
    tokens = tokens_of(model)[0][None]

    def boost(pattern, hook):
        return pattern * torch.linspace(0.5, 1.5, pattern.shape[-1])

    with torch.no_grad(), model.hooks(fwd_hooks=[(attn_hook(1, "hook_pattern"), boost)]):
        plain = model(tokens)
        with fused_attention(model) as fused:
            got = model(tokens)
    assert (plain - model(tokens)).abs().max() > 1e-3
    close(got, plain)
    assert fused.fused_calls == {0: 1} and fused.pattern_calls == {1: 1}


@pytest.mark.parametrize("form", ["qk", "scores"])
@pytest.mark.parametrize("kind", KINDS_OF_MODEL)
def test_steered_logits_equal_the_pattern_path(kind, form):
    model = tiny_model(kind)
    tokens = tokens_of(model)[0]
    fd = directions(model)
    with torch.no_grad():
        plain = model(tokens[None])
        with steer(fd, model, [(0, 1), (1, 3)], 2.0, form=form):
            pattern = model(tokens[None])
            with fused_attention(model) as fused:
                got = model(tokens[None])
            chunked = chunked_forward(model, tokens, chunk_size=5, logits_at="all")
    assert (pattern - plain).abs().max() > 1e-2
    close(got, pattern)
    close(chunked, pattern[0], atol=1e-4)
    assert bool(fused.pattern_calls) == (form == "scores")
    assert untouched(model)


# ------------------------------------------------------------------------------ contracts
def test_modules_restored_after_an_exception_and_in_nested_contexts():
    model = tiny_model("gpt2")
    tokens = tokens_of(model)[0][None]
    before = model(tokens)
    forwards = [b.attn.forward for b in model.blocks]
    with pytest.raises(RuntimeError, match="boom"):
        with fused_attention(model):
            raise RuntimeError("boom")
    assert untouched(model)
    with fused_attention(model) as outer:
        with fused_attention(model) as inner:
            model(tokens)
        assert inner.layers == [] and all("forward" in b.attn.__dict__ for b in model.blocks)
        model(tokens)
    assert outer.fused_calls == {0: 2, 1: 2}
    assert untouched(model) and [b.attn.forward for b in model.blocks] == forwards
    assert torch.equal(model(tokens), before)


def test_unsupported_attention_is_left_alone_or_refused():
    model = tiny_model("gpt2")
    model.cfg.attn_scores_soft_cap = 30.0
    try:
        assert fused_unsupported(model) == "attention-score soft-capping"
        with fused_attention(model) as fused:
            model(tokens_of(model)[0][None])
        assert fused.layers == [] and "soft-capping" in fused.reason and untouched(model)
        with pytest.raises(ValueError, match="soft-capping"):
            with fused_attention(model, strict=True):
                pass
        scores = contextual_scores(model, make_prompts(1))
        assert scores.meta["scores_from"] == "pattern"
    finally:
        model.cfg.attn_scores_soft_cap = -1.0
    assert fused_unsupported(model) is None


# ------------------------------------------------------------------------------ scores
@pytest.mark.parametrize("kind", KINDS_OF_MODEL)
def test_fused_scores_equal_the_pattern_path_and_the_oracle(kind):
    model = tiny_model(kind)
    prompts = make_prompts(3)
    oracle = naive_scores(model, prompts)
    pattern = contextual_scores(model, prompts, scores_from="pattern", batch_size=2)
    fused = contextual_scores(model, prompts, batch_size=2)
    chunked = contextual_scores(model, prompts, chunk_size=5)
    # a local layer is read from its pattern, the global ones from their keys
    assert fused.meta["scores_from"] == ("mixed" if kind == "local" else "keys")
    assert pattern.meta["scores_from"] == "pattern"
    assert_scores_close(fused, pattern)
    assert_scores_close(chunked, pattern)
    for name, expected in oracle.items():
        torch.testing.assert_close(fused.per_example[name], expected, atol=1e-5, rtol=0)
    assert fused.relevant.std() > 0.01
    assert untouched(model)


def test_fused_scores_under_steering_and_pattern_interventions():
    model = tiny_model("gqa")
    prompts = make_prompts(1)  # chunked scores run one prompt at a time
    plain = contextual_scores(model, prompts)
    fd = directions(model, seed=1)
    cases = [
        (lambda: steer(fd, model, [(0, 1), (1, 3)], 2.0), "keys"),
        (lambda: SplitSoftmax([(1, 0)], tau=0.2).apply(model, prompts), "mixed"),
        (lambda: Pasta([(0, 1), (1, 0)], alpha=0.05).apply(model, prompts), "pattern"),
    ]
    for make, route in cases:
        with make():
            pattern = contextual_scores(model, prompts, scores_from="pattern")
            fused = contextual_scores(model, prompts)
            chunked = contextual_scores(model, prompts, chunk_size=4)
        assert (pattern.relevant - plain.relevant).abs().max() > 1e-3
        assert fused.meta["scores_from"] == route == chunked.meta["scores_from"]
        assert_scores_close(fused, pattern)
        assert_scores_close(chunked, pattern)
    assert untouched(model)


def test_demo_model_scores_logits_and_generation():
    model = focuslens.load_demo_model()
    prompts = focuslens.tasks.synthetic_retrieval(6, n_documents=8, seed=0)
    assert_scores_close(
        contextual_scores(model, prompts), contextual_scores(model, prompts, scores_from="pattern")
    )
    tp = tokenize_prompt(model, prompts[0])
    with torch.no_grad():
        plain = model(tp.tokens[None])
        with fused_attention(model):
            close(model(tp.tokens[None]), plain)
    for p in prompts[:3]:
        tp = tokenize_prompt(model, p)
        prompt = tp.tokens[: tp.n_prompt]
        a = generate_greedy(model, prompt, max_new_tokens=6, fused=False)
        b = generate_greedy(model, prompt, max_new_tokens=6)
        assert torch.equal(a.tokens, b.tokens) and (a.text, a.stop_reason) == (
            b.text,
            b.stop_reason,
        )
    assert untouched(model)
