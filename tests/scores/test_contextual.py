"""Contextual scores against a naive full-cache oracle, and their contracts."""

from __future__ import annotations

import pytest
import torch
from _oracles import make_prompts, naive_scores
from _tiny import tiny_model

import focuslens
from focuslens import ContextualScores, LabeledPrompt, contextual_scores, tokenize_prompt


@pytest.mark.parametrize("kind", ["gpt2", "rotary", "gqa"])
@pytest.mark.parametrize("query", ["response", "predict", "last"])
def test_scores_equal_full_cache_oracle(kind, query):
    model = tiny_model(kind)
    prompts = make_prompts(5)
    scores = contextual_scores(model, prompts, query=query, batch_size=3)
    oracle = naive_scores(model, prompts, query=query)
    for name, expected in oracle.items():
        torch.testing.assert_close(scores.per_example[name], expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(scores[name], expected.mean(0), atol=1e-5, rtol=0)
    # Not a degenerate case: heads differ, and the masses add up to one.
    assert scores.relevant.std() > 0.01
    total = sum(scores[k] for k in ("relevant", "distractors", "sink", "other"))
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=0)


def test_batched_equals_unbatched():
    model = tiny_model("gqa")
    prompts = make_prompts(6)
    one = contextual_scores(model, prompts, batch_size=1)
    many = contextual_scores(model, prompts, batch_size=6)
    for k in focuslens.scores.result.KINDS:
        torch.testing.assert_close(one.per_example[k], many.per_example[k], atol=1e-6, rtol=0)


def test_query_conventions_differ_by_one_row():
    """'predict' rows are the 'response' rows shifted one to the left: with a one-token
    response, 'predict' reads the last prompt token, exactly like 'last'."""
    model = tiny_model("rotary")
    prompts = [p.with_response("w5") for p in make_prompts(3)]
    last = contextual_scores(model, prompts, query="last")
    predict = contextual_scores(model, prompts, query="predict")
    response = contextual_scores(model, prompts, query="response")
    torch.testing.assert_close(last.relevant, predict.relevant, atol=1e-6, rtol=0)
    assert not torch.allclose(response.relevant, predict.relevant, atol=1e-4)
    # In general the rows are the same set shifted by exactly one position.
    tp = tokenize_prompt(model, make_prompts(1)[0].with_response("w5 w6 w7"))
    response_rows = focuslens.prompts.batch.query_rows(tp, "response")
    assert focuslens.prompts.batch.query_rows(tp, "predict") == [r - 1 for r in response_rows]
    assert response_rows == list(range(tp.n_prompt, tp.n_prompt + 3))


def test_top_heads_are_sorted_with_deterministic_ties():
    table = torch.tensor([[0.1, 0.5], [0.5, 0.2]])
    per = {k: table[None] for k in focuslens.scores.result.KINDS}
    scores = ContextualScores.from_per_example(per)
    assert scores.top_heads(3) == [(0, 1), (1, 0), (1, 1)]
    with pytest.raises(ValueError, match="k must be an int between 1 and 4"):
        scores.top_heads(5)


def test_dataframe_and_save_load_round_trip(tmp_path):
    model = tiny_model("rotary")
    scores = contextual_scores(model, make_prompts(3))
    df = scores.to_dataframe()
    assert set(df.columns) == {"layer", "head", "kind", "score"}
    # the five kinds, then the spans from_documents names: instruction and question
    assert scores.span_names == ("instruction", "question")
    assert len(df) == 7 * model.cfg.n_layers * model.cfg.n_heads
    row = df[(df.layer == 1) & (df["head"] == 2) & (df.kind == "sink")].score.item()
    assert row == pytest.approx(float(scores.sink[1, 2]))
    scores.save(tmp_path / "s.safetensors")
    back = ContextualScores.load(tmp_path / "s.safetensors")
    for k in focuslens.scores.result.KINDS:
        assert torch.equal(back[k], scores[k])
    assert back.query == scores.query and back.n_sink == scores.n_sink
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a readable ContextualScores file"):
        ContextualScores.load(tmp_path / "bad.safetensors")


def test_missing_relevant_is_refused_or_nan():
    model = tiny_model("rotary")
    prompts = make_prompts(2)
    absent = prompts[0].distractors_only()
    with pytest.raises(ValueError, match="prompt 1: it has no relevant span"):
        contextual_scores(model, [prompts[1], absent])
    scores = contextual_scores(model, [prompts[1], absent], require_relevant=False)
    assert torch.isnan(scores.per_example["relevant"][1]).all()
    torch.testing.assert_close(scores.relevant, scores.per_example["relevant"][0])
    # Only absent-key prompts: an all-NaN relevant table is never ranked.
    only_absent = contextual_scores(model, [absent], require_relevant=False)
    assert torch.isnan(only_absent.relevant).all()
    with pytest.raises(ValueError, match="only 0 heads have a score"):
        only_absent.top_heads(2)
    assert only_absent.top_heads(2, by="sink")  # the other kinds still rank


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("kwargs", "prompt_fn", "message"),
    [
        ({}, lambda p: p.with_response(None), "prompt 0: .*has no response"),
        ({"query": "first"}, lambda p: p, "query must be"),
        ({"sink": -1}, lambda p: p, "sink must be"),
        ({"batch_size": 0}, lambda p: p, "batch_size must be"),
        (
            {"prepend_bos": False},
            lambda p: LabeledPrompt("w1 w2 w3", (0, 2), [], ["x"], response="w1"),
            "overlap the relevant",
        ),
        (
            {},
            lambda p: LabeledPrompt(p.text * 30, p.relevant, [], ["x"], response="w1"),
            "more than the model's context",
        ),
    ],
)
def test_bad_input_names_the_problem(kwargs, prompt_fn, message):
    model = tiny_model("rotary")
    with pytest.raises(ValueError, match=message):
        contextual_scores(model, [prompt_fn(make_prompts(1)[0])], **kwargs)


def test_no_prompts():
    with pytest.raises(ValueError, match="no prompts"):
        contextual_scores(tiny_model("rotary"), [])


def test_hooks_removed_and_outputs_unchanged():
    model = tiny_model("gqa")
    tokens = model.to_tokens("w1 w2 w3 w4")
    before = model(tokens)
    contextual_scores(model, make_prompts(2))
    assert all(len(hp._forward_hooks) == 0 for hp in model.hook_dict.values())
    with pytest.raises(ValueError):
        contextual_scores(model, [make_prompts(1)[0].with_response(None)])
    bad = make_prompts(2)

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    # An exception inside the forward pass still removes the hooks.
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", boom)]):
        with pytest.raises(RuntimeError, match="boom"):
            contextual_scores(model, bad)
    assert all(len(hp._forward_hooks) == 0 for hp in model.hook_dict.values())
    assert torch.equal(model(tokens), before)


def test_figure_is_a_layer_by_head_heatmap():
    model = tiny_model("rotary")
    scores = contextual_scores(model, make_prompts(2))
    fig = scores.figure()
    heat = fig.data[0]
    assert heat.type == "heatmap"
    assert len(heat.z) == model.cfg.n_layers and len(heat.z[0]) == model.cfg.n_heads
    assert heat.z[1][2] == pytest.approx(float(scores.relevant[1, 2]))
    marks = fig.data[1]
    best = scores.top_heads(5)
    assert list(zip(marks.y, marks.x)) == best
