"""The one prompt batch: validation with indexed errors, right padding, row tables."""

from __future__ import annotations

import pytest
from _tiny import labeled_prompts, tiny_model

from focuslens.prompts import LabeledPrompt, tokenize_prompt
from focuslens.prompts.batch import (
    PromptBatch,
    batches,
    pad_token_id,
    query_rows,
    tokenized_prompts,
)


def test_batch_pads_on_the_right_and_tables_rows_by_hand():
    model = tiny_model("rotary")
    tps = [tokenize_prompt(model, p) for p in labeled_prompts(3)]
    pad = pad_token_id(model)
    assert pad == model.tokenizer.pad_token_id
    batch = PromptBatch.of(tps, pad)
    longest = max(len(tp) for tp in tps)
    assert batch.tokens.shape == (3, longest) and batch.length == longest
    for b, tp in enumerate(tps):
        assert batch.tokens[b, : len(tp)].tolist() == tp.tokens.tolist()
        assert (batch.tokens[b, len(tp) :] == pad).all()
        assert batch.real[b].tolist() == [True] * len(tp) + [False] * (longest - len(tp))
        assert int(batch.n_prompt[b]) == tp.n_prompt
    for query in ("response", "predict", "last"):
        rows, mask = batch.rows(query)
        for b, tp in enumerate(tps):
            expected = query_rows(tp, query)
            assert rows[b, mask[b]].tolist() == expected
            assert int(mask[b].sum()) == len(expected)
    targets = batch.targets(fill=-1)
    for b, tp in enumerate(tps):
        assert targets[b, : tp.n_response].tolist() == tp.tokens[tp.n_prompt :].tolist()
        assert (targets[b, tp.n_response :] == -1).all()
    relevant = batch.relevant_mask()
    for b, tp in enumerate(tps):
        s, e = tp.relevant
        assert relevant[b].nonzero().flatten().tolist() == list(range(s, e))
    assert batch.relevant_mask(longest + 3).shape == (3, longest + 3)
    assert batch.has_relevant.tolist() == [True, True, True]


@pytest.mark.bad_input
def test_batches_keep_order_and_refuse_bad_sizes():
    model = tiny_model("rotary")
    tps = [tokenize_prompt(model, p) for p in labeled_prompts(5)]
    got = list(batches(tps, 2))
    assert [index for index, _ in got] == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert [tp for _, b in got for tp in b.prompts] == tps
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            list(batches(tps, bad))


@pytest.mark.bad_input
def test_tokenized_prompts_accepts_iterables_and_names_the_bad_prompt():
    model = tiny_model("rotary")
    prompts = labeled_prompts(3)
    from_generator = tokenized_prompts(model, (p for p in prompts), query="response")
    assert [tp.tokens.tolist() for tp in from_generator] == [
        tokenize_prompt(model, p).tokens.tolist() for p in prompts
    ]
    assert len(tokenized_prompts(model, prompts[0])) == 1
    with pytest.raises(ValueError, match="no prompts given"):
        tokenized_prompts(model, [])
    with pytest.raises(TypeError, match="prompt 1 is a str"):
        tokenized_prompts(model, [prompts[0], "w1 w2"])
    with pytest.raises(TypeError, match="expected labelled prompts"):
        tokenized_prompts(model, "w1 w2")
    no_response = labeled_prompts(2, response=False)
    with pytest.raises(ValueError, match="prompt 0: .*response"):
        tokenized_prompts(model, no_response, query="response")
    assert len(tokenized_prompts(model, no_response, query="last")) == 2
    absent = LabeledPrompt("w1 w2", None, [(0, 2)], ["x"], response="w3")
    with pytest.raises(ValueError, match="prompt 1: it has no relevant span .*scores need"):
        tokenized_prompts(model, [prompts[0], absent], require_relevant="scores need one")
    long = LabeledPrompt(" ".join(["w1"] * 300), (0, 2), [], ["w1"], response="w1")
    with pytest.raises(ValueError, match="prompt 0: it has .* n_ctx=256"):
        tokenized_prompts(model, [long])
    with pytest.raises(ValueError, match="query must be"):
        tokenized_prompts(model, prompts, query="first")
