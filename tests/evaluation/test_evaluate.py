"""Answer metrics, greedy generation with the KV cache, and evaluate()."""

from __future__ import annotations

import contextlib

import pytest
import torch
from _tiny import WORDS, bpe_tokenizer, tiny_model, word_tokenizer

from focuslens import LabeledPrompt, tokenize_prompt
from focuslens.evaluation.accuracy import EvalResult, evaluate
from focuslens.evaluation.metrics import (
    METRICS,
    best_subspan_em,
    exact_match,
    get_metric,
    normalize_answer,
)
from focuslens.interventions.base import Intervention
from focuslens.model.generation import find_stop, generate_greedy
from focuslens.tasks.qa import qa_prompt


# ------------------------------------------------------------------ metrics
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Eiffel Tower", "eiffel tower"),
        ("  a   cat,  AN apple; the end. ", "cat apple end"),
        ("Theatre and anthem", "theatre and anthem"),  # articles only as whole words
        ("U.S.A.!", "usa"),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        ("Paris", ["Paris"], True),
        ("The capital is Paris, France.", ["paris"], True),
        ("It was the Eiffel tower", ["Eiffel Tower"], True),
        ("Eiffel", ["Eiffel Tower"], False),
        ("Lyon", ["Paris", "Lyon"], True),  # any of several gold answers
        ("Lyon", ["Paris", "Marseille"], False),
        ("an apple", ["The apple"], True),  # articles dropped on both sides
        ("Mr. Smith", ["mr smith"], True),  # punctuation dropped
        ("Parisian", "Paris", True),  # substring, not word match (the authors' metric)
        ("x", "Paris", False),  # a str answer is one answer, not letters
        ("anything", ["The"], False),  # an answer that normalises to "" does not match all
        ("the", ["The"], True),
    ],
)
def test_best_subspan_em(prediction, answers, expected):
    assert best_subspan_em(prediction, answers) is expected


def test_exact_match_and_registry():
    assert exact_match(" The  Paris. ", ["paris"])
    assert not exact_match("Paris, France", ["Paris"])
    assert exact_match("NONE", ["v1", "none"])
    assert METRICS["best_subspan_em"] is best_subspan_em and METRICS["exact_match"] is exact_match
    assert get_metric("exact_match") is exact_match and get_metric(len) is len
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        get_metric("f1")
    with pytest.raises(ValueError, match="no gold answers"):
        best_subspan_em("x", [])
    with pytest.raises((ValueError, TypeError)):  # TypeError under jaxtyping checks
        exact_match("x", [1])


# ------------------------------------------------------------------ generation
@pytest.fixture(scope="module")
def model():
    return tiny_model("rotary", n_ctx=512)


def argmax_loop(model, prompt, n):
    """The oracle: re-run the whole sequence and take the argmax, no cache, no mask."""
    seq = prompt.clone()
    with torch.no_grad():
        for _ in range(n):
            seq = torch.cat([seq, model(seq[None])[0, -1].argmax()[None]])
    return seq[len(prompt) :].tolist()


@pytest.mark.parametrize("kind", ["gpt2", "rotary", "gqa"])
@pytest.mark.parametrize("tok", ["word", "bpe"])
def test_kv_cache_greedy_equals_argmax_loop(kind, tok):
    tokenizer = word_tokenizer() if tok == "word" else bpe_tokenizer()
    m = tiny_model(kind, tokenizer=tokenizer)
    prompt = m.to_tokens("w1 w2 w3 Document w4 the quick brown fox")[0]
    out = generate_greedy(m, prompt, max_new_tokens=15, stop_ids=(), stop_strings=None)
    assert out.stop_reason == "max_new_tokens"
    assert out.tokens.tolist() == argmax_loop(m, prompt, 15)
    assert (
        generate_greedy(
            m, prompt[None], max_new_tokens=15, stop_ids=(), stop_strings=None, use_cache=False
        ).tokens.tolist()
        == out.tokens.tolist()
    )
    assert out.text == tokenizer.decode(out.tokens.tolist(), skip_special_tokens=True)


def test_pad_token_in_the_prompt_is_attended():
    # bpe: pad == eos == bos. TransformerLens masks a trailing pad under the KV cache
    # unless an explicit mask is given; the generation must match the unmasked oracle.
    m = tiny_model("gpt2", tokenizer=bpe_tokenizer())
    eos = m.tokenizer.eos_token_id
    prompt = torch.cat([m.to_tokens("the quick fox")[0], torch.tensor([eos])])
    out = generate_greedy(m, prompt, max_new_tokens=8, stop_ids=(), stop_strings=None)
    assert out.tokens.tolist() == argmax_loop(m, prompt, 8)


def test_stop_ids_and_default_eos(model):
    prompt = model.to_tokens("w5 w6 w7")[0]
    full = generate_greedy(model, prompt, max_new_tokens=12, stop_ids=(), stop_strings=None)
    tokens = full.tokens.tolist()
    k = next(i for i in range(2, len(tokens)) if tokens[i] not in tokens[:i])
    out = generate_greedy(model, prompt, max_new_tokens=12, stop_ids=[tokens[k]], stop_strings=None)
    assert out.stop_reason == "eos" and out.tokens.tolist() == tokens[: k + 1]
    # default: the tokenizer's EOS, made certain by a huge unembedding bias
    eos_model = tiny_model("rotary", n_ctx=512)
    with torch.no_grad():
        eos_model.unembed.b_U[eos_model.tokenizer.eos_token_id] = 1e4
    out = generate_greedy(eos_model, prompt, max_new_tokens=12)
    assert out.stop_reason == "eos" and out.text == "" and out.tokens.numel() == 1


def test_stop_strings(model):
    tok = model.tokenizer
    prompt = model.to_tokens("w8 w9 w10")[0]
    full = generate_greedy(model, prompt, max_new_tokens=12, stop_ids=(), stop_strings=None)
    tokens = full.tokens.tolist()
    words = [tok.decode([t]) for t in tokens]
    k = next(i for i in range(2, len(words)) if words[i] not in tok.decode(tokens[:i]))
    out = generate_greedy(model, prompt, max_new_tokens=12, stop_ids=(), stop_strings=words[k])
    assert out.stop_reason == "stop_string"
    assert out.tokens.tolist() == tokens[: k + 1]
    assert out.text == tok.decode(tokens[:k]) + " "  # cut before the stop string


def test_find_stop_skips_leading_whitespace():
    assert find_stop("\nParis\nFrance", ["\n"]) == 6
    assert find_stop(" \n ", ["\n"]) is None
    assert find_stop("Paris. Next", ["\n", "."]) == 5
    assert find_stop("Paris", []) is None


def test_generation_stops_at_the_context_length():
    m = tiny_model("rotary", n_ctx=16)
    prompt = m.to_tokens(" ".join(WORDS[:13]))[0]  # 14 tokens with BOS
    out = generate_greedy(m, prompt, max_new_tokens=10, stop_ids=(), stop_strings=None)
    assert out.stop_reason == "n_ctx" and out.tokens.numel() == 16 - 14 + 1
    assert out.tokens.tolist() == argmax_loop(m, prompt, 3)


def test_generation_errors(model):
    prompt = model.to_tokens("w1 w2")
    with pytest.raises(ValueError, match="one prompt"):
        generate_greedy(model, torch.cat([prompt, prompt]))
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_greedy(model, prompt, max_new_tokens=0)
    with pytest.raises(ValueError, match="n_ctx=16"):
        generate_greedy(tiny_model("rotary", n_ctx=16), torch.zeros(17, dtype=torch.long))
    with pytest.raises(ValueError, match="stop_strings"):
        generate_greedy(model, prompt, stop_strings=[""])


# ------------------------------------------------------------------ evaluate
def qa_prompts(n=6, n_distractors=3):
    prompts = []
    for i in range(n):
        words = [WORDS[(7 * i + j) % len(WORDS)] for j in range(4 * (n_distractors + 1))]
        docs = [
            (words[4 * d], " ".join(words[4 * d + 1 : 4 * d + 4])) for d in range(n_distractors + 1)
        ]
        prompts.append(
            qa_prompt(
                f"{words[0]} ?",
                [WORDS[i]],
                docs[0],
                docs[1:],
                gold_position=i % (n_distractors + 1),
                meta={"max_new_tokens": 4, "stop_strings": (), "id": f"q{i}"},
            )
        )
    return prompts


class Counting:
    """A dummy intervention: counts apply() calls and entries, and hooks a counter."""

    def __init__(self, hook_name="blocks.0.attn.hook_pattern", fn=None):
        self.calls, self.entered, self.exited, self.fired = [], 0, 0, 0
        self.hook_name, self.fn = hook_name, fn

    def _hook(self, value, hook):
        self.fired += 1
        return None if self.fn is None else self.fn(value, hook)

    @contextlib.contextmanager
    def apply(self, model, prompts):
        self.calls.append(list(prompts))
        self.entered += 1
        try:
            with model.hooks(fwd_hooks=[(self.hook_name, self._hook)]):
                yield
        finally:
            self.exited += 1


def no_hooks_left(model):
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


def test_evaluate_rows_and_accuracy(model):
    prompts = qa_prompts()
    result = evaluate(model, prompts, progress=False)
    df = result.to_dataframe()
    assert isinstance(result, EvalResult) and len(df) == len(prompts) == result.n
    for row, p in zip(df.itertuples(), prompts):
        tp = tokenize_prompt(model, p)
        gen = generate_greedy(model, tp.tokens[: tp.n_prompt], max_new_tokens=4, stop_strings=())
        assert row.prediction == gen.text and row.n_new_tokens == gen.tokens.numel()
        assert row.correct == best_subspan_em(gen.text, p.answers)
        assert row.gold_position == p.gold_position and row.n_documents == p.n_documents
        assert row.metric == "best_subspan_em" and row.id == p.meta["id"]
        assert row.n_prompt_tokens == tp.n_prompt
    assert result.accuracy == pytest.approx(df["correct"].mean())
    assert 0.0 <= result.accuracy <= 1.0
    summary = result.summary()
    assert summary["n"] == len(prompts) and summary["accuracy"] == result.accuracy
    by_pos = summary["by_gold_position"]
    assert sorted(by_pos["gold_position"]) == [0, 1, 2, 3] and by_pos["n"].sum() == len(prompts)
    assert summary["by_n_documents"]["n_documents"].tolist() == [4]


def test_evaluate_ignores_the_response_and_picks_the_metric(model):
    prompts = qa_prompts(3)
    base = evaluate(model, prompts, progress=False).to_dataframe()
    with_response = [p.with_response(" w1 w2 w3") for p in prompts]
    again = evaluate(model, with_response, progress=False).to_dataframe()
    assert again["prediction"].tolist() == base["prediction"].tolist()
    # a metric that always says yes, from meta, then overridden by the argument
    from dataclasses import replace

    yes = [replace(p, meta={**p.meta, "metric": lambda pred, answers: True}) for p in prompts]
    assert evaluate(model, yes, progress=False).accuracy == 1.0
    assert (
        evaluate(model, yes, metric="exact_match", progress=False)
        .to_dataframe()["metric"]
        .eq("exact_match")
        .all()
    )


def test_intervention_is_entered_once_per_prompt_and_removed(model):
    prompts = qa_prompts(4)
    counting = Counting()
    assert isinstance(counting, Intervention)
    df = evaluate(model, prompts, intervention=counting, progress=False, batch_size=1)
    df = df.to_dataframe()
    assert counting.entered == counting.exited == len(prompts)
    assert [c[0] for c in counting.calls] == prompts and all(len(c) == 1 for c in counting.calls)
    # the hook fired in every forward pass: one per generated token
    assert counting.fired == df["n_new_tokens"].sum()
    assert no_hooks_left(model)


def test_a_batched_intervention_is_entered_once_per_batch_with_its_prompts(model):
    prompts = qa_prompts(5)
    counting = Counting()
    df = evaluate(model, prompts, intervention=counting, progress=False, batch_size=3)
    df = df.to_dataframe()
    assert counting.entered == counting.exited == 2
    assert counting.calls == [prompts[:3], prompts[3:]]
    # one forward pass per step of the longest answer of each batch
    steps = df["n_new_tokens"].tolist()
    assert counting.fired == max(steps[:3]) + max(steps[3:])
    assert no_hooks_left(model)


def test_intervention_hooks_removed_after_an_exception(model):
    def boom(value, hook):
        raise RuntimeError("boom")

    counting = Counting(fn=boom)
    with pytest.raises(RuntimeError, match="boom"):
        evaluate(model, qa_prompts(2), intervention=counting, progress=False)
    assert counting.exited == 1 and no_hooks_left(model)


def test_intervention_that_changes_logits_changes_predictions(model):
    prompts = qa_prompts(4)
    target = model.tokenizer.convert_tokens_to_ids("w3")
    direction = model.W_U[:, target].detach()

    def push(resid, hook):
        return resid + 100 * direction / direction.norm()

    steer = Counting(hook_name="ln_final.hook_normalized", fn=push)
    base = evaluate(model, prompts, progress=False)
    steered = evaluate(model, prompts, intervention=steer, progress=False)
    assert steered.to_dataframe()["prediction"].eq("w3 w3 w3 w3").all()
    assert base.to_dataframe()["prediction"].ne("w3 w3 w3 w3").any()
    assert evaluate(model, prompts, progress=False).to_dataframe().equals(base.to_dataframe())


def oracle_allocation(model, prompt, heads):
    """Attention of the response rows over ``heads``, from the full attention cache."""
    tp = tokenize_prompt(model, prompt)
    _, cache = model.run_with_cache(tp.tokens[None])
    rows = list(range(tp.n_prompt, len(tp)))
    out = {"relevant": [], "distractors": [], "sink": []}
    for layer, head in heads:
        a = cache["pattern", layer][0, head][rows]
        rel = (
            a[:, tp.relevant[0] : tp.relevant[1]].sum(-1)
            if tp.relevant
            else torch.tensor(float("nan"))
        )
        dis = sum(a[:, s:e].sum(-1) for s, e in tp.distractors)
        out["relevant"].append(rel.mean())
        out["distractors"].append(dis.mean())
        out["sink"].append(a[:, :2].sum(-1).mean())
    return {k: float(torch.stack(v).mean()) for k, v in out.items()}


def test_attention_allocation_matches_the_full_cache(model):
    prompts = qa_prompts(3)
    heads = [(0, 1), (1, 2), (1, 3)]
    counting = Counting()
    result = evaluate(model, prompts, heads=heads, intervention=counting, progress=False)
    df = result.to_dataframe()
    # one batched generation, then one attention pass per prompt
    assert counting.entered == 1 + len(prompts) and counting.calls[0] == prompts
    assert counting.calls[1] == [prompts[0].with_response(df["prediction"][0])]
    for row, p in zip(df.itertuples(), prompts):
        expected = oracle_allocation(model, p.with_response(row.prediction), heads)
        assert row.attn_relevant == pytest.approx(expected["relevant"], abs=1e-5)
        assert row.attn_distractors == pytest.approx(expected["distractors"], abs=1e-5)
        assert row.attn_sink == pytest.approx(expected["sink"], abs=1e-5)
        total = row.attn_relevant + row.attn_distractors + row.attn_sink + row.attn_other
        assert total == pytest.approx(1.0, abs=1e-5)
    summary = result.summary()
    assert summary["attn_relevant"] == pytest.approx(df["attn_relevant"].mean())
    assert "attn_sink" in summary["by_gold_position"].columns
    assert result.heads == sorted(heads) and no_hooks_left(model)


def test_allocation_without_relevant_document_or_answer(model):
    prompts = qa_prompts(2)
    negative = prompts[0].distractors_only()
    df = evaluate(model, [negative, prompts[1]], heads=[(1, 0)], progress=False).to_dataframe()
    assert df["attn_relevant"].isna()[0] and df["attn_distractors"].notna()[0]
    assert "no relevant document" in df["note"][0] and df["gold_position"].isna()[0]
    eos_model = tiny_model("rotary", n_ctx=512)
    with torch.no_grad():
        eos_model.unembed.b_U[eos_model.tokenizer.eos_token_id] = 1e4
    df = evaluate(eos_model, prompts, heads=[(1, 0)], progress=False).to_dataframe()
    assert len(df) == 2 and df["prediction"].eq("").all()
    assert df["attn_relevant"].isna().all() and df["note"].str.contains("empty prediction").all()
    assert not df["correct"].any()


def test_evaluate_errors_and_edge_cases(model, capsys):
    prompts = qa_prompts(2)
    with pytest.raises(ValueError, match="does not exist"):
        evaluate(model, prompts, heads=[(5, 0)], progress=False)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(model, prompts, metric="bleu", progress=False)
    with pytest.raises(TypeError, match="LabeledPrompt"):
        evaluate(model, ["text"], progress=False)
    with pytest.raises(TypeError, match="no apply|Intervention"):
        evaluate(model, prompts, intervention=object(), progress=False)
    with pytest.raises(ValueError, match="no prompts given"):  # accuracy of nothing: refused
        evaluate(model, [], progress=False)
    capsys.readouterr()
    evaluate(model, prompts[:1], progress=False)
    assert "evaluate" not in capsys.readouterr().err
    evaluate(model, prompts[:1], progress=True)
    assert "evaluate" in capsys.readouterr().err


def test_meta_columns_and_metric_alias(model):
    from dataclasses import replace

    p = qa_prompts(1)[0]
    p = replace(
        p,
        meta={
            **p.meta,
            "gold_position": p.gold_position,
            "n_documents": 99,
            "metric": "exact",
            "nested": {"x": 1},
        },
    )
    df = evaluate(model, [p], progress=False).to_dataframe()
    assert "meta_gold_position" not in df.columns  # same as the column: not repeated
    assert df["meta_n_documents"][0] == 99 and df["n_documents"][0] == 4  # differs: kept
    assert "nested" not in df.columns and df["metric"][0] == "exact"
    assert df["correct"][0] == exact_match(df["prediction"][0], p.answers)


def test_stop_strings_and_max_new_tokens_arguments_override_meta(model):
    p = qa_prompts(1)[0]  # meta: max_new_tokens=4, stop_strings=()
    tp = tokenize_prompt(model, p)
    full = generate_greedy(model, tp.tokens[: tp.n_prompt], max_new_tokens=6)
    stop = model.tokenizer.decode(full.tokens[2:3].tolist())
    expected = generate_greedy(model, tp.tokens[: tp.n_prompt], max_new_tokens=6, stop_strings=stop)
    df = evaluate(model, [p], max_new_tokens=6, stop_strings=stop, progress=False).to_dataframe()
    assert df["prediction"][0] == expected.text and df["stop_reason"][0] == expected.stop_reason
    df = evaluate(model, [p], max_new_tokens=6, progress=False).to_dataframe()
    assert df["prediction"][0] == full.text and df["n_new_tokens"][0] == full.tokens.numel()


def test_allocation_reads_the_generated_tokens_not_a_re_tokenisation():
    """With a byte-level BPE, a random model's answer does not survive decode + encode
    (the test checks that it does not); the attention is measured on the answer rows the
    model actually generated."""
    from focuslens.model.generation import answer_tokens, generate_greedy

    model = tiny_model("rotary", tokenizer=bpe_tokenizer())
    docs = [("Paris", "the quick brown fox"), ("France", "jumps over the lazy dog")]
    prompts = [
        LabeledPrompt.from_documents("who wrote the play?", docs, i, ["x"], instruction="Answer.")
        for i in range(2)
    ]
    heads = [(0, 1), (1, 2)]
    df = evaluate(
        model, prompts, heads=heads, max_new_tokens=6, stop_strings=(), progress=False
    ).to_dataframe()
    differs = 0
    for row, p in zip(df.itertuples(), prompts):
        tp = tokenize_prompt(model, p)
        gen = generate_greedy(model, tp.tokens[: tp.n_prompt], max_new_tokens=6, stop_strings=())
        answer = answer_tokens(gen, model.tokenizer)
        assert gen.text == row.prediction and answer.numel() > 0
        retokenised = tokenize_prompt(model, p.with_response(gen.text)).tokens[tp.n_prompt :]
        differs += not torch.equal(retokenised, answer)
        tokens = torch.cat([tp.tokens[: tp.n_prompt], answer])
        _, cache = model.run_with_cache(tokens[None])
        rows = list(range(tp.n_prompt, len(tokens)))
        expected = torch.stack(
            [
                cache["pattern", layer][0, head][rows][:, tp.relevant[0] : tp.relevant[1]]
                .sum(-1)
                .mean()
                for layer, head in heads
            ]
        ).mean()
        assert row.attn_relevant == pytest.approx(float(expected), abs=1e-5)
    assert differs == len(prompts)


def test_answer_tokens_leave_out_the_stop():
    from focuslens.model.generation import Generation, answer_tokens

    tok = tiny_model("rotary").tokenizer
    ids = tok("w3 w4", add_special_tokens=False)["input_ids"]
    eos = tok.eos_token_id
    gen = Generation(tokens=torch.tensor([*ids, eos]), text="w3 w4", stop_reason="eos")
    assert answer_tokens(gen, tok).tolist() == ids
    cut = Generation(tokens=torch.tensor([*ids, *ids]), text="w3", stop_reason="stop_string")
    assert answer_tokens(cut, tok).tolist() == ids[:1]
    empty = Generation(tokens=torch.tensor([eos]), text="", stop_reason="eos")
    assert answer_tokens(empty, tok).numel() == 0


def test_empty_prompts_are_refused_like_everywhere_else(model):
    with pytest.raises(ValueError, match="no prompts given"):
        evaluate(model, [], progress=False)
    with pytest.raises(ValueError, match="no prompts given"):
        evaluate(model, iter([]), progress=False)
