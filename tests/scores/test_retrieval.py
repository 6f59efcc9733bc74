"""Retrieval-head scores against a full-cache loop, and a planted copying head."""

from __future__ import annotations

import pytest
import torch
from _tiny import labeled_prompts, tiny_model

from focuslens import tokenize_prompt
from focuslens.scores.retrieval import retrieval_scores


def copy_prompts(n: int):
    """Prompts whose response copies two words of the relevant document, then one word
    that is in no document (never copyable)."""
    out = []
    for p in labeled_prompts(n, response=False):
        words = [w for w in p.text[p.relevant[0] : p.relevant[1]].split() if w[1:].isdigit()]
        out.append(p.with_response(" ".join([*words[-2:], "?"])))
    return out


def oracle(model, prompts):
    """One run_with_cache per prompt; Wu et al.'s rule applied row by row in Python."""
    scores = []
    for p in prompts:
        tp = tokenize_prompt(model, p)
        _, cache = model.run_with_cache(tp.tokens[None])
        s, e = tp.relevant
        span_tokens = set(tp.tokens[s:e].tolist())
        copyable = [t for t in tp.tokens[tp.n_prompt :].tolist() if t in span_tokens]
        table = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
        for l in range(model.cfg.n_layers):
            for h in range(model.cfg.n_heads):
                hits = 0
                for pos in range(tp.n_prompt, len(tp)):
                    j = int(cache["pattern", l][0, h, pos - 1].argmax())
                    hits += s <= j < e and int(tp.tokens[j]) == int(tp.tokens[pos])
                table[l, h] = hits / len(copyable) if copyable else float("nan")
        scores.append(table)
    return torch.stack(scores)


def plant_copier(model, prompts, layer=0, head=2):
    """A hook that makes one head attend, from each response-predicting row, to the
    first position of the relevant span holding the next token (when there is one)."""
    tp = tokenize_prompt(model, prompts[0])
    s, e = tp.relevant

    def hook(scores, hook):
        scores = scores.clone()
        for pos in range(tp.n_prompt, len(tp)):
            target = int(tp.tokens[pos])
            where = [j for j in range(s, e) if int(tp.tokens[j]) == target]
            if where:
                scores[0, head, pos - 1, where[0]] += 1e4
        return scores

    return [(f"blocks.{layer}.attn.hook_attn_scores", hook)]


@pytest.mark.parametrize("kind", ["gpt2", "gqa"])
def test_retrieval_scores_equal_full_cache_oracle(kind):
    model = tiny_model(kind)
    prompts = copy_prompts(4)
    got = retrieval_scores(model, prompts, batch_size=3)
    expected = oracle(model, prompts)
    torch.testing.assert_close(got.per_example, expected, atol=1e-6, rtol=0)
    assert got.meta["n_copyable"] == [2, 2, 2, 2]
    torch.testing.assert_close(got.values, expected.mean(0), atol=1e-6, rtol=0)


def test_planted_copying_head_scores_one():
    model = tiny_model("rotary")
    prompts = copy_prompts(3)[2:]
    with model.hooks(fwd_hooks=plant_copier(model, prompts)):
        got = retrieval_scores(model, prompts)
        expected = oracle(model, prompts)
    assert float(got.values[0, 2]) == 1.0
    torch.testing.assert_close(got.per_example, expected, atol=1e-6, rtol=0)
    assert float(got.values.nan_to_num(0).sum()) < model.cfg.n_layers * model.cfg.n_heads


def test_no_copyable_token_gives_nan_and_bad_input():
    model = tiny_model("rotary")
    prompts = labeled_prompts(2, response=False)
    absent = [p.with_response("?") for p in prompts]
    tp = tokenize_prompt(model, absent[0])
    assert int(tokenize_prompt(model, absent[0]).tokens[-1]) not in tp.tokens[: tp.n_prompt]
    got = retrieval_scores(model, absent)
    assert torch.isnan(got.values).all() and got.meta["n_copyable"] == [0, 0]
    with pytest.raises(ValueError, match="prompt 0: .*has no response"):
        retrieval_scores(model, prompts)
    with pytest.raises(ValueError, match="batch_size must be"):
        retrieval_scores(model, copy_prompts(1), batch_size=0)
    with pytest.raises(ValueError, match="no relevant span"):
        retrieval_scores(model, [copy_prompts(1)[0].distractors_only().with_response("w1")])
