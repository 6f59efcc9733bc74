"""The synthetic retrieval task: exact spans, reproducible seeds, options, errors."""

from __future__ import annotations

import random

import pytest

from focuslens.prompts.tokens import tokenize_prompt
from focuslens.tasks import synthetic as syn
from focuslens.tasks import synthetic_retrieval


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from focuslens.demo._tokenizer import build_tokenizer_json, load_tokenizer

    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    build_tokenizer_json(path)
    return load_tokenizer(path)


def _docs(prompt):
    """(key, value) of every document, parsed back from the text."""
    words = prompt.text.split()
    docs = []
    for i, w in enumerate(words):
        if w == syn.DOC_OPEN:
            docs.append((tuple(words[i + 1 : i + 3]), tuple(words[i + 3 : i + 5])))
    return docs


def _query(prompt):
    return tuple(prompt.text.split()[-syn.KEY_LEN :])


def test_spans_are_the_documents():
    for p in synthetic_retrieval(20, n_documents=7, absent=0.3, similar=0.5, seed=3):
        spans = sorted([*p.distractors, *([p.relevant] if p.relevant else [])])
        docs = _docs(p)
        assert len(spans) == len(docs) == 7
        for (start, end), (key, value) in zip(spans, docs):
            assert p.text[start:end] == " ".join([*key, *value, syn.DOC_CLOSE])
            assert p.text[start - len(syn.DOC_OPEN) - 1 : start] == syn.DOC_OPEN + " "
        if p.relevant is not None:
            body = p.text[p.relevant[0] : p.relevant[1]].split()
            assert tuple(body[: syn.KEY_LEN]) == _query(p)
            assert " ".join([*_query(p), *body[syn.KEY_LEN : -1]]) == p.answers[0]


def test_token_spans_cover_whole_documents(tokenizer):
    p = synthetic_retrieval(1, n_documents=5, gold_position=2, seed=0)[0]
    tp = tokenize_prompt(tokenizer, p)
    words = ["<bos>", *p.text.split(), *p.response.split()]
    assert tokenizer.convert_ids_to_tokens(tp.tokens.tolist()) == words
    assert tp.n_prompt == syn.prompt_length(5) == p.meta["n_prompt_tokens"]
    start, end = tp.relevant
    assert end - start == syn.DOC_TOKENS - 1
    assert words[start - 1] == syn.DOC_OPEN and words[end - 1] == syn.DOC_CLOSE
    assert tp.n_response == syn.KEY_LEN + syn.VALUE_LEN
    # the echoed key comes first: the row of its last word predicts the first value word
    assert words[tp.n_prompt : tp.n_prompt + syn.KEY_LEN] == list(_query(p))


def test_response_answers_and_meta():
    ps = synthetic_retrieval(10, n_documents=4, absent=0.5, seed=1)
    for p in ps:
        assert p.response == p.answers[0]
        assert p.meta["max_new_tokens"] == syn.ANSWER_TOKENS == syn.KEY_LEN + syn.VALUE_LEN + 1
        assert p.response.split()[: syn.KEY_LEN] == list(_query(p))
        assert p.meta["metric"] == "exact"
        assert p.meta["n_documents"] == p.n_documents == 4
        assert p.meta["gold_position"] == p.gold_position
        assert p.meta["key"] == " ".join(_query(p))
        assert p.meta["absent"] == (p.relevant is None)
    assert [p.meta["index"] for p in ps] == list(range(10))


def test_seeds_reproduce():
    a = synthetic_retrieval(5, n_documents=6, absent=0.4, similar=0.3, seed=11)
    b = synthetic_retrieval(5, n_documents=6, absent=0.4, similar=0.3, seed=11)
    c = synthetic_retrieval(5, n_documents=6, absent=0.4, similar=0.3, seed=12)
    assert a == b
    assert [p.meta for p in a] == [p.meta for p in b]
    assert [p.text for p in a] != [p.text for p in c]


@pytest.mark.parametrize(
    ("option", "expected"), [("first", 0), ("middle", 4), ("last", 9), (3, 3), (0, 0)]
)
def test_gold_position(option, expected):
    for p in synthetic_retrieval(5, n_documents=10, gold_position=option, seed=2):
        assert p.gold_position == p.meta["gold_position"] == expected


def test_random_gold_position_varies():
    positions = {p.gold_position for p in synthetic_retrieval(60, n_documents=5, seed=4)}
    assert positions == set(range(5))


def test_absent_fraction_and_answers():
    ps = synthetic_retrieval(40, n_documents=8, absent=0.25, seed=5)
    absent = [p for p in ps if p.relevant is None]
    assert len(absent) == 10
    for p in absent:
        assert p.answers == [f"{p.meta['key']} {syn.NONE}"] and p.gold_position is None
        assert _query(p) not in {k for k, _ in _docs(p)}
        assert len(p.distractors) == 8
        with pytest.raises(ValueError, match="no relevant document"):
            p.gold_only()
    for p in ps:
        if p.relevant is not None:
            assert [k for k, _ in _docs(p)].count(_query(p)) == 1
    assert all(p.relevant is None for p in synthetic_retrieval(3, n_documents=2, absent=1.0))


@pytest.mark.parametrize("similar", [0.0, 0.5, 1.0])
def test_similar_distractors_share_one_key_word(similar):
    for p in synthetic_retrieval(10, n_documents=9, similar=similar, seed=6):
        query = _query(p)
        shared = [sum(a == b for a, b in zip(k, query)) for k, _ in _docs(p) if k != query]
        assert max(shared) <= 1
        assert sum(shared) == round(similar * 8) == p.meta["n_similar"]


def test_keys_and_values_distinct():
    for p in synthetic_retrieval(3, n_documents=300, similar=0.4, seed=7):
        keys, values = zip(*_docs(p))
        assert len(set(keys)) == len(set(values)) == 300
    for p in synthetic_retrieval(3, n_documents=syn.UNIQUE_VALUE_DOCS, seed=7):
        words = [w for _, v in _docs(p) for w in v]
        assert len(set(words)) == len(words) == syn.N_VALUE_WORDS


def test_gold_only_and_distractors_only_variants():
    p = synthetic_retrieval(1, n_documents=6, gold_position="middle", seed=8)[0]
    gold = p.gold_only()
    assert gold.text == f"{syn.DOC_OPEN} {p.text[p.relevant[0] : p.relevant[1]]} [Q {p.meta['key']}"
    assert gold.distractors == [] and gold.answers == p.answers and gold.response == p.response
    neg = p.distractors_only()
    assert neg.relevant is None and len(neg.distractors) == 5
    assert _query(neg) == _query(p)
    assert [neg.text[s:e] for s, e in neg.distractors] == [p.text[s:e] for s, e in p.distractors]


def test_training_layout_matches_prompts(tokenizer):
    """The training sequences of the demo model read like synthetic_retrieval prompts."""
    from focuslens.demo.train import ANSWER, Recipe, sample_sequence

    ids, targets = sample_sequence(random.Random(0), Recipe(), 5, ANSWER)
    words = tokenizer.convert_ids_to_tokens(ids)
    first_query = words.index(syn.QUERY)
    docs = [
        words[i + 1 : i + 1 + syn.DOC_TOKENS] for i in range(0, first_query - 1, syn.DOC_TOKENS)
    ]
    keys = [tuple(d[1:3]) for d in docs]
    values = [tuple(d[3:5]) for d in docs]
    query = tuple(words[first_query + 1 : first_query + 3])
    gold = keys.index(query) if query in keys else None
    p = syn.build_prompt(keys, values, query, gold)
    tp = tokenize_prompt(tokenizer, p)
    end = first_query + 1 + syn.KEY_LEN
    assert tp.tokens[: tp.n_prompt].tolist() == ids[:end]
    assert tp.tokens[tp.n_prompt :].tolist() == ids[end : end + tp.n_response]
    assert targets[: tp.n_response + 1] == list(range(end, end + tp.n_response + 1))
    assert ids[end + tp.n_response] == tokenizer.eos_token_id


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_documents": 0}, "n_documents must be in"),
        ({"n_documents": 2.5}, "n_documents must be an int"),
        ({"n_documents": 4, "gold_position": "centre"}, "gold_position must be one of"),
        ({"n_documents": 4, "gold_position": 4}, "gold_position 4 is out of range"),
        ({"n_documents": 4, "gold_position": -1}, "gold_position -1 is out of range"),
        ({"n_documents": 4, "absent": 1.5}, "absent must be a fraction in \\[0, 1\\], got 1.5"),
        ({"n_documents": 4, "similar": -0.1}, "similar must be a fraction"),
        ({"n_documents": 4, "absent": "half"}, "absent must be a fraction"),
        ({"n_documents": 200, "similar": 1.0}, "199 distractors cannot all share one word"),
        ({"n_documents": 4000}, "n_documents must be in \\[1, 3969\\], got 4000"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic_retrieval(3, **kwargs)


def test_numpy_integers_are_accepted():
    np = pytest.importorskip("numpy")
    a = synthetic_retrieval(np.int64(2), n_documents=np.int64(5), gold_position=np.int64(1))
    b = synthetic_retrieval(2, n_documents=5, gold_position=1)
    assert a == b and a[0].meta == b[0].meta


def test_bad_n():
    with pytest.raises(ValueError, match="n must be a non-negative int, got -1"):
        synthetic_retrieval(-1, n_documents=3)
    assert synthetic_retrieval(0, n_documents=3) == []
