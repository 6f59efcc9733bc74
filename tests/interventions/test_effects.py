"""Ablation tables against a by-hand loop, attribution against finite differences, and
attribution against ablation on the demo model."""

from __future__ import annotations

import pytest
import torch
from _tiny import labeled_prompts, tiny_model

from focuslens import tokenize_prompt
from focuslens.heads import rank_correlation
from focuslens.interventions import head_means
from focuslens.interventions.effects import (
    HeadEffects,
    ablation_effects,
    answer_logprob,
    attribution_patching,
    joint_ablation_effect,
)


def logprob_by_hand(model, prompt, fwd_hooks=()):
    """log p(answer) of one prompt, unbatched, from the full log-softmax."""
    tp = tokenize_prompt(model, prompt.with_response(" " + prompt.answers[0]))
    with torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
        logp = model(tp.tokens[None])[0].double().log_softmax(-1)
    return sum(float(logp[pos - 1, tp.tokens[pos]]) for pos in range(tp.n_prompt, len(tp.tokens)))


def scale_head(layer, head, factor=0.0, replace=None):
    def hook(z, hook):
        z = z.clone()
        z[:, :, head] = replace if replace is not None else z[:, :, head] * factor
        return z

    return (f"blocks.{layer}.attn.hook_z", hook)


def test_answer_logprob_equals_full_log_softmax():
    model = tiny_model("gqa")
    prompts = labeled_prompts(4)
    got = answer_logprob(model, prompts, batch_size=3)
    expected = torch.tensor([logprob_by_hand(model, p) for p in prompts], dtype=torch.float32)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert (got < 0).all() and got.std() > 0.1


@pytest.mark.parametrize(("mode", "heads"), [("zero", None), ("mean", [(0, 1), (1, 2), (1, 3)])])
def test_ablation_table_matches_by_hand_loop(mode, heads):
    model = tiny_model("rotary")
    prompts = labeled_prompts(2)
    effects = ablation_effects(model, prompts, heads=heads, mode=mode, batch_size=2)
    means = head_means(model, [p.with_response(" " + p.answers[0]) for p in prompts])
    assert effects.values.shape == (2, 4) and effects.per_example.shape == (2, 2, 4)
    every = [(l, h) for l in range(2) for h in range(4)]
    for i, p in enumerate(prompts):
        clean = logprob_by_hand(model, p)
        assert float(effects.baseline[i]) == pytest.approx(clean, abs=1e-4)
        for layer, head in heads or every:
            hook = (
                scale_head(layer, head)
                if mode == "zero"
                else scale_head(layer, head, replace=means[layer, head])
            )
            expected = logprob_by_hand(model, p, [hook]) - clean
            got = float(effects.per_example[i, layer, head])
            assert got == pytest.approx(expected, abs=2e-4), (i, layer, head)
    torch.testing.assert_close(effects.values, effects.per_example.mean(0), equal_nan=True)
    assert effects.values.nan_to_num(0).abs().max() > 0.05  # not a degenerate model


def test_ablation_of_a_subset_leaves_the_rest_nan_and_joint_effect():
    model = tiny_model("gqa")
    prompts = labeled_prompts(2)
    effects = ablation_effects(model, prompts, heads=[(1, 2), (0, 0)])
    measured = ~torch.isnan(effects.values)
    assert measured.sum() == 2 and measured[1, 2] and measured[0, 0]
    joint = joint_ablation_effect(model, prompts, [(1, 2), (0, 0)])
    for i, p in enumerate(prompts):
        expected = logprob_by_hand(model, p, [scale_head(1, 2), scale_head(0, 0)])
        assert float(joint[i]) == pytest.approx(expected - logprob_by_hand(model, p), abs=2e-4)
    df = effects.to_dataframe()
    assert list(df.columns) == ["layer", "head", "effect"] and df.effect.isna().sum() == 6


@pytest.mark.parametrize(("kind", "mode"), [("gpt2", "zero"), ("gqa", "mean")])
def test_attribution_equals_finite_difference_derivative(kind, mode):
    """attribution(l, h) is d/de log p(answer) with z_h -> z_h + e (z_ref - z_h), at e = 0;
    a central finite difference is an independent estimate of that derivative."""
    model = tiny_model(kind)
    prompts = labeled_prompts(2)
    means = head_means(model, prompts)
    attr = attribution_patching(model, prompts, mode=mode, means=means, batch_size=2)
    eps = 1e-2
    for i, p in enumerate(prompts):
        for layer, head in [(0, 1), (1, 3)]:

            def moved(e, layer=layer, head=head, p=p):
                def hook(z, hook):
                    z = z.clone()
                    ref = 0.0 if mode == "zero" else means[layer, head]
                    z[:, :, head] = z[:, :, head] + e * (ref - z[:, :, head])
                    return z

                return logprob_by_hand(model, p, [(f"blocks.{layer}.attn.hook_z", hook)])

            derivative = (moved(eps) - moved(-eps)) / (2 * eps)
            got = float(attr.per_example[i, layer, head])
            assert got == pytest.approx(derivative, abs=2e-3, rel=2e-2), (i, layer, head)
    assert attr.method == "attribution" and attr.values.abs().max() > 0.05


def test_attribution_positions_split_and_no_side_effects():
    model = tiny_model("rotary")
    prompts = labeled_prompts(2)
    grads_before = [p.grad for p in model.parameters()]
    every = attribution_patching(model, prompts)
    parts = [attribution_patching(model, prompts, positions=w) for w in ("prompt", "generated")]
    torch.testing.assert_close(every.values, parts[0].values + parts[1].values, atol=1e-5, rtol=0)
    assert all(p.grad is None for p in model.parameters()) and all(g is None for g in grads_before)
    assert all(len(hp._forward_hooks) == 0 for hp in model.hook_dict.values())
    torch.testing.assert_close(every.baseline, answer_logprob(model, prompts), atol=1e-5, rtol=0)


def test_figure_and_bad_input():
    model = tiny_model("rotary")
    prompts = labeled_prompts(2)
    effects = ablation_effects(model, prompts, heads=[(0, 1), (1, 1)])
    fig = effects.figure()
    assert fig.data[0].type == "heatmap" and fig.data[0].zmid == 0
    assert isinstance(effects, HeadEffects) and "ablation" in repr(effects)
    with pytest.raises(ValueError, match="L3H0 does not exist"):
        ablation_effects(model, prompts, heads=[(3, 0)])
    with pytest.raises(ValueError, match="mode must be one of"):
        attribution_patching(model, prompts, mode="shuffle")
    with pytest.raises(ValueError, match="means has shape"):
        attribution_patching(model, prompts, mode="mean", means=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="prompt 0 has no response"):
        answer_logprob(model, [prompts[0].with_response(None)], target="response")
    with pytest.raises(ValueError, match="target must be"):
        answer_logprob(model, prompts, target="gold")
    with pytest.raises(ValueError, match="no prompts"):
        ablation_effects(model, [])


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason=(
        "measured on the shipped demo model: attribution patching does NOT agree with full "
        "ablation there (Spearman 0.24, 0.07 and 0.19 for zero-ablation at 40 documents, "
        "seeds 3, 4 and 5). Full ablation is far from linear: layer-0 heads act through the "
        "later layers' attention (L0H3 costs 29-31 nats when removed; its gradient is near "
        "0). The gradient itself is right: attribution predicts 1 % ablations (next test). "
        "Use ablation_effects here."
    ),
)
def test_attribution_agrees_with_ablation_on_the_demo_model():
    """On the demo model, zero-ablation and attribution agree in rank and in sign.

    Tolerances, from the measured values: Spearman rank correlation >= 0.7 over the
    24 heads, and every head whose ablation changes log p(answer) by more than 0.5 nats
    gets an attribution of the same sign.
    """
    import focuslens.demo as demo

    try:
        model = demo.load_demo_model()
    except FileNotFoundError:
        pytest.skip("the demo model's weights are not in the tree yet")
    from focuslens.tasks import synthetic_retrieval

    prompts = synthetic_retrieval(24, n_documents=demo.DISTRACTING_DOCS, seed=3)
    exact = ablation_effects(model, prompts, target="response", batch_size=12)
    approx = attribution_patching(model, prompts, target="response", batch_size=12)
    rho = rank_correlation(exact, approx)
    assert rho >= 0.7, (rho, exact.values, approx.values)
    big = exact.values.abs() > 0.5
    assert big.any()
    assert (torch.sign(exact.values[big]) == torch.sign(approx.values[big])).all()


@pytest.mark.slow
def test_attribution_predicts_small_ablations_on_the_demo_model():
    """On the demo model, attribution patching predicts the effect of removing 1 % of
    each head's output (z -> 0.99 z, divided by 0.01), computed here by hand.

    Stated tolerance: Spearman rank correlation >= 0.9 over the 24 heads, and the same
    sign for every head whose attribution is at least 0.1 nats (measured: 0.994 and 0.998
    on seeds 4 and 3, no sign differs; at 10 % ablation already 0.91 and 0.96, with 4 and
    1 signs flipped in layer 0 and 1; at full ablation 0.07-0.24).
    """
    from focuslens.demo import DISTRACTING_DOCS, load_demo_model
    from focuslens.tasks import synthetic_retrieval

    try:
        model = load_demo_model()
    except FileNotFoundError:
        pytest.skip("the demo model's weights are not in the tree yet")
    prompts = synthetic_retrieval(24, n_documents=DISTRACTING_DOCS, seed=4)
    attr = attribution_patching(model, prompts, target="response", batch_size=12)
    base = answer_logprob(model, prompts, target="response", batch_size=12)
    eps = 0.01
    small = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            with model.hooks(fwd_hooks=[scale_head(layer, head, factor=1 - eps)]):
                moved = answer_logprob(model, prompts, target="response", batch_size=12)
            small[layer, head] = (moved - base).mean() / eps
    rho = rank_correlation(small, attr)
    assert rho >= 0.9, (rho, small, attr.values)
    clear = attr.values.abs() >= 0.1
    assert clear.sum() >= 4
    assert (torch.sign(small[clear]) == torch.sign(attr.values[clear])).all(), (small, attr.values)
