"""Steering with focus directions against a hand-written forward pass, under the KV cache,
with the key-direction fact, automatic magnitude and hook hygiene."""

from __future__ import annotations

import einops
import pytest
import torch
from _tiny import random_text, tiny_model
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

import focuslens
from focuslens import LabeledPrompt
from focuslens.directions import FocusDirections, ModelShape
from focuslens.directions.magnitude import STATISTICS, AutoAlpha, bisect_alpha
from focuslens.directions.steering import Steering, steer

KINDS = ["gpt2", "rotary", "gqa"]
HEADS = [(0, 1), (1, 0), (1, 3)]


def random_directions(model, seed=0, scale=1.0) -> FocusDirections:
    g = torch.Generator().manual_seed(seed)
    shape = ModelShape.of(model)
    size = (shape.n_layers, shape.n_heads, shape.d_head)
    return FocusDirections(
        d_q=torch.randn(size, generator=g) * scale,
        d_k=torch.randn(size, generator=g) * scale,
        shape=shape,
        heads=[(1, 0), (0, 1), (1, 3), (0, 0)],
    )


def hand_logits(model, tokens, directions, heads, alpha):
    """An independent forward pass: q and k computed from the weights, per *query* head
    (keys repeated for GQA, as in the authors' code), ``q + alpha d_q`` and
    ``k + alpha d_k`` on the chosen heads only, causal softmax, no hooks."""
    cfg = model.cfg
    x = model.embed(tokens)
    if cfg.positional_embedding_type == "standard":
        x = x + model.pos_embed(tokens)
    n = tokens.shape[1]
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        h = block.ln1(x)
        q = einops.einsum(h, attn.W_Q, "b p m, h m d -> b p h d") + attn.b_Q
        k = einops.einsum(h, attn.W_K, "b p m, h m d -> b p h d") + attn.b_K
        v = einops.einsum(h, attn.W_V, "b p m, h m d -> b p h d") + attn.b_V
        if cfg.positional_embedding_type == "rotary":
            q, k = attn.apply_rotary(q, 0, None), attn.apply_rotary(k, 0, None)
        q, k = q.clone(), k.clone()
        for l, head in heads:
            if l == layer:
                q[:, :, head] += alpha * directions.d_q[l, head]
                k[:, :, head] += alpha * directions.d_k[l, head]
        scores = einops.einsum(q, k, "b i h d, b j h d -> b h i j") / attn.attn_scale
        pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        z = einops.einsum(pattern, v, "b h i j, b j h d -> b i h d")
        x = x + einops.einsum(z, attn.W_O, "b i h d, h d m -> b i m") + attn.b_O
        x = x + block.mlp(block.ln2(x))
    return model.unembed(model.ln_final(x))


def sample_tokens(model, n_words=12, seed=0):
    rng = torch.Generator().manual_seed(seed)
    return model.to_tokens(random_text(rng, n_words))


@pytest.mark.parametrize("kind", KINDS)
def test_hand_forward_oracle_matches_the_model(kind):
    model = tiny_model(kind)
    tokens = sample_tokens(model)
    fd = random_directions(model)
    torch.testing.assert_close(
        hand_logits(model, tokens, fd, HEADS, 0.0), model(tokens), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("form", ["qk", "scores"])
@pytest.mark.parametrize("kind", KINDS)
def test_steering_equals_hand_computation(kind, form):
    model = tiny_model(kind)
    tokens = sample_tokens(model)
    fd = random_directions(model)
    expected = hand_logits(model, tokens, fd, HEADS, 0.7)
    with torch.no_grad(), steer(fd, model, HEADS, 0.7, form=form):
        got = model(tokens)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # Not vacuous: the steer moves the logits well beyond the tolerance.
    assert (expected - model(tokens)).abs().max() > 1e-2


@pytest.mark.parametrize("form", ["qk", "scores"])
@pytest.mark.parametrize("kind", KINDS)
def test_alpha_zero_is_bit_identical(kind, form):
    model = tiny_model(kind)
    tokens = sample_tokens(model)
    fd = random_directions(model)
    with torch.no_grad():
        base = model(tokens)
        with steer(fd, model, HEADS, 0.0, form=form):
            same = model(tokens)
    assert torch.equal(base, same)


@pytest.mark.parametrize("kind", KINDS)
def test_heads_outside_the_set_are_untouched(kind):
    model = tiny_model(kind)
    tokens = sample_tokens(model)
    fd = random_directions(model)
    names = lambda n: n.startswith("blocks.1.attn.hook_") and n.split("_")[-1] in ("q", "pattern")  # noqa: E731
    _, base = model.run_with_cache(tokens, names_filter=names)
    with steer(fd, model, [(1, 2)], 2.0):
        _, steered = model.run_with_cache(tokens, names_filter=names)
    q_name = "hook_rot_q" if kind != "gpt2" else "hook_q"
    q0, q1 = base[f"blocks.1.attn.{q_name}"], steered[f"blocks.1.attn.{q_name}"]
    p0, p1 = base["blocks.1.attn.hook_pattern"], steered["blocks.1.attn.hook_pattern"]
    others = [0, 1, 3]
    assert torch.equal(q0[:, :, others], q1[:, :, others])
    torch.testing.assert_close(q1[:, :, 2] - q0[:, :, 2], 2.0 * fd.d_q[1, 2].expand_as(q0[:, :, 2]))
    if kind == "gqa":  # head 3 shares KV head 1 with head 2: the key vector cancels
        torch.testing.assert_close(p0[:, others], p1[:, others], atol=1e-6, rtol=0)
    else:
        assert torch.equal(p0[:, others], p1[:, others])
    assert (p0[:, 2] - p1[:, 2]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_key_direction_changes_no_pattern(kind):
    model = tiny_model(kind)
    tokens = sample_tokens(model)
    fd = random_directions(model, scale=3.0)
    fd.d_q.zero_()
    names = lambda n: n.endswith("hook_pattern")  # noqa: E731
    _, base = model.run_with_cache(tokens, names_filter=names)
    with steer(fd, model, HEADS, 1.0):
        _, steered = model.run_with_cache(tokens, names_filter=names)
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(
            base["pattern", layer], steered["pattern", layer], atol=1e-5, rtol=0
        )
    # The cancellation needs the vector at *every* key: on half of them it shows.
    k_name = "blocks.1.attn.hook_rot_k" if kind != "gpt2" else "blocks.1.attn.hook_k"

    def half(k, hook):
        k = k.clone()
        k[:, : k.shape[1] // 2] += 3.0 * fd.d_k[1, : k.shape[2]]
        return k

    with model.hooks(fwd_hooks=[(k_name, half)]):
        _, partial = model.run_with_cache(tokens, names_filter=names)
    assert (partial["pattern", 1] - base["pattern", 1]).abs().max() > 1e-2


def _cached_logits(model, tokens, n_prompt):
    """Prompt in one pass, then one token at a time through the KV cache."""
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
    out = [model(tokens[:, :n_prompt], past_kv_cache=cache)[:, -1]]
    for pos in range(n_prompt, tokens.shape[1]):
        out.append(model(tokens[:, pos : pos + 1], past_kv_cache=cache)[:, -1])
    return torch.stack(out, 1)


@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
@pytest.mark.parametrize("form", ["qk", "scores"])
@pytest.mark.parametrize("kind", KINDS)
def test_batched_forward_equals_cached_generation(kind, form, positions):
    model = tiny_model(kind)
    tokens = sample_tokens(model, n_words=14)
    n_prompt = 9
    fd = random_directions(model)
    with (
        torch.no_grad(),
        steer(fd, model, HEADS, 0.8, form=form, positions=positions, n_prompt=n_prompt),
    ):
        full = model(tokens)[:, n_prompt - 1 :]
        stepped = _cached_logits(model, tokens, n_prompt)
    # One step at a time vs one pass: float32 rounding differs by ~1e-5 on logits of ~2.
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert (full - model(tokens)[:, n_prompt - 1 :]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["gpt2", "rotary"])
def test_positions_select_query_rows(kind):
    model = tiny_model(kind)
    tokens = sample_tokens(model)
    n = tokens.shape[1]
    fd = random_directions(model)
    with torch.no_grad():
        base = model(tokens)
        with steer(fd, model, HEADS, 0.8):
            all_rows = model(tokens)
        with steer(fd, model, HEADS, 0.8, positions="prompt", n_prompt=n):
            prompt_rows = model(tokens)
        with steer(fd, model, HEADS, 0.8, positions="generated", n_prompt=n, form="scores"):
            none = model(tokens)
        with steer(fd, model, HEADS, 0.8, positions="generated", n_prompt=5):
            late = model(tokens)
    torch.testing.assert_close(prompt_rows, all_rows, atol=1e-6, rtol=0)
    torch.testing.assert_close(none, base, atol=1e-6, rtol=0)
    # Rows before the first generated position are causal-only: unchanged.
    torch.testing.assert_close(late[:, :5], base[:, :5], atol=1e-6, rtol=0)
    assert (late[:, 5:] - base[:, 5:]).abs().max() > 1e-3


def test_per_sequence_alpha_tensor():
    model = tiny_model("rotary")
    tokens = torch.cat([sample_tokens(model, seed=1), sample_tokens(model, seed=2)])
    fd = random_directions(model)
    with torch.no_grad():
        with steer(fd, model, HEADS, torch.tensor([0.0, 0.5])):
            both = model(tokens)
        with steer(fd, model, HEADS, 0.5):
            second = model(tokens[1:])
        torch.testing.assert_close(both[0], model(tokens[:1])[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(both[1], second[0], atol=1e-6, rtol=0)


def _no_hooks_left(model):
    assert not model._forward_pre_hooks
    for name, module in model.named_modules():
        assert not module._forward_hooks, name
        assert not module._forward_pre_hooks, name


def test_hooks_removed_after_exit_exception_and_interrupted_generation():
    model = tiny_model("rotary")
    fd = random_directions(model)
    fd = fd.__class__(**{**fd.__dict__, "training": {"auto": _auto_table(model, 0.5)}})
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = sample_tokens(model)
    for alpha in (0.5, "auto"):
        with steer(fd, model, HEADS, alpha):
            model(tokens)
        _no_hooks_left(model)
        with pytest.raises(RuntimeError, match="boom"), steer(fd, model, HEADS, alpha):
            raise RuntimeError("boom")
        _no_hooks_left(model)
        calls = {"n": 0}

        def interrupt(x, hook, calls=calls):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
            return x

        with pytest.raises(KeyboardInterrupt), steer(fd, model, HEADS, alpha, form="scores"):
            with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", interrupt)]):
                model.generate(tokens, max_new_tokens=5, verbose=False, use_past_kv_cache=True)
        _no_hooks_left(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k


def _auto_table(model, value):
    return {
        "statistic": "focus",
        "window": 3,
        "sink": 1,
        "table": [[value] * model.cfg.n_heads] * model.cfg.n_layers,
    }


def test_generate_with_steering_matches_uncached():
    model = tiny_model("gqa")
    fd = random_directions(model)
    tokens = sample_tokens(model)
    kw = dict(max_new_tokens=6, verbose=False, do_sample=False)
    with steer(fd, model, HEADS, 0.8):
        cached = model.generate(tokens, use_past_kv_cache=True, **kw)
        uncached = model.generate(tokens, use_past_kv_cache=False, **kw)
    assert torch.equal(cached, uncached)


def test_bisect_alpha_on_a_known_curve():
    rule = AutoAlpha(target=0.6, alpha_max=2.0, tolerance=1e-3, max_iter=30)
    curve = lambda a: torch.tanh(a) * torch.tensor([1.0, 1.0, 0.3]) + torch.tensor([0.0, 0.7, 0.0])  # noqa: E731
    alpha, stat = bisect_alpha(curve, rule, 3)
    assert abs(float(alpha[0]) - float(torch.atanh(torch.tensor(0.6)))) < 1e-2
    assert float(alpha[1]) == 0.0  # already above the target
    assert float(alpha[2]) == 2.0  # unreachable: the largest alpha
    torch.testing.assert_close(stat, curve(alpha), atol=1e-6, rtol=0)


def _last_row_statistic(model, fd, heads, tokens, alpha, rule):
    """The auto statistic from the full attention cache of a run at a fixed alpha."""
    with steer(fd, model, heads, float(alpha)):
        _, cache = model.run_with_cache(tokens[None], names_filter="blocks.1.attn.hook_pattern")
    rows = cache["pattern", 1][0, [h for _, h in heads], -1]  # last query row, [heads, key]
    return float(STATISTICS[rule.statistic](rows[None], rule).mean())


def test_auto_reaches_its_target_checked_on_the_full_cache():
    model = tiny_model("rotary", n_heads=4)
    fd = random_directions(model, scale=2.0)
    prompts = [sample_tokens(model, seed=s)[0] for s in (3, 4, 5)]
    heads = [(1, 0), (1, 3)]
    rule = AutoAlpha(target=0.8, window=3, sink=1, alpha_max=4.0, tolerance=2e-3, max_iter=14)
    with steer(fd, model, heads, "auto", prompt_tokens=prompts, auto=rule) as state:
        alphas = state.alpha.clone()
    inside = 0
    for tokens, alpha in zip(prompts, alphas.tolist()):
        stat = _last_row_statistic(model, fd, heads, tokens, alpha, rule)
        if alpha == 0.0:  # already focused enough: no steering
            assert stat >= rule.target - rule.tolerance
        elif alpha == rule.alpha_max:  # out of reach
            assert stat < rule.target
        else:
            inside += 1
            assert abs(stat - rule.target) <= rule.tolerance
    assert inside >= 1 and alphas.unique().numel() >= 2  # one alpha per prompt
    # Lazy calibration (no prompt tokens given) picks the same alpha per sequence.
    with steer(fd, model, heads, "auto", auto=rule) as state:
        for tokens, alpha in zip(prompts, alphas):
            model(tokens[None])
            torch.testing.assert_close(state.alpha, alpha[None], atol=1e-6, rtol=0)


def test_steering_intervention_in_evaluate():
    model = tiny_model("rotary")
    fd = random_directions(model)
    rng = torch.Generator().manual_seed(0)
    prompts = [
        LabeledPrompt.from_documents(
            "w7", [("w1", random_text(rng, 3)) for _ in range(3)], 1, ["w5"], instruction="w9"
        )
        for _ in range(3)
    ]
    kw = dict(max_new_tokens=3, stop_strings=(), progress=False)
    base = focuslens.evaluate(model, prompts, **kw).to_dataframe()
    zero = focuslens.evaluate(model, prompts, intervention=fd.steering(HEADS, 0.0), **kw)
    assert list(zero.to_dataframe()["prediction"]) == list(base["prediction"])
    strong = fd.steering(HEADS, 5.0, positions="generated")
    out = focuslens.evaluate(model, prompts, intervention=strong, heads=HEADS, **kw)
    assert out.n == 3 and strong.last_alpha == [5.0]
    _no_hooks_left(model)


def test_clear_errors():
    model = tiny_model("rotary")
    other = tiny_model("gqa")
    fd = random_directions(model)
    with pytest.raises(ValueError, match=r"2 layers x 4 heads \(4 KV heads\).*2 KV heads"):
        with steer(fd, other, HEADS, 1.0):
            pass
    with pytest.raises(ValueError, match="needs n_prompt"):
        with steer(fd, model, HEADS, 1.0, positions="generated"):
            pass
    with pytest.raises(ValueError, match="form must be one of"):
        with steer(fd, model, HEADS, 1.0, form="weights"):
            pass
    partial = FocusDirections(fd.d_q, fd.d_k, fd.shape, layers=[1])
    with pytest.raises(ValueError, match=r"L0H1.*layers without focus directions"):
        with steer(partial, model, HEADS, 1.0):
            pass
    with pytest.raises(ValueError, match="carry none"):
        with steer(fd, model, HEADS, "auto"):
            pass
    with pytest.raises(ValueError, match="alpha must be"):
        with steer(fd, model, HEADS, "max"):
            pass
    assert isinstance(fd.steering(HEADS, 0.2), Steering)
    _no_hooks_left(model)


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_alpha_is_refused(alpha):
    """alpha=nan would zero the steered heads' attention and every answer would be NONE."""
    model = tiny_model("rotary")
    fd = random_directions(model)
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        with steer(fd, model, HEADS, alpha):
            pass
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        fd.steering(HEADS, alpha)
    with pytest.raises(ValueError, match=r"alpha must be a finite number \(in float32\)"):
        fd.steering(HEADS, 1e300)  # finite in Python, infinite in the activations
    with pytest.raises(ValueError, match="alpha must be finite"):
        with steer(fd, model, HEADS, torch.tensor([1.0, alpha])):
            pass
    assert all(not point.fwd_hooks for point in model.hook_dict.values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_directions_steer_a_float32_model(dtype):
    """Directions stored in bf16/fp16 are cast to the activation's dtype in the hooks."""
    model = tiny_model("gqa")
    tokens = sample_tokens(model)
    fd = random_directions(model)
    half = fd.to(dtype=dtype)
    with torch.no_grad():
        with steer(fd.to(dtype=dtype).to(dtype=torch.float32), model, HEADS, 0.7):
            expected = model(tokens)
        with steer(half, model, HEADS, 0.7):
            got = model(tokens)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
