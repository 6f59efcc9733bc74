"""Every plot on small real results: traces, axes, labels, and values against an oracle."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from _oracles import make_prompts
from _tiny import tiny_model

from focuslens import LabeledPrompt, contextual_scores, plots, tokenize_prompt
from focuslens.evaluation.accuracy import EvalResult, evaluate
from focuslens.evaluation.curves import accuracy_table, allocation_table, wilson_interval
from focuslens.scores.attention import attention_map_data

HEADS = [(1, 2), (0, 1)]


@pytest.fixture(scope="module")
def model():
    return tiny_model("gqa")


@pytest.fixture(scope="module")
def prompts():
    return make_prompts(4)


def full_pattern(model, prompt):
    """The oracle: ``[n_layers, n_heads, pos, pos]`` from a full run_with_cache."""
    tp = tokenize_prompt(model, prompt)
    _, cache = model.run_with_cache(tp.tokens[None], names_filter=lambda n: "pattern" in n)
    return tp, torch.stack([cache["pattern", l][0] for l in range(model.cfg.n_layers)])


# ---------------------------------------------------------------------- head tables
def test_head_scores_side_by_side_shares_one_scale(model, prompts):
    scores = contextual_scores(model, prompts)
    fig = plots.head_scores(scores, ["relevant", "sink"], top_k=3)
    heats = [t for t in fig.data if t.type == "heatmap"]
    assert [h.name for h in heats] == ["relevant", "sink"]
    zmax = max(float(scores.relevant.max()), float(scores.sink.max()))
    assert all(h.zmin == 0 and h.zmax == pytest.approx(zmax) for h in heats)
    assert [h.showscale for h in heats] == [False, True]
    # Hover ranks are the ranks of the scores, by hand.
    flat = scores.sink.flatten().tolist()
    best = max(range(len(flat)), key=lambda i: flat[i])
    l, h = divmod(best, model.cfg.n_heads)
    assert heats[1].text[l][h] == "rank 1"
    marks = [t for t in fig.data if t.type == "scatter"]
    assert list(zip(marks[1].y, marks[1].x)) == scores.top_heads(3, by="sink")
    assert fig.layout.yaxis.title.text == "layer" and fig.layout.xaxis.title.text == "head"


def test_head_scores_accepts_plain_tables():
    tables = {"relevant": [[0.1, 0.9], [0.3, 0.2]], "gold prompt": torch.tensor([[1.0, 0], [0, 0]])}
    fig = plots.head_scores(tables, ["relevant", "gold prompt"], top_k=1)
    assert fig.data[0].z[0][1] == pytest.approx(0.9)
    assert fig.data[2].zmax == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\[n_layers, n_heads\] table, got shape \(3,\)"):
        plots.head_scores({"relevant": [1.0, 2.0, 3.0]})


def test_head_effects_diverging_and_ranked_by_magnitude(model, prompts):
    scores = contextual_scores(model, prompts)
    effect = scores.relevant - scores.distractors  # a signed table from real scores
    fig = plots.head_effects({"a": effect, "b": -0.5 * effect}, top_k=2, label="delta")
    heats = [t for t in fig.data if t.type == "heatmap"]
    bound = float(effect.abs().max())
    assert all(
        h.zmid == 0 and h.zmin == pytest.approx(-bound) and h.zmax == pytest.approx(bound)
        for h in heats
    )
    magnitude = effect.abs().flatten().tolist()
    order = sorted(range(len(magnitude)), key=lambda i: -magnitude[i])[:2]
    marks = fig.data[1]
    n_heads = model.cfg.n_heads
    assert list(zip(marks.y, marks.x)) == [divmod(i, n_heads) for i in order]
    assert heats[0].colorscale[0][1] != heats[0].colorscale[-1][1]


# ---------------------------------------------------------------------- attention maps
def test_attention_map_tokens_match_full_cache(model, prompts):
    prompt = prompts[1]
    fig = plots.attention_map(model, prompt, HEADS, level="tokens")
    tp, pattern = full_pattern(model, prompt)
    rows = list(range(tp.n_prompt, len(tp)))
    heats = [t for t in fig.data if t.type == "heatmap"]
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(heats) == len(bars) == len(HEADS)
    for (layer, head), heat, bar in zip(HEADS, heats, bars):
        expected = pattern[layer, head][rows]
        for r, row in enumerate(rows):
            for k in range(len(tp)):
                if k > row:
                    assert heat.z[r][k] is None  # masked causal triangle
                else:
                    assert heat.z[r][k] == pytest.approx(float(expected[r, k]), abs=1e-6)
        torch.testing.assert_close(torch.tensor(bar.y), expected.mean(0), atol=1e-6, rtol=0)
    tokens = [model.tokenizer.decode([t]) for t in tp.tokens.tolist()]
    assert list(heats[0].x) == [f"{i}:{t}" for i, t in enumerate(tokens)]
    assert list(heats[0].y) == [f"{r}:{tokens[r]}" for r in rows]
    assert [t.visible for t in fig.data] == [True, True, False, False]
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["L1H2", "L0H1"]
    assert buttons[1].args[0]["visible"] == [False, False, True, True]
    assert fig.layout.xaxis2.title.text == "key" and fig.layout.yaxis.title.text == "answer row"


def test_duplicate_tokens_keep_their_own_columns(model):
    prompt = LabeledPrompt("w1 w1 w1 w2 w1 w1", (6, 11), [], ["w1"], response="w1 w1")
    fig = plots.attention_map(model, prompt, [(0, 0)], sink=1)
    heat = fig.data[0]
    tp = tokenize_prompt(model, prompt)
    assert len(heat.x) == len(set(heat.x)) == len(tp)
    assert len(heat.z[0]) == len(tp)
    assert sum(1 for label in heat.x if label.endswith(":w1")) == 7
    assert len(set(heat.y)) == 2


def test_attention_map_by_document_sums_each_span(model, prompts):
    prompt = prompts[2]
    fig = plots.attention_map(model, prompt, HEADS, level="documents")
    tp, pattern = full_pattern(model, prompt)
    rows = list(range(tp.n_prompt, len(tp)))
    heat = fig.data[0]
    docs = sorted([tp.relevant, *tp.distractors])
    gold = docs.index(tp.relevant) + 1
    names = ["sink"] + [
        f"doc {i}" + (" (relevant)" if i == gold else "") for i in range(1, len(docs) + 1)
    ]
    assert list(heat.x) == [*names, "other", "response"]
    a = pattern[1, 2][rows]
    by_hand = [a[:, :2].sum(-1)] + [a[:, s:e].sum(-1) for s, e in docs]
    labelled = set(range(2)) | {p for s, e in docs for p in range(s, e)}
    other = [p for p in range(tp.n_prompt) if p not in labelled]
    by_hand += [a[:, other].sum(-1), a[:, tp.n_prompt :].sum(-1)]
    torch.testing.assert_close(torch.tensor(heat.z), torch.stack(by_hand, -1), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        torch.tensor(heat.z).sum(-1), torch.ones(len(rows)), atol=1e-5, rtol=0
    )
    # The strip marks the relevant column in its colour.
    rel_shapes = [s for s in fig.layout.shapes if s.fillcolor == plots.SPAN_COLOURS["relevant"]]
    assert [(s.x0, s.x1) for s in rel_shapes] == [(names.index(names[gold]) - 0.5, gold + 0.5)]


def test_long_prompts_are_aggregated_and_windows_zoom(model):
    rng = torch.Generator().manual_seed(3)
    from _tiny import random_text

    docs = [("w1", random_text(rng, 6)) for _ in range(14)]
    prompt = LabeledPrompt.from_documents("w7", docs, 9, ["x"], instruction="w9", response="w3 w4")
    tp = tokenize_prompt(model, prompt)
    assert len(tp) > 60
    auto = plots.attention_map(model, prompt, [(1, 0)], max_tokens=60)
    assert "(relevant)" in " ".join(auto.data[0].x) and len(auto.data[0].x) == 14 + 3
    zoom = plots.attention_map(model, prompt, [(1, 0)], window="relevant", max_tokens=60)
    s, e = tp.relevant
    assert zoom.data[0].x[0].startswith(f"{s - 8}:") and zoom.data[0].x[-1].startswith(f"{e + 7}:")
    strip = [x for x in zoom.layout.shapes if x.fillcolor == plots.SPAN_COLOURS["relevant"]]
    assert (strip[0].x0, strip[0].x1) == (8 - 0.5, 8 + (e - s) - 0.5)
    _, pattern = full_pattern(model, prompt)
    expected = pattern[1, 0][tp.n_prompt :, s - 8 : e + 8]
    torch.testing.assert_close(torch.tensor(zoom.data[0].z), expected, atol=1e-6, rtol=0)


def test_attention_map_bad_input_names_the_problem(model, prompts):
    with pytest.raises(ValueError, match="head L5H0 does not exist in a model with 2 layers"):
        plots.attention_map(model, prompts[0], [(5, 0)])
    with pytest.raises(ValueError, match="level must be"):
        plots.attention_map(model, prompts[0], [(0, 0)], level="words")
    amap = attention_map_data(model, prompts[0], [(0, 0)])
    with pytest.raises(ValueError, match=r"window \(5, 999\) must satisfy 0 <= start < end"):
        amap.window(5, 999)
    no_gold = prompts[0].distractors_only()
    with pytest.raises(ValueError, match="window='relevant' needs a prompt with a relevant span"):
        plots.attention_map(model, no_gold, [(0, 0)], window="relevant")


def test_attention_map_data_is_pure_and_leaves_no_hooks(model, prompts):
    tokens = model.to_tokens("w1 w2 w3")
    before = model(tokens)
    amap = attention_map_data(model, prompts[0], [(1, 1), "L0H3", (1, 1)])
    assert amap.heads == [(1, 1), (0, 3)]
    assert all(len(hp._forward_hooks) == 0 for hp in model.hook_dict.values())
    assert torch.equal(model(tokens), before)
    df = amap.to_dataframe()
    assert set(df.segment) >= {"sink", "doc 1 (relevant)", "response"}
    assert len(df) == 2 * len(amap.rows) * amap.n_keys


def test_attention_map_save_load_round_trip(model, prompts, tmp_path):
    from focuslens.scores.attention import AttentionMap

    amap = attention_map_data(model, prompts[2], HEADS).window(3, 20)
    amap.save(tmp_path / "a.safetensors")
    back = AttentionMap.load(tmp_path / "a.safetensors")
    assert torch.equal(back.pattern, amap.pattern)
    assert (back.heads, back.rows, back.tokens, back.offset, back.relevant, back.distractors) == (
        amap.heads,
        amap.rows,
        amap.tokens,
        amap.offset,
        amap.relevant,
        amap.distractors,
    )
    assert back.labels() == amap.labels() and back.labels()[0].startswith("3:")
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a readable AttentionMap file"):
        AttentionMap.load(tmp_path / "bad.safetensors")


# ---------------------------------------------------------------------- sweeps
@pytest.fixture(scope="module")
def results(model, prompts):
    """Real EvalResults of the tiny model (a deterministic metric gives mixed accuracy)."""

    def metric(prediction, answers):
        return len(prediction) % 2 == 0

    base = evaluate(model, prompts, max_new_tokens=2, heads=HEADS, metric=metric, progress=False)
    frame = base.to_dataframe()
    subset = lambda rows: EvalResult(frame=frame.iloc[rows].reset_index(drop=True), heads=HEADS)  # noqa: E731
    return {"base": base, "half": subset([0, 1]), "other": subset([1, 2, 3])}


def wilson_by_hand(p, n):
    z = 1.959963984540054
    centre = (2 * n * p + z**2) / (2 * (n + z**2))
    spread = z * math.sqrt(z**2 + 4 * n * p * (1 - p)) / (2 * (n + z**2))
    return centre - spread, centre + spread


def test_wilson_interval_matches_hand_formula():
    for p, n in [(0.5, 4), (0.0, 10), (1.0, 7), (0.3, 200)]:
        low, high = wilson_interval(p, n)
        assert (low, high) == pytest.approx(wilson_by_hand(p, n), abs=1e-12)
    assert math.isnan(wilson_interval(0.5, 0)[0])
    with pytest.raises(ValueError, match="confidence must be in"):
        wilson_interval(0.5, 4, confidence=1.5)


def test_accuracy_curves_sweep_with_error_bars_and_references(results):
    sweep = {
        "top-k": {0.0: results["base"], 0.5: results["half"]},
        "random": {0.0: results["other"], 0.5: (0.25, 8)},
    }
    fig = plots.accuracy_curves(sweep, x="alpha", baseline=results["base"], gold_only=0.9)
    curves = [t for t in fig.data if t.x[0] is not None]
    assert [c.name for c in curves] == ["top-k", "random"]
    top = curves[0]
    acc, n = results["half"].accuracy, results["half"].n
    assert list(top.x) == [0.0, 0.5] and top.y[1] == pytest.approx(acc)
    low, high = wilson_by_hand(acc, n)
    assert top.error_y.array[1] == pytest.approx(high - acc)
    assert top.error_y.arrayminus[1] == pytest.approx(acc - low)
    assert curves[1].y[1] == 0.25 and curves[1].customdata[1][0] == 8
    lines = [s for s in fig.layout.shapes if s.y0 == s.y1]
    assert sorted(s.y0 for s in lines) == pytest.approx(sorted([results["base"].accuracy, 0.9]))
    assert {t.name for t in fig.data if t.x[0] is None} == {
        f"baseline {results['base'].accuracy:.2f} (n={results['base'].n})",
        "gold only 0.90",
    }
    assert fig.layout.xaxis.title.text == "alpha"


def test_accuracy_curves_grouped_by_gold_position(results):
    fig = plots.accuracy_curves({"no steering": results["base"]}, x="gold_position")
    frame = results["base"].to_dataframe()
    expected = frame.groupby("gold_position")["correct"].agg(["mean", "size"])
    trace = fig.data[0]
    assert list(trace.x) == list(expected.index)
    assert list(trace.y) == pytest.approx(expected["mean"].tolist())
    assert [row[0] for row in trace.customdata] == expected["size"].tolist()
    with pytest.raises(ValueError, match="no column 'depth' to group by"):
        plots.accuracy_curves({"x": results["base"]}, x="depth")


def test_accuracy_table_from_an_aggregated_frame_and_bad_points():
    frame = pd.DataFrame({"series": ["a", "a"], "k": [1, 5], "accuracy": [0.5, 0.75], "n": [4, 8]})
    table = accuracy_table(frame, x="k")
    assert table.high.tolist() == pytest.approx(
        [wilson_by_hand(0.5, 4)[1], wilson_by_hand(0.75, 8)[1]]
    )
    with pytest.raises(ValueError, match=r"series 'a', alpha='x': expected an EvalResult"):
        accuracy_table({"a": {"x": "not a result"}})


def test_allocation_stacks_mean_attention(results):
    sweep = {0.0: results["base"], 1.0: results["half"], "auto": results["other"]}
    fig = plots.allocation(sweep, x="alpha")
    assert [t.name for t in fig.data] == ["relevant", "distractors", "sink", "other"]
    assert all(t.stackgroup == "mass" for t in fig.data)
    assert list(fig.data[0].x) == ["0.0", "1.0", "auto"]  # numbers first, then "auto"
    frame = results["half"].to_dataframe()
    assert fig.data[0].y[1] == pytest.approx(frame["attn_relevant"].mean())
    assert fig.data[2].y[2] == pytest.approx(results["other"].to_dataframe()["attn_sink"].mean())
    assert fig.layout.xaxis.type == "category"
    # Each x stacks to the total mass (1 up to rounding).
    total = [sum(t.y[i] for t in fig.data) for i in range(3)]
    assert total == pytest.approx([1.0, 1.0, 1.0], abs=1e-4)


def test_allocation_from_a_frame_and_missing_columns(results):
    frame = pd.concat(
        [
            results["base"].to_dataframe().assign(tau=0.1),
            results["half"].to_dataframe().assign(tau=1.0),
        ]
    )
    table = allocation_table(frame, x="tau")
    assert table.n.tolist() == [results["base"].n, results["half"].n]
    fig = plots.allocation(frame, x="tau")
    assert fig.layout.xaxis.type == "linear" and list(fig.data[1].x) == [0.1, 1.0]
    with pytest.raises(ValueError, match="evaluate with heads=... to measure attention"):
        plots.allocation({0.0: frame.drop(columns=["attn_sink"])}, x="alpha")
