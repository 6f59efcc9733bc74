"""The pipeline on a TransformerBridge (transformer-lens 3.9 and 4.x): generation and chunked
prefill through the bridge's KV cache, steering in them, learning from hooks, and the
self-test on a bridge whose hooks do not fire (TL's native bridge)."""

from __future__ import annotations

import pytest
import torch
from _tiny import random_text

import focuslens
from focuslens import LabeledPrompt, tokenize_prompt
from focuslens.directions import FocusDirections, ModelShape
from focuslens.model.generation import generate_greedy
from focuslens.model.loading import BackendError, check_backend, load_model
from focuslens.model.prefill import chunked_forward

pytestmark = pytest.mark.bridge


@pytest.fixture()
def bridge(hf_llama_folder):
    return load_model(str(hf_llama_folder))


def _prompts(n: int) -> list[LabeledPrompt]:
    rng = torch.Generator().manual_seed(2)
    out = []
    for i in range(n):
        docs = [("w1", random_text(rng, 2 + d % 3)) for d in range(3 + i)]
        out.append(
            LabeledPrompt.from_documents(
                "w4 ?", docs, i % len(docs), ["x"], response=random_text(rng, 3)
            )
        )
    return out


def _directions(model) -> FocusDirections:
    shape = ModelShape.of(model)
    g = torch.Generator().manual_seed(0)
    d_q = torch.randn(shape.n_layers, shape.n_heads, shape.d_head, generator=g) * 2
    d_k = torch.randn(shape.n_layers, shape.n_heads, shape.d_head, generator=g)
    layers = list(range(shape.n_layers))
    return FocusDirections(d_q=d_q, d_k=d_k, shape=shape, heads=[(1, 2), (0, 1)], layers=layers)


def test_generation_on_a_bridge_uses_its_kv_cache(bridge):
    tp = tokenize_prompt(bridge, _prompts(1)[0])
    prompt = tp.tokens[: tp.n_prompt]
    focuslens.model.loading.ensure_backend(bridge)  # its probe passes are not counted below
    calls = []
    with focuslens.model.hooks.pre_hooks(bridge, lambda *a: calls.append(a[3])):
        cached = generate_greedy(bridge, prompt, max_new_tokens=6, stop_ids=())
    # every step after the prompt feeds one token: the cache holds the rest
    assert [c["hidden_states"].shape[1] for c in calls[:: bridge.cfg.n_layers]] == [
        len(prompt),
        *[1] * 5,
    ]
    uncached = generate_greedy(bridge, prompt, max_new_tokens=6, stop_ids=(), use_cache=False)
    chunked = generate_greedy(bridge, prompt, max_new_tokens=6, stop_ids=(), chunk_size=3)
    assert cached.tokens.tolist() == uncached.tokens.tolist() == chunked.tokens.tolist()
    assert len(set(cached.tokens.tolist())) > 1


def test_chunked_scores_on_a_bridge_equal_one_pass(bridge):
    """Chunked contextual scores read each chunk's pattern rows through the bridge's
    Hugging Face cache: the same numbers as one pass, named spans included."""
    prompts = _prompts(3)
    one = focuslens.contextual_scores(bridge, prompts)
    chunked = focuslens.contextual_scores(bridge, prompts, chunk_size=4)
    assert chunked.meta["scores_from"] == "pattern" and chunked.span_names == one.span_names
    for name in one.names:
        torch.testing.assert_close(
            chunked.mass(name, per_example=True),
            one.mass(name, per_example=True),
            atol=1e-5,
            rtol=0,
            equal_nan=True,
        )
    assert one.relevant.std() > 1e-3
    with pytest.raises(ValueError, match="scores_from='keys' reads TransformerLens's KV cache"):
        focuslens.contextual_scores(bridge, prompts, chunk_size=4, scores_from="keys")


def test_evaluate_on_a_bridge_answers_one_prompt_at_a_time_under_an_oracle(bridge):
    """A bridge generates one prompt at a time, so evaluate applies the intervention to
    each prompt alone (a batch of prompts would not match the forward passes), and gets
    the answers of a by-hand loop under the same intervention."""
    from focuslens.model.batched import generates_batched

    prompts = _prompts(3)
    boost = focuslens.SplitSoftmax([(0, 1), (1, 2)], tau=0.1)
    assert not generates_batched(bridge)
    result = focuslens.evaluate(bridge, prompts, intervention=boost, max_new_tokens=3)
    for prompt, row in zip(prompts, result.to_dataframe().itertuples()):
        tp = tokenize_prompt(bridge, prompt)
        with boost.apply(bridge, [prompt]):
            gen = generate_greedy(bridge, tp.tokens[: tp.n_prompt], max_new_tokens=3)
        assert row.prediction == gen.text


@pytest.mark.parametrize("form", ["qk", "scores"])
@pytest.mark.parametrize("positions", ["all", "generated"])
def test_chunked_prefill_on_a_bridge_equals_one_pass_steered(bridge, form, positions):
    """Logits through the bridge's cache, in chunks of 3, equal one pass, with and without
    steering (the score form reads the keys of earlier chunks from the cache)."""
    tp = tokenize_prompt(bridge, _prompts(1)[0])
    directions = _directions(bridge)
    with torch.no_grad():
        plain = bridge(tp.tokens[None])[0]
        torch.testing.assert_close(
            chunked_forward(bridge, tp.tokens, chunk_size=3, logits_at="all"),
            plain,
            atol=1e-5,
            rtol=0,
        )
        with directions.steer(
            bridge, [(1, 2), (0, 1)], 1.5, form=form, positions=positions, n_prompt=tp.n_prompt
        ):
            one = bridge(tp.tokens[None])[0]
            chunked = chunked_forward(bridge, tp.tokens, chunk_size=3, logits_at="all")
    torch.testing.assert_close(chunked, one, atol=1e-5, rtol=0)
    assert (one - plain).abs().max() > 1e-2


def test_a_bridge_that_ignores_its_cache_fails_the_self_test(bridge, monkeypatch):
    """Without passing the cache under its older name, a bridge's attention (on recent
    transformers) never reads it: the self-test says so and generation refuses."""
    import focuslens.model.kvcache as kvcache

    monkeypatch.setattr(kvcache, "_pass_cache", lambda *a: None)
    report = check_backend(bridge, strict=False)
    assert report.failed() == ["the KV cache continues a sequence"], str(report)
    tp = tokenize_prompt(bridge, _prompts(1)[0])
    with pytest.raises(BackendError, match="the KV cache continues a sequence"):
        generate_greedy(bridge, tp.tokens[: tp.n_prompt], max_new_tokens=2)
    # one pass needs no cache: scores still run
    focuslens.contextual_scores(bridge, _prompts(1))


def test_learning_on_a_bridge_equals_the_whole_model_with_directions_added(bridge):
    """The learned method's layer mass, from the bridge's hooked queries and keys, against
    the bridge itself run whole with the directions added at its hooks (and gradients)."""
    from focuslens.directions.inputs import batch_rows, cache_queries_keys
    from focuslens.directions.learn import layer_mass
    from focuslens.scores.reduce import prepare, span_mass

    tps = prepare(bridge, _prompts(2), query="response", sink=0)
    cache = cache_queries_keys(bridge, tps, [1])
    g = torch.Generator().manual_seed(3)
    for i, tp in enumerate(tps):
        d_q = (torch.randn(4, 8, generator=g) * 0.5).requires_grad_()
        d_k = (torch.randn(4, 8, generator=g) * 0.5).requires_grad_()
        rows = batch_rows([tp], "response", len(tp))
        q, k = cache[1][i]
        fast = layer_mass(bridge, 1, (q[None], k[None]), d_q, d_k, rows).mean()
        out = {}
        fwd = [
            ("blocks.1.attn.hook_rot_q", lambda x, hook, d=d_q: x + d),
            ("blocks.1.attn.hook_rot_k", lambda x, hook, d=d_k: x + d.reshape(2, 2, 8).mean(1)),
            ("blocks.1.attn.hook_pattern", lambda x, hook, o=out: o.update(p=x)),
        ]
        with bridge.hooks(fwd_hooks=fwd):
            bridge(tp.tokens[None], stop_at_layer=2)
        slow = span_mass(out["p"], *rows)[..., 0].mean()
        torch.testing.assert_close(fast, slow, atol=1e-6, rtol=0)
        grads = [torch.autograd.grad(m, [d_q])[0] for m in (fast, slow)]
        torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)
        assert grads[0].abs().max() > 1e-4


def test_learning_on_a_bridge_raises_the_relevant_mass(bridge):
    prompts = _prompts(3)
    directions = focuslens.learn_focus_directions(
        bridge, prompts, heads=[(1, 2)], epochs=4, lr=0.1, response="given"
    )
    history = directions.training["loss_history"]["1"]
    assert history[-1] < history[0] - 1e-3
    plain = focuslens.contextual_scores(bridge, prompts, sink=0).relevant[1, 2]
    with directions.steer(bridge, [(1, 2)], alpha=1.0):
        steered = focuslens.contextual_scores(bridge, prompts, sink=0).relevant[1, 2]
    assert steered > plain
    # alpha="auto" on a bridge: the recorded rule, its greedy look-ahead and its climb.
    tps = [focuslens.tokenize_prompt(bridge, p) for p in prompts]
    tokens = [tp.tokens[: tp.n_prompt] for tp in tps]
    with directions.steer(bridge, [(1, 2)], "auto", prompt_tokens=tokens) as state:
        rule = state.chosen["auto"]
        assert rule.search == "climb" and rule.offset >= 0
        assert bool(((state.alpha >= 0) & (state.alpha <= rule.alpha_max + 1e-6)).all())


def _native_bridge():
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = TransformerBridgeConfig(
        d_model=32, n_layers=2, n_heads=4, d_head=8, d_mlp=64, n_ctx=64, d_vocab=140,
        act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
        rotary_dim=8, seed=0, architecture="TransformerLensNative",
    )  # fmt: skip
    bridge = TransformerBridge.boot_native(cfg)
    bridge.enable_compatibility_mode(disable_warnings=True)
    return bridge


def test_native_bridge_hooks_that_never_fire_are_named_never_a_silent_no_op():
    """TransformerLens's native bridge never fires hook_rot_q / hook_rot_k: the self-test
    names them, and steering raises instead of changing nothing."""
    bridge = _native_bridge()
    report = check_backend(bridge, strict=False)
    assert not report.checks["hook_rot_q fires"] and not report.checks["hook_rot_k fires"]
    assert "blocks.0.attn.hook_rot_q never fired" in str(report)
    assert report.checks["hook_z fires"] and report.checks["a write at hook_z takes effect"]
    directions = _directions(bridge)
    with pytest.raises(BackendError, match="hook_rot_q fires"):
        with directions.steer(bridge, [(1, 2)], alpha=1.0):
            pass
    with pytest.raises(BackendError, match="hook_rot_k fires"):
        with directions.steer(bridge, [(1, 2)], alpha=1.0, form="scores"):
            pass
