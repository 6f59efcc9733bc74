"""Malformed inputs to the public constructors: a clear error of a documented type, or a
valid object, never a crash from deep inside torch, and never a NaN result.

Property-based (hypothesis): each constructor gets random values of the wrong types and
ranges, bools where ints belong, NaN and infinity where numbers belong. Every prompt and
every iterable of prompts is also accepted where a list is (generators included).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from _tiny import labeled_prompts, tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import focuslens as fl
from focuslens.app.run import Condition
from focuslens.directions import FocusDirections, ModelShape
from focuslens.heads import HeadSet
from focuslens.interventions import HeadAblation, Pasta, SplitSoftmax
from focuslens.tasks import synthetic_retrieval

CLEAR = (ValueError, TypeError)
"""The documented error types of the public constructors."""

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 50),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(-3, 20), max_size=3),
    st.tuples(st.booleans(), st.booleans()),
    st.tuples(st.floats(-1, 10), st.floats(-1, 10)),
)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-3, 3),
    st.booleans(),
    st.text(max_size=3),
)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.bad_input  # wrong types on purpose: the unchecked pass
@SETTINGS
@given(relevant=junk, distractor=junk, answers=junk, response=junk)
def test_labeled_prompt(relevant, distractor, answers, response):
    text = "w1 w2 w3 w4 w5 w6"
    try:
        p = fl.LabeledPrompt(text, relevant, [distractor], answers, response=response)
    except CLEAR:
        return
    for span in ([p.relevant] if p.relevant is not None else []) + p.distractors:
        assert len(span) == 2 and all(type(x) is int for x in span)
        assert 0 <= span[0] < span[1] <= len(text)
    assert all(isinstance(a, str) for a in p.answers)
    assert p.response is None or isinstance(p.response, str)


@pytest.mark.bad_input  # wrong types on purpose: the unchecked pass
@SETTINGS
@given(heads=st.one_of(junk, st.lists(junk, max_size=3)))
def test_head_set(heads):
    try:
        hs = HeadSet(heads)
    except CLEAR:
        return
    assert all(type(l) is int and type(h) is int and l >= 0 and h >= 0 for l, h in hs)


@pytest.mark.bad_input  # wrong types on purpose: the unchecked pass
@SETTINGS
@given(value=numbers)
def test_oracle_parameters(value):
    for make in (lambda v: SplitSoftmax([(1, 0)], v), lambda v: Pasta([(1, 0)], v)):
        try:
            make(value)
        except CLEAR:
            continue
        assert isinstance(value, (int, float)) and not isinstance(value, bool)
        assert math.isfinite(value) and value > 0


@pytest.mark.bad_input  # wrong types on purpose: the unchecked pass
@SETTINGS
@given(mode=junk)
def test_head_ablation_mode(mode):
    try:
        HeadAblation([(0, 1)], mode)
    except CLEAR:
        return
    assert mode in ("zero", "mean")


@functools.cache
def _model():
    """The shared tiny model, built on first use (not at import: under transformer-lens 4.x
    these tests are skipped, and HookedTransformer does not exist)."""
    return tiny_model("rotary")


@pytest.mark.bad_input  # wrong types on purpose: the unchecked pass
@SETTINGS
@given(fill=st.floats(width=32, allow_nan=True, allow_infinity=True), alpha=numbers)
def test_directions_and_steering_never_give_nan(fill, alpha):
    """Non-finite directions and alphas are refused; finite ones of a realistic size (the
    released vectors have norms of a few units) steer to finite logits."""
    size = (
        ModelShape.of(_model()).n_layers,
        ModelShape.of(_model()).n_heads,
        ModelShape.of(_model()).d_head,
    )
    try:
        fd = FocusDirections(torch.full(size, fill), torch.zeros(size), ModelShape.of(_model()))
    except CLEAR:
        assert not math.isfinite(fill)
        return
    if abs(fill) > 1e3:  # finite but absurd: overflows in float32 like any activation would
        return
    try:
        context = fd.steer(_model(), [(1, 0), (0, 2)], alpha)
        with torch.no_grad(), context:
            logits = _model()(_model().to_tokens("w1 w2 w3 w4 w5"))
    except CLEAR:
        return
    if (
        abs(float(alpha) * fill) * ModelShape.of(_model()).d_head > 1e30
    ):  # overflows float32 attention logits
        return
    assert bool(torch.isfinite(logits).all()), (fill, alpha)


@pytest.mark.bad_input  # wrong types on purpose: the unchecked pass
@SETTINGS
@given(kind=junk)
def test_condition(kind):
    try:
        Condition(kind)
    except CLEAR:
        return
    assert kind in ("baseline", "gold_only", "split_softmax", "steering")


@pytest.mark.bad_input  # wrong types on purpose: the unchecked pass
@SETTINGS
@given(n=junk, n_documents=junk, absent=junk, similar=junk, gold=junk)
def test_synthetic_retrieval(n, n_documents, absent, similar, gold):
    kwargs = {"n_documents": n_documents, "absent": absent, "similar": similar}
    if gold is not None:
        kwargs["gold_position"] = gold
    try:
        prompts = synthetic_retrieval(n, **kwargs)
    except CLEAR:
        return
    assert isinstance(prompts, list) and len(prompts) == n


def test_iterables_of_prompts_are_accepted_everywhere():
    """A generator works where a list does (it is read once)."""
    model = tiny_model("rotary")
    prompts = labeled_prompts(3)

    def gen():
        return (p for p in prompts)

    listed = fl.contextual_scores(model, prompts)
    torch.testing.assert_close(fl.contextual_scores(model, gen()).relevant, listed.relevant)
    assert fl.evaluate(model, gen(), progress=False, max_new_tokens=1).n == 3
    assert fl.ablation_effects(model, gen(), heads=[(1, 1)]).per_example.shape[0] == 3
    assert fl.attribution_patching(model, gen()).per_example.shape[0] == 3
    fd = fl.learn_focus_directions(model, gen(), response="given", epochs=1, heads=[(1, 1)])
    assert fd.training["n_prompts"] == 3
