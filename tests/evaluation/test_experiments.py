"""The split-softmax experiment as one call: each row equals a direct evaluate() run."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from _tiny import labeled_prompts, tiny_model

from focuslens import contextual_scores, evaluate
from focuslens.evaluation.experiments import CONDITIONS, contextual_head_experiment
from focuslens.heads import HeadSet, top_k
from focuslens.interventions import SplitSoftmax


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("rotary")
    prompts = labeled_prompts(2)
    train = labeled_prompts(3, seed=1)
    exp = contextual_head_experiment(
        model, prompts, ks=[1, 2], taus=[0.5], score_prompts=train, n_random=1, max_new_tokens=2
    )
    return model, prompts, train, exp


@pytest.mark.slow
def test_rows_equal_direct_evaluate_runs(setup):
    model, prompts, train, exp = setup
    frame = exp.to_dataframe()
    assert list(frame.condition) == [
        "baseline", "gold_only", "top_k", "random_k", "top_k", "random_k", "many"
    ]  # fmt: skip
    assert set(frame.condition) == set(CONDITIONS)
    scores = contextual_scores(model, train)
    measure = top_k(scores, 2)
    assert exp.measure_heads == measure and exp.meta["selection"] == "score_prompts"

    def check(row, items, intervention=None):
        direct = evaluate(
            model, items, intervention=intervention, heads=measure, max_new_tokens=2,
            progress=False,
        )  # fmt: skip
        assert row.accuracy == direct.accuracy and row.n == len(items)
        for kind in ("relevant", "distractors", "sink", "other"):
            expected = direct.summary()[f"attn_{kind}"]
            assert row[f"attn_{kind}"] == pytest.approx(expected, abs=1e-6)

    rows = {(r.condition, r.k, r.seed): r for _, r in frame.iterrows()}
    check(rows[("baseline", 0, -1)], prompts)
    check(rows[("gold_only", 0, -1)], [p.gold_only() for p in prompts])
    top2 = top_k(scores, 2)
    assert rows[("top_k", 2, -1)].heads == str(top2)
    check(rows[("top_k", 2, -1)], prompts, SplitSoftmax(top2, 0.5))
    control = HeadSet(rows[("random_k", 2, 0)].heads.split())
    assert len(control) == 2 and not control & top2
    check(rows[("random_k", 2, 0)], prompts, SplitSoftmax(control, 0.5))
    assert rows[("many", 8, -1)].k == 8 and math.isnan(rows[("baseline", 0, -1)].tau)
    # The boost moves attention to the relevant span in the measured heads.
    assert rows[("top_k", 2, -1)].attn_relevant > rows[("baseline", 0, -1)].attn_relevant


@pytest.mark.slow
def test_examples_curves_and_figure(setup):
    _, prompts, _, exp = setup
    assert len(exp.examples) == len(prompts) * len(exp.frame)
    assert {"condition", "k", "tau", "seed", "prediction", "correct"} <= set(exp.examples.columns)
    curves = exp.curves()
    assert list(curves.series.unique()) == [
        "top-k contextual heads", "k random heads", "many heads"
    ]  # fmt: skip
    fig = exp.figure()
    assert len(fig.data) >= 3
    assert "baseline" in repr(exp)


def test_bad_input():
    model = tiny_model("rotary")
    prompts = labeled_prompts(2)
    with pytest.raises(ValueError, match=r"prompts \[1\] have no relevant document"):
        contextual_head_experiment(model, [prompts[0], prompts[1].distractors_only()])
    with pytest.raises(ValueError, match="ks must be ints between 1 and 8"):
        contextual_head_experiment(model, prompts, ks=[0])
    with pytest.raises(ValueError, match="tau must be a positive"):
        contextual_head_experiment(model, prompts, ks=[1], taus=[-0.1])
    with pytest.raises(ValueError, match="taus is empty"):
        contextual_head_experiment(model, prompts, ks=[1], taus=[])


_BLOCK = re.compile(
    r"(?:<!--\s*test:\s*(?P<mode>skip|instead)(?P<arg>.*?)-->\s*\n)?"
    r"^```python[^\n]*\n(?P<code>.*?)^```",
    re.DOTALL | re.MULTILINE,
)


@pytest.mark.slow
def test_docs_heads_page_runs():
    """The Python blocks of docs/heads.md run in order on the demo model (with the
    smaller stand-ins given in ``<!-- test: instead ... -->`` comments)."""
    from focuslens.demo import load_demo_model

    try:
        load_demo_model()
    except FileNotFoundError:
        pytest.skip("the demo model's weights are not in the tree yet")
    text = (Path(__file__).resolve().parents[2] / "docs" / "heads.md").read_text()
    namespace: dict = {"__name__": "docs:heads.md"}
    blocks = list(_BLOCK.finditer(text))
    assert blocks
    for m in blocks:
        if m.group("mode") == "skip":
            continue
        code = m.group("arg") if m.group("mode") == "instead" else m.group("code")
        line = text.count("\n", 0, m.start("code")) + 1
        exec(compile(code, f"docs/heads.md:{line}", "exec"), namespace)  # noqa: S102


@pytest.mark.slow
def test_seed_and_no_many_condition(setup):
    """``seed`` moves the random draws, ``many=0`` leaves that condition out; the random
    control is :func:`focuslens.heads.random_control` with the same seed."""
    from focuslens.heads import random_control

    model, prompts, train, exp = setup
    again = contextual_head_experiment(
        model, prompts, ks=[2], taus=[0.5], scores=exp.scores, n_random=1, seed=3, many=0,
        max_new_tokens=2,
    )  # fmt: skip
    frame = again.to_dataframe()
    assert list(frame.condition) == ["baseline", "gold_only", "top_k", "random_k"]
    control = frame[frame.condition == "random_k"].iloc[0]
    top2 = top_k(exp.scores, 2)
    assert control.seed == 3 and control.heads == str(random_control(top2, model, seed=3))
    with pytest.raises(ValueError, match="many must be"):
        contextual_head_experiment(model, prompts, ks=[1], scores=exp.scores, many=-1)


@pytest.mark.slow
def test_compare_pairs_top_k_with_baseline_and_random_runs():
    """On the demo model (where the runs differ), ``compare`` counts, prompt by prompt, the
    prompts each run gets right and its reference wrong; checked here from the examples."""
    from focuslens.demo import DISTRACTING_DOCS, load_demo_model
    from focuslens.evaluation.curves import mcnemar_exact
    from focuslens.tasks import synthetic_retrieval

    model = load_demo_model()
    prompts = synthetic_retrieval(16, n_documents=DISTRACTING_DOCS, seed=11)
    train = synthetic_retrieval(8, n_documents=DISTRACTING_DOCS, seed=12)
    exp = contextual_head_experiment(
        model, prompts, ks=[3], taus=[0.1], score_prompts=train, n_random=2, many=None
    )
    table = exp.compare()
    assert list(table.versus) == ["baseline", "random_k seed 0", "random_k seed 1"]
    ex = exp.examples
    top = ex[ex.condition == "top_k"].set_index("example").correct
    refs = {
        "baseline": ex[ex.condition == "baseline"],
        "random_k seed 0": ex[(ex.condition == "random_k") & (ex.seed == 0)],
        "random_k seed 1": ex[(ex.condition == "random_k") & (ex.seed == 1)],
    }
    for _, row in table.iterrows():
        ref = refs[row.versus].set_index("example").correct.reindex(top.index)
        fixed, broken = int((top & ~ref).sum()), int((~top & ref).sum())
        assert (row.fixed, row.broken) == (fixed, broken), row.versus
        assert row.difference == pytest.approx((fixed - broken) / len(top))
        assert row.p_value == pytest.approx(mcnemar_exact(fixed, broken))
        assert row.low <= row.difference <= row.high
        clear = row.p_value < 0.05 and fixed != broken
        expected = ("above" if fixed > broken else "below") if clear else "within noise"
        assert row.verdict == expected
    assert (table.fixed + table.broken).sum() > 0  # the runs do differ here
    # a lax level turns every uneven comparison into a verdict
    lax = exp.compare(significance=1.01)
    uneven = lax.fixed != lax.broken
    assert (lax.verdict[uneven] != "within noise").all()
    with pytest.raises(ValueError, match="no run at tau=0.5"):
        exp.compare(tau=0.5)
