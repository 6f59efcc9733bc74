"""Activation patching and resample ablation against by-hand loops on tiny models, and an
exact identity on the attention-only demo model."""

from __future__ import annotations

import pytest
import torch
from _tiny import labeled_prompts, random_text, tiny_model

import focuslens
from focuslens import patch_heads, tokenize_prompt
from focuslens.interventions import joint_patch_effect
from focuslens.interventions.effects import (
    ablation_effects,
    attribution_patching,
    joint_ablation_effect,
)

EVERY = [(l, h) for l in range(2) for h in range(4)]


def answered(model, prompt):
    return tokenize_prompt(model, prompt.with_response(" " + prompt.answers[0]))


def logprob_with(model, tp, fwd_hooks=()):
    """log p(answer) of one tokenised prompt-with-answer, unbatched, by hand."""
    with torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
        logp = model(tp.tokens[None])[0].double().log_softmax(-1)
    return sum(float(logp[pos - 1, tp.tokens[pos]]) for pos in range(tp.n_prompt, len(tp)))


def z_of(model, tp):
    _, cache = model.run_with_cache(tp.tokens[None], names_filter=lambda n: n.endswith("hook_z"))
    return {l: cache["z", l][0] for l in range(model.cfg.n_layers)}


def put(layer, heads, target_rows, values):
    """A hook writing ``values[r, head]`` at row ``target_rows[r]`` of each head."""

    def hook(z, hook):
        z = z.clone()
        for r, pos in enumerate(target_rows):
            for h in heads:
                z[0, pos, h] = values[r, h]
        return z

    return (f"blocks.{layer}.attn.hook_z", hook)


def answer_rows(tp):
    return list(range(tp.n_prompt - 1, len(tp) - 1))


@pytest.mark.parametrize("kind", ["rotary", "gqa"])
def test_patch_heads_matches_a_by_hand_loop(kind):
    model = tiny_model(kind)
    prompts = labeled_prompts(3, n_docs=3)
    effects = patch_heads(model, prompts, batch_size=2, per_position=True)
    assert effects.method == "patching" and effects.mode == "gold_only"
    for i, p in enumerate(prompts):
        tp, src = answered(model, p), answered(model, p.gold_only())
        assert len(src) < len(tp)  # the rows sit at other positions: paired in order
        clean = logprob_with(model, tp)
        source_z = z_of(model, src)
        assert float(effects.baseline[i]) == pytest.approx(clean, abs=1e-4)
        assert float(effects.reference[i]) == pytest.approx(logprob_with(model, src), abs=1e-4)
        rows_t, rows_s = answer_rows(tp), answer_rows(src)
        for layer, head in EVERY:
            values = source_z[layer][rows_s]
            hook = put(layer, [head], rows_t, values)
            expected = logprob_with(model, tp, [hook]) - clean
            assert float(effects.per_example[i, layer, head]) == pytest.approx(expected, abs=1e-4)
            for r in range(len(rows_t)):
                one = put(layer, [head], [rows_t[r]], values[r : r + 1])
                expected = logprob_with(model, tp, [one]) - clean
                got = float(effects.per_position[i, r, layer, head])
                assert got == pytest.approx(expected, abs=1e-4)
            # rows past this prompt's answer are NaN
            assert torch.isnan(effects.per_position[i, len(rows_t) :, layer, head]).all()
    assert effects.values.abs().max() > 0.05  # not a degenerate case


def test_joint_patching_and_paired_sources_and_prob_metric():
    model = tiny_model("rotary")
    prompts = labeled_prompts(2, n_docs=3)
    heads = [(0, 1), (1, 2), (1, 3)]
    paired = [p.distractors_only() for p in prompts]
    joint = joint_patch_effect(model, prompts, heads, source=paired, metric="prob")
    named = joint_patch_effect(model, prompts, heads, source="distractors_only", metric="prob")
    torch.testing.assert_close(joint, named, atol=1e-6, rtol=0)
    for i, p in enumerate(prompts):
        tp, src = answered(model, p), answered(model, p.distractors_only())
        source_z = z_of(model, src)
        hooks = [
            put(
                l, [h for ll, h in heads if ll == l], answer_rows(tp), source_z[l][answer_rows(src)]
            )
            for l in (0, 1)
        ]
        expected = (
            torch.tensor(logprob_with(model, tp, hooks)).exp()
            - torch.tensor(logprob_with(model, tp)).exp()
        )
        assert float(joint[i]) == pytest.approx(float(expected), abs=1e-5)


def test_patching_every_head_restores_the_source_run_on_an_attention_only_model():
    """With no MLPs and rotary positions, the residual stream at an answer row is the
    token embedding plus the heads' outputs: patching all heads there from the gold-only
    run gives exactly the gold-only run's log-probability."""
    model = focuslens.load_demo_model()
    assert model.cfg.attn_only and model.cfg.positional_embedding_type == "rotary"
    prompts = focuslens.tasks.synthetic_retrieval(4, n_documents=20, seed=3, absent=0.0)
    every = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    single = patch_heads(model, prompts, heads=[(2, 3)])
    joint = joint_patch_effect(model, prompts, every)
    torch.testing.assert_close(joint, single.reference - single.baseline, atol=1e-4, rtol=0)
    assert (single.reference - single.baseline).abs().max() > 0.1


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_resample_ablation_matches_a_by_hand_loop(positions):
    model = tiny_model("gqa")
    # Three prompts of one length: the same layout, other words in the documents.
    gen = torch.Generator().manual_seed(0)
    prompts = [
        focuslens.LabeledPrompt.from_documents(
            "w7 w8",
            [("w1", random_text(gen, n)) for n in (3, 4, 2)],
            1,
            [random_text(gen, 2)],
            instruction="w9 w10",
        )
        for _ in range(3)
    ]
    effects = ablation_effects(model, prompts, mode="resample", positions=positions, batch_size=2)
    attribution = attribution_patching(model, prompts, mode="resample", positions=positions)
    for i, p in enumerate(prompts):
        tp = answered(model, p)
        donor = answered(model, prompts[(i + 1) % 3])
        donor_z = z_of(model, donor)
        rows = range(len(tp)) if positions == "all" else range(tp.n_prompt, len(tp))
        clean = logprob_with(model, tp)
        for layer, head in EVERY:
            hook = put(layer, [head], list(rows), donor_z[layer][list(rows)])
            expected = logprob_with(model, tp, [hook]) - clean
            assert float(effects.per_example[i, layer, head]) == pytest.approx(expected, abs=1e-4)
    assert effects.values.abs().max() > 0.05
    assert torch.isfinite(attribution.values).all() and attribution.mode == "resample"
    joint = joint_ablation_effect(model, prompts, [(1, 0), (1, 1)], mode="resample")
    assert joint.shape == (3,)


def test_resample_needs_prompts_of_one_length_and_sources_must_pair():
    model = tiny_model("rotary")
    prompts = labeled_prompts(2, n_docs=3)
    with pytest.raises(ValueError, match="prompt 0 has .* tokens with its answer and no other"):
        ablation_effects(model, prompts, mode="resample")
    with pytest.raises(ValueError, match="donor 0 has .* tokens with its answer, prompt 0 has"):
        ablation_effects(model, prompts, mode="resample", donors=prompts[::-1])
    with pytest.raises(ValueError, match="mode must be one of"):
        ablation_effects(model, prompts, mode="shuffle")
    with pytest.raises(ValueError, match="source must be one of"):
        patch_heads(model, prompts, source="gold")
    with pytest.raises(ValueError, match="1 source prompts for 2 prompts"):
        patch_heads(model, prompts, source=prompts[:1])
    with pytest.raises(ValueError, match="metric must be one of"):
        patch_heads(model, prompts, metric="accuracy")
    plain = focuslens.LabeledPrompt("w1 w2 w3", (0, 2), [], ["w4"])
    with pytest.raises(ValueError, match="prompt 0 was not built from documents"):
        patch_heads(model, [plain])


def test_patching_effects_have_intervals():
    model = tiny_model("rotary")
    effects = patch_heads(model, labeled_prompts(6, n_docs=3), heads=[(1, 0), (1, 2)])
    low, high = effects.ci(n_boot=500)
    assert torch.isnan(low[0]).all()  # layer 0 not patched
    for h in (0, 2):
        assert low[1, h] <= effects.values[1, h] <= high[1, h]
    assert "patching" in effects.figure(ci=0.95).layout.title.text
