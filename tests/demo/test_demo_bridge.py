"""The demo model on a TransformerBridge: the same model as the HookedTransformer (logits,
scores, steering), and, where HookedTransformer is gone, a model that still answers."""

from __future__ import annotations

import pytest
import torch

import focuslens
from focuslens.demo import load_demo_model
from focuslens.model.loading import check_backend, hooked_transformer_class
from focuslens.tasks import synthetic_retrieval

pytestmark = pytest.mark.bridge


@pytest.fixture(scope="module")
def bridge():
    return load_demo_model(backend="bridge")


def test_the_demo_bridge_passes_the_self_test_and_answers(bridge):
    assert type(bridge).__name__ == "TransformerBridge"
    assert check_backend(bridge).ok
    prompts = synthetic_retrieval(12, n_documents=4, seed=3)
    result = focuslens.evaluate(bridge, prompts, progress=False)
    assert result.accuracy >= 0.9  # the card: 0.99 with 4 documents


@pytest.mark.skipif(
    hooked_transformer_class() is None, reason="compares with HookedTransformer (3.x only)"
)
@pytest.mark.parametrize("form", ["qk", "scores"])
def test_the_demo_bridge_equals_the_hooked_transformer(bridge, form):
    hooked = load_demo_model(backend="hooked")
    prompts = synthetic_retrieval(6, n_documents=40, seed=1)
    tp = focuslens.tokenize_prompt(hooked, prompts[0])
    assert torch.equal(focuslens.tokenize_prompt(bridge, prompts[0]).tokens, tp.tokens)
    directions = focuslens.learn_focus_directions(hooked, prompts, method="closed_form")
    with torch.no_grad():
        lh, lb = hooked(tp.tokens[None]), bridge(tp.tokens[None])
        torch.testing.assert_close(lb, lh, atol=1e-5, rtol=1e-5)  # logits up to ~20
        with directions.steer(hooked, 3, alpha=4.0, form=form):
            sh = hooked(tp.tokens[None])
        with directions.steer(bridge, 3, alpha=4.0, form=form):
            sb = bridge(tp.tokens[None])
    assert (sh - lh).abs().max() > 0.1
    torch.testing.assert_close(sb, sh, atol=1e-4, rtol=0)  # measured 4.9e-5 at alpha=4
    scores_h = focuslens.contextual_scores(hooked, prompts)
    scores_b = focuslens.contextual_scores(bridge, prompts)
    torch.testing.assert_close(scores_b.relevant, scores_h.relevant, atol=1e-5, rtol=0)
    learned_b = focuslens.learn_focus_directions(bridge, prompts, method="closed_form")
    torch.testing.assert_close(learned_b.d_q, directions.d_q, atol=1e-4, rtol=1e-4)


def test_an_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend must be one of"):
        load_demo_model(backend="native")
