"""The explorer's computation (explore_view) against the functions it composes, and the
notebook panel driven from code (no frontend needed)."""

from __future__ import annotations

import math

import pytest
import torch
from _oracles import make_prompts
from _tiny import tiny_model

import focuslens
from focuslens import FocusDirections, SplitSoftmax, evaluate, tokenize_prompt
from focuslens.directions import ModelShape
from focuslens.evaluation.explore import Combined, explore_view, explorer_intervention
from focuslens.model.generation import generate_greedy

HEADS = [(1, 2), (0, 1)]
MAX_NEW = 3


@pytest.fixture(scope="module")
def model():
    return tiny_model("rotary")


@pytest.fixture(scope="module")
def prompt():
    return make_prompts(2, seed=3)[1]


@pytest.fixture(scope="module")
def directions(model):
    shape = ModelShape.of(model)
    g = torch.Generator().manual_seed(0)
    d_q = torch.randn(shape.n_layers, shape.n_heads, shape.d_head, generator=g)
    return FocusDirections(d_q, torch.zeros_like(d_q), shape, heads=[(1, 2), (0, 1), (1, 0)])


def _check_against_evaluate(model, prompt, view, intervention):
    """The answer, and the mass by kind, equal evaluate's (one prompt, heads measured
    with contextual_scores on the generated tokens: another code path)."""
    result = evaluate(
        model,
        [prompt],
        intervention=intervention,
        heads=view.heads,
        max_new_tokens=MAX_NEW,
        progress=False,
    )
    row = result.frame.iloc[0]
    assert view.answer == row["prediction"] and view.correct == bool(row["correct"])
    kinds = view.by_kind()
    for mine, theirs in (("relevant", "relevant"), ("distractor", "distractors"), ("sink", "sink")):
        assert math.isclose(kinds[mine], row[f"attn_{theirs}"], rel_tol=1e-4, abs_tol=1e-6), mine
    # "other" in evaluate is every other key (other prompt tokens and the answer's own).
    assert math.isclose(kinds["other"] + kinds["response"], row["attn_other"], abs_tol=1e-5)


@pytest.mark.parametrize("setting", ["plain", "tau", "alpha", "both"])
def test_explore_view_matches_evaluate(model, prompt, directions, setting):
    alpha = {"plain": 0.0, "tau": 0.0, "alpha": 3.0, "both": 3.0}[setting]
    tau = {"plain": 1.0, "tau": 0.2, "alpha": 1.0, "both": 0.2}[setting]
    view = explore_view(
        model, prompt, HEADS, directions=directions, alpha=alpha, tau=tau, max_new_tokens=MAX_NEW
    )
    intervention = explorer_intervention(HEADS, directions=directions, alpha=alpha, tau=tau)
    expected = {"plain": type(None), "tau": SplitSoftmax, "both": Combined}
    assert isinstance(intervention, expected.get(setting, type(directions.steering(HEADS, 1.0))))
    _check_against_evaluate(model, prompt, view, intervention)
    assert view.mass.shape == (2, len(view.segments))
    torch.testing.assert_close(view.mass.sum(dim=1), torch.ones(2), atol=1e-5, rtol=0)
    assert view.heads == HEADS and view.rows == "response"


def test_explore_view_by_hand(model, prompt, directions):
    """An independent computation: steering and split-softmax entered by hand around a
    greedy generation and a full attention cache of the answer rows."""
    view = explore_view(
        model, prompt, HEADS, directions=directions, alpha=3.0, tau=0.2, max_new_tokens=MAX_NEW
    )
    tp = tokenize_prompt(model, prompt)
    split = SplitSoftmax(HEADS, 0.2)
    with directions.steer(model, HEADS, 3.0), split.apply(model, [prompt]):
        gen = generate_greedy(model, tp.tokens[: tp.n_prompt], max_new_tokens=MAX_NEW)
    assert view.answer == gen.text
    answered = prompt.with_response(gen.text)
    full = tokenize_prompt(model, answered)
    with directions.steer(model, HEADS, 3.0), split.apply(model, [answered]):
        _, cache = model.run_with_cache(full.tokens[None], names_filter=lambda n: "pattern" in n)
    for i, (layer, head) in enumerate(HEADS):
        rows = cache["pattern", layer][0, head, full.n_prompt :, :]
        relevant = rows[:, full.relevant[0] : full.relevant[1]].sum(-1).mean()
        j = view.kinds.index("relevant")
        assert math.isclose(float(view.mass[i, j]), float(relevant), rel_tol=1e-4)
        for (start, end), name in zip(sorted(full.distractors), _distractor_names(view)):
            mass = rows[:, start:end].sum(-1).mean()
            assert math.isclose(float(view.mass[i, view.segments.index(name)]), float(mass), rel_tol=1e-4, abs_tol=1e-7)  # fmt: skip


def _distractor_names(view):
    return [s for s, k in zip(view.segments, view.kinds) if k == "distractor"]


def test_tau_focuses_and_negative_alpha_is_allowed(model, prompt, directions):
    plain = explore_view(model, prompt, HEADS, max_new_tokens=MAX_NEW)
    focused = explore_view(model, prompt, HEADS, tau=0.1, max_new_tokens=MAX_NEW)
    assert focused.by_kind()["relevant"] > plain.by_kind()["relevant"]
    away = explore_view(model, prompt, HEADS, tau=3.0, max_new_tokens=MAX_NEW)
    assert away.by_kind()["relevant"] < plain.by_kind()["relevant"]
    negative = explore_view(
        model, prompt, HEADS, directions=directions, alpha=-2.0, max_new_tokens=MAX_NEW
    )
    assert negative.alpha == -2.0 and "alpha=-2" in repr(negative)


def test_default_heads_and_bad_input(model, prompt, directions):
    view = explore_view(model, prompt, directions=directions, max_new_tokens=MAX_NEW)
    assert view.heads == directions.heads[:3]
    scores = focuslens.contextual_scores(model, [prompt])
    assert explore_view(model, prompt, max_new_tokens=MAX_NEW).heads == scores.top_heads(3)
    with pytest.raises(ValueError, match="alpha=2.0 steers with focus directions, but none"):
        explore_view(model, prompt, HEADS, alpha=2.0)
    with pytest.raises(ValueError, match="tau must be > 0"):
        explore_view(model, prompt, HEADS, tau=0.0)
    with pytest.raises(ValueError, match="pick at least one head"):
        explore_view(model, prompt, [])
    with pytest.raises(ValueError, match="L7H0"):
        explore_view(model, prompt, [(7, 0)])
    other = FocusDirections.pretrained("meta-llama/Llama-3.2-3B-Instruct")
    with pytest.raises(ValueError, match="belong to a model of 28 layers"):
        explore_view(model, prompt, HEADS, directions=other, alpha=1.0)


def test_view_table_figure_and_card(model, prompt):
    view = explore_view(model, prompt, HEADS, tau=0.5, max_new_tokens=MAX_NEW)
    frame = view.to_dataframe()
    assert len(frame) == 2 * len(view.segments)
    assert math.isclose(frame[frame["head"] == "L1H2"]["mass"].sum(), 1.0, abs_tol=1e-5)
    fig = view.figure()
    assert list(fig.data[0].x) == view.segments
    assert fig.data[0].y == pytest.approx(view.mean_mass().tolist())
    text = view._repr_html_()
    assert "greedy answer" in text and "L1H2, L0H1" in text


# ---------------------------------------------------------------------- the panel
def test_panel_follows_scripted_value_changes(model, prompt, directions):
    pytest.importorskip("ipywidgets")
    panel = focuslens.explore(model, prompt, directions, heads=HEADS, max_new_tokens=MAX_NEW)
    assert panel.view.alpha == 0.0 and panel.view.tau == 1.0 and len(panel.history) == 1
    panel.tau.value = 0.2  # as a user moving the slider
    assert panel.view.tau == 0.2 and len(panel.history) == 2
    expected = explore_view(model, prompt, HEADS, tau=0.2, max_new_tokens=MAX_NEW)
    torch.testing.assert_close(panel.view.mass, expected.mass)
    panel.heads.value = [(0, 1)]
    assert panel.view.heads == [(0, 1)]
    view = panel.set(alpha=3.0, tau=1.0, heads=HEADS)  # one redraw for three changes
    assert len(panel.history) == 4 and view is panel.view
    expected = explore_view(
        model, prompt, HEADS, directions=directions, alpha=3.0, max_new_tokens=MAX_NEW
    )
    assert view.answer == expected.answer
    torch.testing.assert_close(view.mass, expected.mass)
    with pytest.raises(ValueError, match=r"alpha=99 is outside the slider's range"):
        panel.set(alpha=99)
    panel.heads.value = []  # nothing picked: said in the panel, nothing raised
    assert "pick at least one head" in panel.status.value and panel.view is view
    assert focuslens.explore(model, prompt, heads=HEADS).alpha.disabled is not False


def test_in_a_notebook_the_plotly_script_stays_out_of_the_output_widget(model, prompt, monkeypatch):
    """plotly's 4.8 MB script goes to the cell's output once, never inside the panel's
    Output widget (there it stalls headless notebook runners for a full cell timeout)."""
    pytest.importorskip("ipywidgets")
    import IPython
    import IPython.display

    from focuslens.app import explorer
    from focuslens.plots import notebook

    class Tracked(explorer._widgets().Output):  # records whether a `with` block is open
        inside = False

        def __enter__(self):
            Tracked.inside = True
            return self

        def __exit__(self, *exc):
            Tracked.inside = False

        def clear_output(self, *args, **kwargs):
            pass

    shown = []  # (inside the Output widget?, html)
    monkeypatch.setattr(IPython, "get_ipython", lambda: object())
    monkeypatch.setattr(
        IPython.display, "display", lambda obj, *a, **k: shown.append((Tracked.inside, obj.data))
    )
    monkeypatch.setattr(explorer._widgets(), "Output", Tracked)
    notebook.include_plotlyjs_again()
    panel = focuslens.explore(model, prompt, heads=HEADS, max_new_tokens=MAX_NEW)
    panel.set(tau=0.5)
    scripts = [inside for inside, html in shown if "window.Plotly" in html]
    assert scripts == [False]  # once, in the cell's output
    cards = [html for inside, html in shown if inside]
    assert len(cards) == 2 and all("window.Plotly" not in html for html in cards)
    assert all("Plotly.newPlot(" in html for html in cards)
