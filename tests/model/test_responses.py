"""The one teacher-forced-response recipe: given, generated, gold-only, auto."""

from __future__ import annotations

from dataclasses import replace

import pytest
from _tiny import labeled_prompts, tiny_model

from focuslens.model.generation import generate_greedy
from focuslens.model.responses import (
    DEFAULT_MAX_NEW_TOKENS,
    answer_settings,
    with_responses,
)
from focuslens.prompts import tokenize_prompt


def _greedy(model, prompt, n):
    tp = tokenize_prompt(model, prompt.with_response(None))
    return generate_greedy(model, tp.tokens, max_new_tokens=n).text


def test_generated_and_gold_only_responses_equal_greedy_answers():
    model = tiny_model("rotary")
    prompts = labeled_prompts(3, response=False)
    generated, skipped = with_responses(model, prompts, "generated", max_new_tokens=3)
    assert skipped == [] and len(generated) == 3
    gold, _ = with_responses(model, prompts, "gold_only", max_new_tokens=3)
    for p, g, o in zip(prompts, generated, gold):
        assert g.response == _greedy(model, p, 3) and g.text == p.text
        assert o.response == _greedy(model, p.gold_only(), 3) and o.text == p.text
    auto, _ = with_responses(model, prompts, "auto", max_new_tokens=3)
    assert [p.response for p in auto] == [p.response for p in generated]


@pytest.mark.bad_input
def test_given_and_auto_keep_the_prompts_responses():
    model = tiny_model("rotary")
    prompts = labeled_prompts(2)
    for source in ("given", "auto"):
        kept, skipped = with_responses(model, prompts, source)
        assert kept == prompts and skipped == []
    with pytest.raises(ValueError, match="prompt 0 has no response"):
        with_responses(model, labeled_prompts(1, response=False), "given")
    with pytest.raises(ValueError, match="response must be one of"):
        with_responses(model, prompts, "oracle")


def test_empty_answers_are_left_out_and_counted(monkeypatch):
    import focuslens.model.responses as responses

    model = tiny_model("rotary")
    prompts = labeled_prompts(3, response=False)
    real = responses.greedy_answer
    calls = iter([True, False, True])

    def sometimes_empty(model, prompt, **kw):
        gen = real(model, prompt, **kw)
        return gen if next(calls) else replace(gen, text=" ")

    monkeypatch.setattr(responses, "greedy_answer", sometimes_empty)
    kept, skipped = with_responses(model, prompts, "generated", max_new_tokens=2)
    assert skipped == [1] and [p.text for p in kept] == [prompts[0].text, prompts[2].text]


def test_answer_settings_arguments_then_meta_then_defaults():
    p = labeled_prompts(1)[0]
    assert answer_settings(p) == (DEFAULT_MAX_NEW_TOKENS, ())
    meta = replace(p, meta={**p.meta, "max_new_tokens": 3, "stop_strings": ["\n"]})
    assert answer_settings(meta) == (3, ["\n"])
    assert answer_settings(meta, 5, ".") == (5, ".")
