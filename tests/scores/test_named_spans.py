"""Named spans (``LabeledPrompt(spans=...)``): their masses on every scoring path against
the full attention cache, and their contracts (mapping, variants, files, tables)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from _oracles import make_prompts
from _tiny import tiny_model

from focuslens import ContextualScores, LabeledPrompt, contextual_scores, tokenize_prompt
from focuslens.heads import bootstrap_ci
from focuslens.scores.result import KINDS
from focuslens.tasks.files import read_prompts, write_prompts


def with_named(prompts):
    """The prompts' own spans (instruction, question), plus one over the first two
    documents' text (overlapping the labelled spans), one made of two pieces, and a
    prompt without them."""
    out = []
    for i, p in enumerate(prompts):
        spans = dict(p.spans)
        if i != 1:
            docs = sorted([p.relevant, *p.distractors])
            spans["first two"] = (docs[0][0], docs[1][1])
            spans["pieces"] = [docs[0], docs[-1]]
        out.append(replace(p, spans=spans))
    return out


def naive_named(model, prompts, names, query="response"):
    """From a full cache: mean over the query rows of the mass on each name's tokens."""
    out = {name: [] for name in names}
    for p in prompts:
        tp = tokenize_prompt(model, p)
        _, cache = model.run_with_cache(tp.tokens[None])
        rows = (
            list(range(tp.n_prompt, len(tp)))
            if query == "response"
            else [tp.n_prompt - 1]  # "last"
        )
        for name in names:
            if name not in tp.spans:
                out[name].append(torch.full((model.cfg.n_layers, model.cfg.n_heads), torch.nan))
                continue
            keys = torch.zeros(len(tp), dtype=torch.bool)
            for s, e in tp.spans[name]:
                keys[s:e] = True
            out[name].append(
                torch.stack(
                    [
                        cache["pattern", l][0][:, rows][:, :, keys].sum(-1).mean(-1)
                        for l in range(model.cfg.n_layers)
                    ]
                )
            )
    return {name: torch.stack(v) for name, v in out.items()}


NAMES = ["instruction", "question", "first two", "pieces"]


@pytest.mark.parametrize("kind", ["gpt2", "rotary", "gqa"])
def test_named_masses_equal_the_full_cache_on_every_path(kind):
    model = tiny_model(kind)
    prompts = with_named(make_prompts(4))
    oracle = naive_named(model, prompts, NAMES)
    runs = {
        "one pass": contextual_scores(model, prompts, batch_size=3),
        "one at a time": contextual_scores(model, prompts, batch_size=1),
        "chunked keys": contextual_scores(model, prompts, chunk_size=5),
        "chunked pattern": focuslens_chunked(model, prompts, "pattern"),
    }
    for label, scores in runs.items():
        assert scores.span_names == tuple(NAMES), label
        for name in NAMES:
            got = scores.mass(name, per_example=True)
            torch.testing.assert_close(got, oracle[name], atol=1e-5, rtol=0, equal_nan=True)
            # The mean skips the prompt without the span.
            torch.testing.assert_close(
                scores.mass(name), torch.nanmean(oracle[name], 0), atol=1e-5, rtol=0
            )
    scores = runs["one pass"]
    assert torch.isnan(scores.mass("pieces", per_example=True)[1]).all()
    # Not degenerate, and a named span overlapping the documents does not disturb the
    # partition: relevant + distractors + sink + other is still one.
    assert scores.mass("question").std() > 1e-3
    total = sum(scores[k] for k in ("relevant", "distractors", "sink", "other"))
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=0)


def focuslens_chunked(model, prompts, route):
    from focuslens.scores.chunked import chunked_contextual_scores

    return chunked_contextual_scores(model, prompts, chunk_size=4, scores_from=route)


def test_named_masses_with_the_last_row():
    model = tiny_model("rotary")
    prompts = with_named(make_prompts(3))
    scores = contextual_scores(model, prompts, query="last")
    oracle = naive_named(model, prompts, NAMES, query="last")
    for name in NAMES:
        torch.testing.assert_close(
            scores.mass(name, per_example=True), oracle[name], atol=1e-5, rtol=0, equal_nan=True
        )


def test_tables_figure_ranking_and_files(tmp_path):
    model = tiny_model("rotary")
    scores = contextual_scores(model, with_named(make_prompts(4)))
    n = model.cfg.n_layers * model.cfg.n_heads
    df = scores.to_dataframe()
    assert list(df.kind.unique()) == [*KINDS, *NAMES]
    assert len(df) == (5 + len(NAMES)) * n
    row = df[(df.layer == 1) & (df["head"] == 0) & (df.kind == "question")].score.item()
    assert row == pytest.approx(float(scores.mass("question")[1, 0]))
    assert scores.top_heads(2, by="question") == focuslens_top(scores.mass("question"), 2)
    fig = scores.figure("question")
    assert [list(r) for r in fig.data[0].z] == scores.mass("question").tolist()
    # intervals over prompts, in the hover text and the table
    low, high = scores.ci("question", n_boot=500)
    ref = bootstrap_ci(scores.mass("question", per_example=True), n_boot=500)
    assert torch.equal(low, ref[0]) and torch.equal(high, ref[1])
    hover = scores.figure("question", ci=0.95).data[0].text[1][0]
    full = scores.ci("question")
    assert f"interval [{float(full[0][1, 0]):.4f}, {float(full[1][1, 0]):.4f}]" in hover
    table = scores.to_dataframe(level=0.95, n_boot=500)
    row = table[(table.layer == 1) & (table["head"] == 0) & (table.kind == "question")]
    assert row.low.item() == pytest.approx(float(low[1, 0]))
    scores.save(tmp_path / "s.safetensors")
    back = ContextualScores.load(tmp_path / "s.safetensors")
    assert back.span_names == scores.span_names
    for name in NAMES:
        torch.testing.assert_close(
            back.mass(name, per_example=True),
            scores.mass(name, per_example=True),
            atol=0,
            rtol=0,
            equal_nan=True,
        )
    with pytest.raises(KeyError, match="unknown score kind or span 'answer'.*question"):
        scores.mass("answer")
    assert "spans=['instruction', 'question', 'first two', 'pieces']" in repr(scores)


def focuslens_top(table, k):
    flat = [
        (float(table[l, h]), l, h) for l in range(table.shape[0]) for h in range(table.shape[1])
    ]
    return [(l, h) for _, l, h in sorted(flat, key=lambda t: (-t[0], t[1], t[2]))[:k]]


def test_from_documents_names_instruction_and_question_and_variants_keep_them():
    p = LabeledPrompt.from_documents(
        "Who wrote Hamlet?",
        [("Hamlet", "A play by Shakespeare."), ("Paris", "A city."), ("Rome", "Old.")],
        gold_index=1,
        answers=["Shakespeare"],
        instruction="Answer briefly.",
    )
    for variant in (p, p.gold_only(), p.distractors_only()):
        assert [variant.text[s:e] for s, e in variant.spans["question"]] == ["Who wrote Hamlet?"]
        assert [variant.text[s:e] for s, e in variant.spans["instruction"]] == ["Answer briefly."]
    # A span the layout cannot place is never dropped silently.
    extra = replace(p, spans={**p.spans, "mine": (0, 6)})
    assert extra.layout() is None
    with pytest.raises(ValueError, match=r"named span\(s\) \['mine'\]"):
        extra.gold_only()


def test_named_spans_map_to_tokens_and_survive_files(tmp_path):
    model = tiny_model("rotary")
    p = make_prompts(1)[0]
    tp = tokenize_prompt(model, p)
    ((s, e),) = tp.spans["question"]
    assert model.to_string(tp.tokens[s:e]) == "w7 w8"
    hand = LabeledPrompt("w1 w2 w3 w4", (3, 5), [], ["w2"], spans={"q": [(0, 2), (9, 11)]})
    write_prompts([p], tmp_path / "documents.jsonl")
    write_prompts([hand], tmp_path / "labeled.jsonl")
    (back,) = read_prompts(tmp_path / "documents.jsonl")
    assert back.spans == p.spans and back.gold_only().spans == p.gold_only().spans
    assert read_prompts(tmp_path / "labeled.jsonl")[0].spans == {"q": ((0, 2), (9, 11))}


@pytest.mark.parametrize(
    "spans, message",
    [
        ({"sink": (0, 2)}, "span name 'sink' is taken by a score kind"),
        ({"": (0, 2)}, "span names must be non-empty strings"),
        ({"q": (3, 3)}, r"span 'q' \(3, 3\) is empty"),
        ({"q": (0, 99)}, r"span 'q' \(0, 99\) is out of range for a prompt of 11 characters"),
        ({"q": "0:2"}, r"span 'q' span '0:2' must be two ints"),
        ({"q": [(0, 2), (1.5, 3)]}, "must be two ints"),
    ],
)
def test_bad_named_spans_name_the_problem(spans, message):
    with pytest.raises(ValueError, match=message):
        LabeledPrompt("w1 w2 w3 w4", (3, 5), [], ["w2"], spans=spans)


@pytest.mark.bad_input
def test_spans_that_are_not_a_dict_name_the_problem():
    with pytest.raises(ValueError, match="spans must be a dict"):
        LabeledPrompt("w1 w2 w3 w4", (3, 5), [], ["w2"], spans=[(0, 2)])


def test_a_named_span_on_no_token_is_an_error_naming_it():
    model = tiny_model("rotary")
    p = LabeledPrompt("w1 w2  w3", (0, 2), [], ["w2"], response="w2", spans={"gap": (5, 6)})
    with pytest.raises(ValueError, match=r"span 'gap' \(5, 6\) \(' '\) covers no token"):
        tokenize_prompt(model, p)
