"""Split-softmax, PASTA and head ablation against hand computations on tiny models."""

from __future__ import annotations

import math

import pytest
import torch
from _tiny import labeled_prompts, tiny_model
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from focuslens import tokenize_prompt
from focuslens.heads import HeadSet
from focuslens.interventions import HeadAblation, Pasta, SplitSoftmax, head_means

ALL_LAYERS = ["blocks.0.attn.", "blocks.1.attn."]


def capture(model, tokens, intervention, prompts, point="hook_pattern", before="hook_pattern"):
    """Run ``tokens`` under the intervention; record ``before`` (a hook registered before
    the intervention's) and ``point`` (registered after it) for every layer."""
    seen = {"before": {}, "after": {}}

    def saver(store):
        def hook(x, hook):
            store[hook.layer()] = x.detach().clone()

        return hook

    first = [(p + before, saver(seen["before"])) for p in ALL_LAYERS]
    last = [(p + point, saver(seen["after"])) for p in ALL_LAYERS]
    with model.hooks(fwd_hooks=first), intervention.apply(model, prompts):
        with model.hooks(fwd_hooks=last):
            logits = model(tokens)
    return seen["before"], seen["after"], logits


def one(model, prompt):
    tp = tokenize_prompt(model, prompt)
    return tp, tp.tokens[None]


def no_hooks_left(model):
    return all(
        len(hp._forward_hooks) == 0 and len(hp._backward_hooks) == 0
        for hp in model.hook_dict.values()
    ) and all(len(b.attn._forward_pre_hooks) == 0 for b in model.blocks)


# --------------------------------------------------------------------- split-softmax
@pytest.mark.parametrize("kind", ["gpt2", "rotary", "gqa"])
@pytest.mark.parametrize("tau", [0.1, 0.5, 3.0])
def test_split_softmax_sets_span_mass_to_p_to_the_tau(kind, tau):
    model = tiny_model(kind)
    prompt = labeled_prompts(3)[2]
    tp, tokens = one(model, prompt)
    heads = HeadSet([(0, 1), (1, 0), (1, 3)])
    before, after, _ = capture(model, tokens, SplitSoftmax(heads, tau), prompt)
    s, e = tp.relevant
    for layer in range(2):
        a, b = before[layer][0].double(), after[layer][0].double()
        for head in range(4):
            if (layer, head) not in heads:
                assert torch.equal(after[layer][0, head], before[layer][0, head])
                continue
            p, p_new = a[head, :, s:e].sum(-1), b[head, :, s:e].sum(-1)
            visible = p > 0  # rows before the span cannot see it: left as they are
            torch.testing.assert_close(p_new[visible], p[visible] ** tau, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(b[head][~visible], a[head][~visible], atol=0, rtol=0)
            torch.testing.assert_close(b[head].sum(-1), torch.ones_like(p), atol=1e-6, rtol=0)
            # Shape kept inside and outside the span: a per-row rescaling of each part.
            inside = a[head, visible, s:e] * (p_new[visible] / p[visible])[:, None]
            torch.testing.assert_close(b[head, visible, s:e], inside, atol=1e-6, rtol=1e-5)
            out_scale = ((1 - p_new) / (1 - p))[visible][:, None]
            torch.testing.assert_close(
                b[head, visible, :s], a[head, visible, :s] * out_scale, atol=1e-6, rtol=1e-5
            )
        assert (p_new[visible] - p[visible]).abs().max() > 1e-3  # the test can fail


@pytest.mark.parametrize("kind", ["gpt2", "gqa"])
def test_tau_one_is_bit_identical(kind):
    model = tiny_model(kind)
    prompts = labeled_prompts(2)
    tp, tokens = one(model, prompts[0])
    every = [(l, h) for l in range(2) for h in range(4)]
    clean = model(tokens)
    with SplitSoftmax(every, 1.0).apply(model, prompts[0]):
        same = model(tokens)
    with Pasta(every, 1.0).apply(model, prompts[0]):
        same_pasta = model(tokens)
    with SplitSoftmax(every, 0.9).apply(model, prompts[0]):
        changed = model(tokens)
    assert torch.equal(same, clean) and torch.equal(same_pasta, clean)
    assert not torch.allclose(changed, clean, atol=1e-4)


def test_split_softmax_right_padded_batch_equals_one_by_one():
    model = tiny_model("gqa")
    prompts = labeled_prompts(3)
    tps = [tokenize_prompt(model, p) for p in prompts]
    length = max(len(tp) for tp in tps)
    tokens = torch.zeros(3, length, dtype=torch.long)
    for b, tp in enumerate(tps):
        tokens[b, : len(tp)] = tp.tokens
    lengths = {len(tp) for tp in tps}
    assert len(lengths) > 1  # really padded
    boost = SplitSoftmax([(0, 2), (1, 1)], 0.2)
    with boost.apply(model, tps):  # TokenizedPrompts are accepted as well
        batched = model(tokens)
    for b, prompt in enumerate(prompts):
        with boost.apply(model, prompt):
            alone = model(tps[b].tokens[None])
        torch.testing.assert_close(batched[b, : len(tps[b])], alone[0], atol=1e-5, rtol=0)


def cached_logits(model, tokens, n_prompt):
    """Prefill the prompt, then feed the rest one token at a time through the KV cache."""
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
    ones = torch.ones_like
    out = [
        model(tokens[:, :n_prompt], past_kv_cache=cache, attention_mask=ones(tokens[:, :n_prompt]))
    ]
    for i in range(n_prompt, tokens.shape[1]):
        step = tokens[:, i : i + 1]
        out.append(model(step, past_kv_cache=cache, attention_mask=ones(step)))
    return torch.cat(out, dim=1)


@pytest.mark.parametrize(
    "make",
    [
        lambda heads, pos: SplitSoftmax(heads, 0.2, positions=pos),
        lambda heads, pos: Pasta(heads, 0.05, positions=pos),
        lambda heads, pos: HeadAblation(heads, positions=pos),
    ],
    ids=["split", "pasta", "ablation"],
)
@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
def test_kv_cache_generation_equals_full_forward(make, positions):
    model = tiny_model("rotary")
    prompt = labeled_prompts(3)[1].with_response("w3 w4 w5 w6")
    tp, tokens = one(model, prompt)
    intervention = make([(0, 0), (1, 2)], positions)
    clean = model(tokens)
    with intervention.apply(model, prompt):
        full = model(tokens)
        cached = cached_logits(model, tokens, tp.n_prompt)
    # The cache itself reorders float sums: ~1e-5 apart without any intervention.
    torch.testing.assert_close(cached, full, atol=5e-5, rtol=0)
    n = tp.n_prompt
    changed = (full - clean).abs().amax(-1)[0]  # per position
    if positions == "generated":
        # Rows of the prompt are untouched; the last prompt row predicts the first
        # generated token and is still a prompt row.
        assert changed[:n].max() == 0 and changed[n:].min() > 1e-3
    elif positions == "prompt":
        assert changed[:n].max() > 1e-3
    else:
        assert changed[:n].max() > 1e-3 and changed[n:].min() > 1e-3
    assert no_hooks_left(model)


# ------------------------------------------------------------------------------ PASTA
@pytest.mark.parametrize("boost", ["relevant", "others"])
@pytest.mark.parametrize("kind", ["gpt2", "gqa"])
def test_pasta_matches_hand_computation(boost, kind):
    model = tiny_model(kind)
    prompt = labeled_prompts(2)[1]
    tp, tokens = one(model, prompt)
    heads = HeadSet([(0, 3), (1, 1)])
    alpha = 0.05
    scores, after, _ = capture(
        model, tokens, Pasta(heads, alpha, boost=boost), prompt, before="hook_attn_scores"
    )
    _, clean = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    s, e = tp.relevant
    n = tokens.shape[1]
    in_span = torch.zeros(n, dtype=torch.bool)
    in_span[s:e] = True
    down = ~in_span if boost == "relevant" else in_span
    for layer, head in heads:
        # Logit form: log(alpha) added to the down-weighted keys, causal mask kept.
        logits = scores[layer][0, head].double() + math.log(alpha) * down.double()
        expected = torch.softmax(logits, -1)
        torch.testing.assert_close(after[layer][0, head].double(), expected, atol=1e-6, rtol=0)
    # Weight form on layer 0, whose input the intervention does not change: the clean
    # pattern with the down-weighted keys scaled by alpha, renormalised.
    a = clean["pattern", 0][0, 3].double()
    w = a * torch.where(down, alpha, 1.0).double()
    torch.testing.assert_close(
        after[0][0, 3].double(), w / w.sum(-1, keepdim=True), atol=1e-6, rtol=0
    )
    untouched = [(l, h) for l in range(2) for h in range(4) if (l, h) not in heads]
    for layer, head in untouched:
        # The pattern of an untouched head: equal to the softmax of its own logits.
        expected = torch.softmax(scores[layer][0, head].double(), -1)
        torch.testing.assert_close(after[layer][0, head].double(), expected, atol=1e-6, rtol=0)
    # The span's mass moves in the direction asked for, on rows that see the span.
    p_clean = a[:, s:e].sum(-1)[e:]
    p_new = after[0][0, 3, e:, s:e].double().sum(-1)
    assert ((p_new > p_clean) if boost == "relevant" else (p_new < p_clean)).all()


# --------------------------------------------------------------------------- ablation
def test_head_means_equal_full_cache_mean():
    model = tiny_model("gqa")
    prompts = labeled_prompts(3)
    means = head_means(model, prompts, batch_size=2)
    zs = {l: [] for l in range(2)}
    for p in prompts:
        _, cache = model.run_with_cache(tokenize_prompt(model, p).tokens[None])
        for l in range(2):
            zs[l].append(cache["z", l][0])
    for l in range(2):
        expected = torch.cat(zs[l]).mean(0)  # [head, d_head] over all real tokens
        torch.testing.assert_close(means[l], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_head_ablation_equals_hand_hook(mode):
    model = tiny_model("rotary")
    prompts = labeled_prompts(2)
    tp, tokens = one(model, prompts[0])
    means = head_means(model, prompts) if mode == "mean" else None
    ablation = HeadAblation([(0, 1), (1, 2)], mode, means=means)
    with ablation.apply(model):
        got = model(tokens)

    def by_hand(z, hook, head):
        z = z.clone()
        z[:, :, head] = 0 if mode == "zero" else means[hook.layer(), head]
        return z

    fwd = [
        ("blocks.0.attn.hook_z", lambda z, hook: by_hand(z, hook, 1)),
        ("blocks.1.attn.hook_z", lambda z, hook: by_hand(z, hook, 2)),
    ]
    with model.hooks(fwd_hooks=fwd):
        expected = model(tokens)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(got, model(tokens), atol=1e-4)


# ----------------------------------------------------------------------- hook hygiene
@pytest.mark.parametrize(
    "intervention",
    [
        SplitSoftmax([(0, 0), (1, 3)], 0.1),
        Pasta([(1, 1)], 0.01),
        HeadAblation([(0, 2)], positions="generated"),
    ],
    ids=["split", "pasta", "ablation"],
)
def test_hooks_removed_after_exit_and_exception(intervention):
    model = tiny_model("gqa")
    prompt = labeled_prompts(1)[0]
    _, tokens = one(model, prompt)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    clean = model(tokens)
    with intervention.apply(model, prompt):
        inside = model(tokens)
    assert no_hooks_left(model) and not torch.equal(inside, clean)
    with pytest.raises(RuntimeError, match="boom"):
        with intervention.apply(model, prompt):
            model(tokens)
            raise RuntimeError("boom")
    assert no_hooks_left(model)
    assert torch.equal(model(tokens), clean)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_evaluate_accepts_the_interventions():
    from focuslens.evaluation import evaluate

    model = tiny_model("rotary")
    prompts = labeled_prompts(2)
    for intervention in (SplitSoftmax([(1, 0)], 0.1), Pasta([(1, 0)], 0.1)):
        result = evaluate(
            model,
            prompts,
            intervention=intervention,
            heads=[(1, 0)],
            max_new_tokens=3,
            progress=False,
        )
        assert result.n == 2 and no_hooks_left(model)


# -------------------------------------------------------------------------- bad input
def test_bad_input_names_the_problem():
    model = tiny_model("rotary")
    prompt = labeled_prompts(1)[0]
    absent = prompt.distractors_only()
    with pytest.raises(ValueError, match="L2H0 does not exist in a model with 2 layers"):
        SplitSoftmax([(2, 0)], 0.5).apply(model, prompt)
    with pytest.raises(ValueError, match="L0H4 does not exist"):
        Pasta([(0, 4)], 0.5).apply(model, prompt)
    with pytest.raises(ValueError, match="needs at least one"):
        SplitSoftmax([], 0.5)
    with pytest.raises(ValueError, match="needs at least one"):
        HeadAblation(HeadSet())
    for tau in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tau must be a positive finite number"):
            SplitSoftmax([(0, 0)], tau)
    for tau in ("0.5", True, None):
        with pytest.raises(TypeError, match="tau"):
            SplitSoftmax([(0, 0)], tau)
    with pytest.raises(ValueError, match="alpha must be a positive"):
        Pasta([(0, 0)], 0.0)
    with pytest.raises(ValueError, match="boost must be"):
        Pasta([(0, 0)], 0.5, boost="span")
    with pytest.raises(ValueError, match="positions must be one of"):
        SplitSoftmax([(0, 0)], 0.5, positions="middle")
    with pytest.raises(ValueError, match=r"prompt\(s\) \[1\] have no relevant span"):
        SplitSoftmax([(0, 0)], 0.5).apply(model, [prompt, absent])
    with pytest.raises(ValueError, match="oracle intervention: it needs the labelled prompts"):
        Pasta([(0, 0)], 0.5).apply(model, None)
    with pytest.raises(TypeError, match="prompt 0 is a str"):
        SplitSoftmax([(0, 0)], 0.5).apply(model, ["w1 w2"])
    with pytest.raises(ValueError, match="mode='mean' needs means"):
        HeadAblation([(0, 0)], "mean")
    with pytest.raises(ValueError, match="means has shape"):
        HeadAblation([(0, 0)], "mean", means=torch.zeros(2, 4, 3)).apply(model)
    with pytest.raises(ValueError, match="needs the prompts of the batch"):
        HeadAblation([(0, 0)], positions="prompt").apply(model)
    _, tokens = one(model, prompt)
    with pytest.raises(ValueError, match="applied to 1 prompt.* batch size 2"):
        with SplitSoftmax([(0, 0)], 0.5).apply(model, prompt):
            model(torch.cat([tokens, tokens]))
    assert no_hooks_left(model)


def test_missing_skip_leaves_unlabelled_prompts_untouched():
    model = tiny_model("rotary")
    prompt = labeled_prompts(1)[0]
    absent = prompt.distractors_only()
    tp, tokens = one(model, absent)
    clean = model(tokens)
    for intervention in (
        SplitSoftmax([(0, 0), (1, 1)], 0.1, missing="skip"),
        Pasta([(0, 0), (1, 1)], 0.1, missing="skip"),
    ):
        with intervention.apply(model, absent):
            assert torch.equal(model(tokens), clean)
