"""Labelled prompts: validation, builders and the exact char -> token span mapping."""

from __future__ import annotations

import pytest
from _tiny import WORDS, bpe_tokenizer, tiny_model, word_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from focuslens import LabeledPrompt, tokenize_prompt
from focuslens.prompts.tokens import char_to_token_span

INSTR = "w100 w101 w102"


def qa_prompt(n_docs: int = 3, gold: int = 1, response: str | None = "w6 w7") -> LabeledPrompt:
    docs = [(f"w{3 * i}", f"w{3 * i + 1} w{3 * i + 2}") for i in range(n_docs)]
    return LabeledPrompt.from_documents(
        "w1 w2 ?", docs, gold, ["w6"], instruction=INSTR, response=response
    )


def test_from_documents_spans_are_the_bodies():
    p = qa_prompt()
    assert p.text[slice(*p.relevant)] == "(Title: w3) w4 w5"
    assert [p.text[slice(*s)] for s in p.distractors] == ["(Title: w0) w1 w2", "(Title: w6) w7 w8"]
    assert "Document [2](Title: w3)" in p.text
    assert p.text.startswith(INSTR + "\n\n") and p.text.endswith("Question: w1 w2 ?\nAnswer:")
    assert p.n_documents == 3 and p.gold_position == 1


def test_variants_renumber_and_keep_layout():
    p = qa_prompt(4, gold=2)
    gold = p.gold_only()
    assert gold.distractors == [] and gold.text[slice(*gold.relevant)] == "(Title: w6) w7 w8"
    assert "Document [1](Title: w6)" in gold.text and "Document [2]" not in gold.text
    neg = p.distractors_only()
    assert neg.relevant is None and len(neg.distractors) == 3
    assert "Document [3](Title: w9)" in neg.text
    assert gold.response == p.response and gold.answers == p.answers


def test_variant_meta_describes_the_variant():
    from focuslens.tasks import synthetic_retrieval

    p = synthetic_retrieval(1, n_documents=6, gold_position=3, seed=0)[0]
    gold, neg = p.gold_only(), p.distractors_only()
    assert (p.meta["n_documents"], p.meta["gold_position"]) == (6, 3)
    assert (
        (gold.meta["n_documents"], gold.meta["gold_position"])
        == (1, 0)
        == (
            gold.n_documents,
            gold.gold_position,
        )
    )
    assert (neg.meta["n_documents"], neg.meta["gold_position"]) == (5, None)
    assert gold.meta["original_n_documents"] == 6 and neg.meta["original_gold_position"] == 3
    assert "n_prompt_tokens" not in gold.meta and gold.meta["variant"] == "gold_only"
    assert p.meta["n_prompt_tokens"] == 40 and "variant" not in p.meta  # original untouched


def test_variants_need_parts():
    p = LabeledPrompt("w1 w2 w3", (0, 2), [], ["w1"])
    with pytest.raises(ValueError, match="not built from documents"):
        p.gold_only()


class _Chat:
    """A stand-in chat template that wraps the user text in role markers."""

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert not tokenize and add_generation_prompt
        return f"<user> {messages[0]['content']} </user> <assistant>"


def test_chat_template_shifts_spans():
    docs = [("w1", "w2"), ("w3", "w4")]
    p = LabeledPrompt.from_documents("q", docs, 0, ["w2"], chat_template=_Chat())
    assert p.text.startswith("<user> ") and p.text.endswith("<assistant>")
    assert p.text[slice(*p.relevant)] == "(Title: w1) w2"
    assert p.gold_only().text.startswith("<user> ")


@pytest.mark.parametrize(
    ("relevant", "distractors", "message"),
    [
        ((5, 3), [], "empty"),
        ((2, 2), [], "empty"),
        ((0, 99), [], "out of range"),
        ((-1, 2), [], "out of range"),
        ((0, 5), [(3, 8)], "overlaps"),
        ((0, 2), [(3, 6), (5, 8)], "overlaps"),
    ],
)
def test_bad_spans_are_refused(relevant, distractors, message):
    with pytest.raises(ValueError, match=message):
        LabeledPrompt("w1 w2 w3 w4 w5", relevant, distractors, ["w1"])


def test_span_over_whitespace_only_names_the_span():
    model = tiny_model("rotary")
    p = LabeledPrompt("w1   w2", (2, 5), [], ["w1"])
    with pytest.raises(ValueError, match="relevant span .* covers no token"):
        tokenize_prompt(model, p)


def test_tokenizer_without_offsets_is_refused():
    class Slow:
        is_fast = False

    with pytest.raises(ValueError, match="no character offsets"):
        tokenize_prompt(Slow(), LabeledPrompt("w1", (0, 2), [], ["w1"]))


def test_token_that_straddles_two_spans_is_refused():
    tok = bpe_tokenizer()
    text = "the quick"
    ids = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    # Find a token of two or more characters and split the spans inside it.
    s, e = next(o for o in ids["offset_mapping"] if o[1] - o[0] >= 2)
    p = LabeledPrompt(text, (0, s + 1), [(s + 1, len(text))], ["x"])
    with pytest.raises(ValueError, match="straddles"):
        tokenize_prompt(tok, p)


@pytest.mark.parametrize("kind", ["gpt2", "rotary", "gqa"])
def test_tokens_match_transformer_lens_to_tokens(kind):
    model = tiny_model(kind)
    p = qa_prompt()
    tp = tokenize_prompt(model, p)
    assert tp.tokens[: tp.n_prompt].tolist() == model.to_tokens(p.text)[0].tolist()
    assert (
        tp.tokens[tp.n_prompt :].tolist()
        == word_tokenizer()(p.response, add_special_tokens=False)["input_ids"]
    )
    no_bos = tokenize_prompt(model, p, prepend_bos=False)
    assert no_bos.tokens.tolist() == tp.tokens[1:].tolist()
    assert no_bos.relevant == (tp.relevant[0] - 1, tp.relevant[1] - 1)


def test_tokens_match_to_tokens_with_bpe():
    model = tiny_model("gpt2", tokenizer=bpe_tokenizer())
    p = LabeledPrompt("Document [1](Title: Paris) the fox.", (12, 35), [], ["fox"])
    tp = tokenize_prompt(model, p)
    assert tp.tokens.tolist() == model.to_tokens(p.text)[0].tolist()


# ------------------------------------------------------------- property test of the mapping
def _check_mapping(tokenizer, text: str, span: tuple[int, int]) -> None:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    first, last = char_to_token_span(offsets, span, text=text)
    start, end = span
    inside = set(range(first, last))
    for i, (s, e) in enumerate(offsets):
        touches = s < e and s < end and e > start
        if i in inside:  # every token of the token span touches the character span
            assert touches or s == e, (i, s, e, span)
        else:  # no token outside the token span does
            assert not touches, (i, s, e, span)
    covered = {c for s, e in offsets for c in range(s, e)}
    span_tokens = {c for i in inside for c in range(*offsets[i])}
    # Every character of the span that some token covers is covered by the token span.
    assert {c for c in range(start, end) if c in covered} <= span_tokens


documents = st.lists(
    st.lists(
        st.sampled_from(WORDS[:40] + ["the", "fox", "Paris", "."]), min_size=1, max_size=6
    ).map(" ".join),
    min_size=2,
    max_size=6,
)


@settings(max_examples=60, deadline=None)
@given(docs=documents, data=st.data())
def test_span_mapping_property(docs, data):
    gold = data.draw(st.integers(0, len(docs) - 1))
    p = LabeledPrompt.from_documents(
        "w1 ?", [("t", d) for d in docs], gold, ["x"], instruction="w2 w3"
    )
    for tokenizer in (word_tokenizer(), bpe_tokenizer()):
        for span in [p.relevant, *p.distractors]:
            _check_mapping(tokenizer, p.text, span)
        tp = tokenize_prompt(tokenizer, p)
        assert tp.relevant[0] < tp.relevant[1]


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet="abc fox.", min_size=3, max_size=40), data=st.data())
def test_span_mapping_property_arbitrary_spans(text, data):
    tok = bpe_tokenizer()
    start = data.draw(st.integers(0, len(text) - 1))
    end = data.draw(st.integers(start + 1, len(text)))
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    if not any(s < end and e > start for s, e in enc["offset_mapping"] if s < e):
        with pytest.raises(ValueError, match="covers no token"):
            char_to_token_span(enc["offset_mapping"], (start, end), text=text)
        return
    _check_mapping(tok, text, (start, end))


@pytest.mark.bad_input
def test_spans_answers_and_response_are_checked_at_construction():
    for relevant in [(False, True), 5, "0 3", (0.0, 3.0), (0, 1, 2)]:
        with pytest.raises(ValueError, match="relevant span .* must be two ints"):
            LabeledPrompt("abc def", relevant, [], ["x"])
    with pytest.raises(ValueError, match="distractor span .* must be two ints"):
        LabeledPrompt("abc def", (0, 3), [(True, 2)], ["x"])
    for answers in [None, [1], [None]]:
        with pytest.raises(ValueError, match="answers must be a list of strings"):
            LabeledPrompt("abc def", (0, 3), [], answers)
    with pytest.raises(ValueError, match="response must be a str or None"):
        LabeledPrompt("abc def", (0, 3), [], ["x"], response=3)
    p = LabeledPrompt("abc def", [0, 3], [[4, 7]], ("x",))
    assert p.relevant == (0, 3) and p.distractors == [(4, 7)] and p.answers == ["x"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 6)), min_size=1, max_size=30),
    st.integers(0, 45),
    st.integers(1, 10),
    st.booleans(),
)
def test_offset_index_equals_the_linear_scan(raw, start, width, monotone):
    """The binary-search span mapping finds exactly the tokens the definition names."""
    from focuslens.prompts.tokens import _OffsetIndex

    if monotone:  # what tokenizers give: starts and ends never decrease
        pos, offsets = 0, []
        for gap, size in raw:
            pos += gap % 3
            offsets.append((pos, pos + size))
            pos += size
    else:
        offsets = [(s, s + w) for s, w in raw]
    end = start + width
    hits = [i for i, (s, e) in enumerate(offsets) if s < e and s < end and e > start]
    expected = (hits[0], hits[-1] + 1) if hits else None
    assert _OffsetIndex(offsets).covering(start, end) == expected
