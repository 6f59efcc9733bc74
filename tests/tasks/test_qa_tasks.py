"""Multi-document QA prompts and the lost-in-the-middle / HELMET loaders, on small files
that the tests write themselves."""

from __future__ import annotations

import copy
import gzip
import json
import random

import pytest
from _tiny import word_tokenizer

from focuslens import tokenize_prompt
from focuslens.tasks.loaders import load_helmet, load_lost_in_the_middle, read_jsonl
from focuslens.tasks.qa import qa_prompt, qa_prompt_of_length, resolve_position

CHAT = (
    "{% for m in messages %}<|user|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def chat_tokenizer():
    tok = copy.deepcopy(word_tokenizer())
    tok.chat_template = CHAT
    return tok


def span_text(prompt, span):
    return prompt.text[span[0] : span[1]]


# ------------------------------------------------------------------ qa_prompt
def test_qa_prompt_places_gold_and_labels_exact_spans():
    distractors = [("Paris", "A city."), {"title": "Rome", "text": "Another city."}, "Plain."]
    p = qa_prompt(
        "Who wrote Hamlet?",
        "Shakespeare",
        ("Hamlet", "By Shakespeare."),
        distractors,
        gold_position=2,
    )
    assert p.gold_position == 2 and p.n_documents == 4
    assert span_text(p, p.relevant) == "(Title: Hamlet) By Shakespeare."
    assert [span_text(p, s) for s in p.distractors] == [
        "(Title: Paris) A city.",
        "(Title: Rome) Another city.",
        "(Title: ) Plain.",
    ]
    assert "Document [3](Title: Hamlet)" in p.text
    assert p.text.endswith("\n\nQuestion: Who wrote Hamlet?\nAnswer:")
    assert p.answers == ["Shakespeare"]
    assert p.meta["question"] == "Who wrote Hamlet?" and p.meta["metric"] == "best_subspan_em"


@pytest.mark.parametrize(
    ("position", "n", "expected"),
    [
        (0, 5, 0),
        (4, 5, 4),
        (-1, 5, 4),
        (-5, 5, 0),
        (0.0, 5, 0),
        (0.5, 5, 2),
        (1.0, 5, 4),
        (0.5, 20, 10),
    ],
)
def test_resolve_position(position, n, expected):
    assert resolve_position(position, n) == expected


@pytest.mark.parametrize("position", [5, -6, 1.5, -0.1, True])
def test_resolve_position_rejects(position):
    with pytest.raises(ValueError, match="gold_position"):
        resolve_position(position, 5)
    with pytest.raises((ValueError, TypeError)):  # TypeError under jaxtyping checks
        resolve_position("middle", 5)


@pytest.mark.bad_input
def test_qa_prompt_without_gold_and_errors():
    p = qa_prompt("q?", ["a"], None, [("t", "x"), ("u", "y")])
    assert p.relevant is None and len(p.distractors) == 2
    with pytest.raises(ValueError, match="distractor 1"):
        qa_prompt("q?", ["a"], ("g", "x"), [("t", "x"), ("only one",)])
    with pytest.raises(ValueError, match="answers"):
        qa_prompt("q?", [], ("g", "x"), [])
    with pytest.raises(ValueError, match="question"):
        qa_prompt(" ", ["a"], ("g", "x"), [])
    with pytest.raises(ValueError, match="unknown QA format"):
        qa_prompt("q?", ["a"], ("g", "x"), [], style="nope")


def test_qa_prompt_chat_template_and_helmet_style():
    tok = chat_tokenizer()
    p = qa_prompt(
        "w1 ?", ["w2"], ("w3", "w2 w4"), [("w5", "w6")], gold_position=1, chat_template=tok
    )
    assert p.text.startswith("<|user|>\n") and p.text.endswith("Answer:\n<|assistant|>\n")
    assert span_text(p, p.relevant) == "(Title: w3) w2 w4"
    tp = tokenize_prompt(word_tokenizer(), p)
    assert tp.relevant is not None and len(tp.distractors) == 1
    h = qa_prompt("q?", ["a"], ("T", "gold"), [("U", "other")], style="helmet")
    assert h.text.startswith("Use the given documents")
    assert span_text(h, h.relevant) == "(Title: T): gold"
    assert "Document (Title: U): other" in h.text


# ------------------------------------------------------------------ qa_prompt_of_length
def pool(n=60):
    return [(f"w{i}", " ".join(f"w{(i + j) % 100}" for j in range(6))) for i in range(n)]


@pytest.mark.parametrize("n_tokens", [60, 150, 333])
def test_qa_prompt_of_length_is_the_longest_that_fits(n_tokens):
    tok = word_tokenizer()
    distractors = pool()
    p = qa_prompt_of_length(
        "w1 ?",
        ["w2"],
        ("w3", "w2"),
        distractors,
        tokenizer=tok,
        n_tokens=n_tokens,
        gold_position=0.5,
    )
    n = len(tokenize_prompt(tok, p))
    assert n <= n_tokens and p.meta["n_tokens"] == n and p.meta["target_n_tokens"] == n_tokens
    k = p.n_documents - 1
    longer = qa_prompt("w1 ?", ["w2"], ("w3", "w2"), distractors[: k + 1], gold_position=0.5)
    assert len(tokenize_prompt(tok, longer)) > n_tokens
    assert p.gold_position == resolve_position(0.5, p.n_documents)
    assert [span_text(p, s) for s in p.distractors] == [
        f"(Title: {t}) {x}" for t, x in distractors[:k]
    ]


def test_qa_prompt_of_length_errors():
    tok = word_tokenizer()
    with pytest.raises(ValueError, match="gold document alone"):
        qa_prompt_of_length("w1 ?", ["w2"], ("w3", "w2"), pool(), tokenizer=tok, n_tokens=5)
    with pytest.raises(ValueError, match="larger pool"):
        qa_prompt_of_length("w1 ?", ["w2"], ("w3", "w2"), pool(3), tokenizer=tok, n_tokens=500)
    with pytest.raises(ValueError, match="gold_position 30"):
        qa_prompt_of_length(
            "w1 ?", ["w2"], ("w3", "w2"), pool(), tokenizer=tok, n_tokens=100, gold_position=30
        )


# ------------------------------------------------------------------ lost in the middle
def litm_record(q, n_ctx=24, n_answer=3, gold_key="nq_annotated_gold"):
    """A question whose answer is ``ans{q}``; ``n_answer`` retrieved ctxs contain it."""
    answer = f"ans{q}"
    ctxs = []
    for i in range(n_ctx):
        has = i % 7 == 1 and i // 7 < n_answer
        text = f"retrieved {q}.{i}" + (f" mentions {answer}" if has else "")
        ctxs.append({"title": f"T{q}.{i}", "text": text, "hasanswer": has, "isgold": False})
    record = {"question": f"question {q}?", "answers": [answer, f"alias{q}"], "ctxs": ctxs}
    gold = {"title": f"Gold{q}", "chunked_long_answer": f"The answer is {answer}."}
    if gold_key == "nq_annotated_gold":
        record["nq_annotated_gold"] = gold
    else:
        ctxs.insert(
            2,
            {
                "title": gold["title"],
                "text": gold["chunked_long_answer"],
                "hasanswer": True,
                "isgold": True,
            },
        )
    return record


def write_jsonl(path, records, gz=False, extra_lines=()):
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    data = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


@pytest.fixture
def litm_file(tmp_path):
    return write_jsonl(tmp_path / "nq.jsonl.gz", [litm_record(q) for q in range(7)], gz=True)


def test_litm_rebuilds_the_setting(litm_file):
    prompts = load_lost_in_the_middle(litm_file)
    assert len(prompts) == 7 * 5
    assert [p.gold_position for p in prompts[:5]] == [0, 4, 9, 14, 19]
    for p in prompts:
        q = p.meta["example"]
        assert p.n_documents == 20 and p.meta["question"] == f"question {q}?"
        assert span_text(p, p.relevant) == f"(Title: Gold{q}) The answer is ans{q}."
        texts = [span_text(p, s) for s in p.distractors]
        assert not any(f"ans{q}" in t for t in texts)
        # distractors: the first 19 retrieved ctxs without the answer, shuffled
        expected = {
            f"(Title: {c['title']}) {c['text']}"
            for c in litm_record(q)["ctxs"]
            if not c["hasanswer"]
        }
        ordered = [
            f"(Title: {c['title']}) {c['text']}"
            for c in litm_record(q)["ctxs"]
            if not c["hasanswer"]
        ][:19]
        assert set(texts) == set(ordered) and set(texts) <= expected
        assert p.answers == [f"ans{q}", f"alias{q}"]
        assert p.meta["source"] == "lost_in_the_middle" and p.meta["split"] in ("train", "test")
        tokenize_prompt(word_tokenizer(), p)  # spans map to tokens


def test_litm_plain_and_gzip_agree(tmp_path, litm_file):
    plain = write_jsonl(tmp_path / "nq.jsonl", [litm_record(q) for q in range(7)])
    assert load_lost_in_the_middle(plain) == load_lost_in_the_middle(litm_file)


def authors_procedure(records, seed, gold_positions=(0, 4, 9, 14, 19), n_documents=20):
    """The authors' generate_focus_dataset.py, restated: seed the generator, shuffle the
    lines, first half train; then per line and gold index shuffle the top distractors."""
    rng = random.Random(seed)
    lines = list(records)
    rng.shuffle(lines)
    half = len(lines) // 2
    out = {"train": [], "test": []}
    for split, chunk in (("train", lines[:half]), ("test", lines[half:])):
        for rec in chunk:
            for g in gold_positions:
                docs = [c for c in rec["ctxs"] if c["hasanswer"] is False][: n_documents - 1]
                docs = copy.deepcopy(docs)
                rng.shuffle(docs)
                gold = rec["nq_annotated_gold"]
                docs.insert(g, {"title": gold["title"], "text": gold["chunked_long_answer"]})
                out[split].append(
                    (rec["question"], [f"(Title: {d['title']}) {d['text']}" for d in docs])
                )
    return out


@pytest.mark.parametrize("seed", [42, 7])
def test_litm_split_matches_the_authors_procedure(litm_file, seed):
    records = [litm_record(q) for q in range(7)]
    expected = authors_procedure(records, seed)
    for split in ("train", "test"):
        prompts = load_lost_in_the_middle(litm_file, split=split, seed=seed)
        got = [
            (p.meta["question"], [span_text(p, s) for s in sorted([p.relevant, *p.distractors])])
            for p in prompts
        ]
        assert got == expected[split]
    train = load_lost_in_the_middle(litm_file, split="train", seed=seed)
    test = load_lost_in_the_middle(litm_file, split="test", seed=seed)
    qs_train = {p.meta["question"] for p in train}
    qs_test = {p.meta["question"] for p in test}
    assert len(qs_train) == 3 and len(qs_test) == 4 and not qs_train & qs_test


def test_litm_is_reproducible_and_consistent_across_splits(litm_file):
    a = load_lost_in_the_middle(litm_file, split="test", seed=3)
    assert a == load_lost_in_the_middle(litm_file, split="test", seed=3)
    everything = {
        (p.meta["question"], p.gold_position): p for p in load_lost_in_the_middle(litm_file, seed=3)
    }
    for p in a:
        assert everything[(p.meta["question"], p.gold_position)] == p
    other = load_lost_in_the_middle(litm_file, split="test", seed=4)
    assert other != a


def test_litm_options(litm_file, tmp_path):
    limited = load_lost_in_the_middle(litm_file, limit=2, gold_positions=(1, 3), n_documents=5)
    assert len(limited) == 4 and [p.meta["example"] for p in limited] == [0, 0, 1, 1]
    assert [p.gold_position for p in limited] == [1, 3, 1, 3] and limited[0].n_documents == 5
    ordered = load_lost_in_the_middle(
        litm_file, shuffle_distractors=False, limit=1, gold_positions=(0,)
    )
    retrieval = [
        f"(Title: {c['title']}) {c['text']}" for c in litm_record(0)["ctxs"] if not c["hasanswer"]
    ]
    assert [span_text(ordered[0], s) for s in ordered[0].distractors] == retrieval[:19]
    chat = load_lost_in_the_middle(litm_file, limit=1, chat_template=chat_tokenizer())
    assert chat[0].text.startswith("<|user|>")
    isgold = write_jsonl(tmp_path / "gold_at.jsonl", [litm_record(0, gold_key="isgold")])
    p = load_lost_in_the_middle(isgold, gold_positions=(7,))[0]
    assert span_text(p, p.relevant) == "(Title: Gold0) The answer is ans0." and p.gold_position == 7
    for bad in [dict(n_documents=0), dict(gold_positions=(20,)), dict(split="dev"), dict(limit=-1)]:
        with pytest.raises(ValueError):
            load_lost_in_the_middle(litm_file, **bad)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"question": "q", "ctxs": []}), "'answers'"),
        (json.dumps({**litm_record(9), "ctxs": "x"}), "'ctxs'"),
        (json.dumps({**litm_record(9), "nq_annotated_gold": None}), "no gold document"),
        (json.dumps(litm_record(9, n_ctx=10)), "only 8 documents without the answer"),
    ],
    ids=["json", "not-object", "answers", "ctxs", "gold", "few-distractors"],
)
@pytest.mark.parametrize("gz", [False, True])
def test_litm_malformed_line_names_file_and_line(tmp_path, line, message, gz):
    path = write_jsonl(
        tmp_path / "bad.jsonl", [litm_record(0), litm_record(1)], gz=gz, extra_lines=["", line]
    )
    with pytest.raises(ValueError, match=message) as info:
        load_lost_in_the_middle(path)
    assert f"{path}, line 4" in str(info.value)


def test_read_jsonl_skips_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"a": 1}], extra_lines=["   ", '{"b": 2}'])
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (3, {"b": 2})]


# ------------------------------------------------------------------ HELMET
def helmet_record(i, flag="has_answer", gold_at=1):
    ctxs = [{"title": f"T{i}.{j}", "text": f"passage {j}", "id": f"{i}-{j}"} for j in range(4)]
    if gold_at is not None:
        ctxs[gold_at][flag] = True
        ctxs[gold_at]["text"] = f"passage with a{i}"
    return {
        "id": f"q{i}",
        "question": f"what is {i}?",
        "answers": [f"a{i}"],
        "ctxs": ctxs,
        "depth": 0.25,
        "long": "x" * 500,
    }


def test_helmet_loader(tmp_path):
    records = [
        helmet_record(0),
        helmet_record(1, flag="isgold", gold_at=3),
        helmet_record(2, gold_at=None),
    ]
    path = write_jsonl(tmp_path / "kilt_nq.jsonl", records)
    prompts = load_helmet(path)
    assert len(prompts) == 3
    p0, p1, p2 = prompts
    assert p0.gold_position == 1 and span_text(p0, p0.relevant) == "(Title: T0.1): passage with a0"
    assert p0.text.startswith("Use the given documents") and p0.n_documents == 4
    assert p1.gold_position == 3 and p2.relevant is None and len(p2.distractors) == 4
    assert p0.meta["id"] == "q0" and p0.meta["depth"] == 0.25 and "long" not in p0.meta
    assert p0.meta["source"] == "helmet" and p0.meta["line"] == 1
    assert p0.meta["n_answer_documents"] == 1 and p1.meta["n_answer_documents"] == 0
    assert [p.meta["id"] for p in load_helmet(path, limit=2)] == ["q0", "q1"]
    litm_style = load_helmet(path, style="lost_in_the_middle", limit=1)[0]
    assert litm_style.text.startswith("Write a high-quality answer")


def test_helmet_malformed_line(tmp_path):
    path = write_jsonl(
        tmp_path / "h.jsonl.gz",
        [helmet_record(0)],
        gz=True,
        extra_lines=[json.dumps({"question": "q", "answers": ["a"], "ctxs": [{"title": "t"}]})],
    )
    with pytest.raises(ValueError, match=r"h\.jsonl\.gz, line 2: ctxs\[0\]"):
        load_helmet(path)
