"""Batched greedy generation and batched evaluate against one prompt at a time."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import torch
from _oracles import make_prompts
from _tiny import tiny_model

import focuslens
from focuslens import tokenize_prompt
from focuslens.directions import FocusDirections, ModelShape
from focuslens.directions.steering import Steering
from focuslens.evaluation.accuracy import evaluate
from focuslens.interventions import HeadAblation, Pasta, SplitSoftmax
from focuslens.model.batched import generate_greedy_batch
from focuslens.model.generation import generate_greedy


def prompt_tokens(model, prompts):
    tps = [tokenize_prompt(model, p) for p in prompts]
    return [tp.tokens[: tp.n_prompt] for tp in tps]


def same(a, b) -> bool:
    return torch.equal(a.tokens, b.tokens) and (a.text, a.stop_reason) == (b.text, b.stop_reason)


def directions(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    dq = torch.randn(cfg.n_layers, cfg.n_heads, cfg.d_head, generator=gen)
    return FocusDirections(dq, torch.randn(dq.shape, generator=gen), ModelShape.of(model))


@pytest.mark.parametrize("kind", ["gpt2", "rotary", "gqa"])
def test_batched_generation_equals_one_at_a_time(kind):
    model = tiny_model(kind)
    tokens = prompt_tokens(model, make_prompts(4))
    assert len({t.numel() for t in tokens}) > 1  # prompts of different lengths
    alone = [generate_greedy(model, t, max_new_tokens=6, stop_ids=()) for t in tokens]
    # A stop token that ends the first answer early while the others go on.
    stop = int(alone[0].tokens[2])
    alone = [generate_greedy(model, t, max_new_tokens=6, stop_ids=stop) for t in tokens]
    batch = generate_greedy_batch(model, tokens, max_new_tokens=6, stop_ids=stop)
    assert [g.stop_reason for g in alone].count("eos") >= 1
    assert {len(g.tokens) for g in alone} != {1}
    assert all(same(a, b) for a, b in zip(alone, batch))
    pattern = generate_greedy_batch(model, tokens, max_new_tokens=6, stop_ids=stop, fused=False)
    assert all(same(a, b) for a, b in zip(alone, pattern))


@pytest.mark.parametrize("kind", ["gpt2", "rotary"])
def test_batched_generation_stops_at_the_context_length(kind):
    model = tiny_model(kind, n_ctx=40)
    tokens = [t[:36] for t in prompt_tokens(model, make_prompts(3))]
    tokens[1] = tokens[1][:20]
    alone = [generate_greedy(model, t, max_new_tokens=15, stop_ids=()) for t in tokens]
    batch = generate_greedy_batch(model, tokens, max_new_tokens=15, stop_ids=())
    assert alone[0].stop_reason == "n_ctx" and alone[1].stop_reason != "n_ctx"
    assert all(same(a, b) for a, b in zip(alone, batch))


def interventions(model, prompts):
    fd = directions(model)
    heads = [(0, 1), (1, 3)]
    return {
        "none": None,
        "steer": Steering(fd, heads, alpha=2.0),
        "steer generated": Steering(fd, heads, alpha=2.0, positions="generated"),
        "steer scores": Steering(fd, heads, alpha=2.0, form="scores"),
        "split-softmax": SplitSoftmax([(0, 1), (1, 0)], tau=0.2),
        "pasta": Pasta([(0, 1), (1, 0)], alpha=0.05),
        "ablation": HeadAblation([(0, 2), (1, 1)]),
    }


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rotary", "gpt2"])
def test_batched_evaluate_equals_one_at_a_time_under_interventions(kind):
    model = tiny_model(kind)
    prompts = make_prompts(5)
    answers = {}
    for name, intervention in interventions(model, prompts).items():
        options = {"intervention": intervention, "max_new_tokens": 5, "progress": False}
        alone = evaluate(model, prompts, batch_size=1, **options).to_dataframe()
        batch = evaluate(model, prompts, batch_size=3, **options).to_dataframe()
        pd.testing.assert_frame_equal(alone, batch)
        answers[name] = alone["prediction"].tolist()
    # the interventions change the answers, so the comparison is not vacuous
    assert sum(answers[name] != answers["none"] for name in answers) >= 4


def test_batched_evaluate_rows_with_attention_and_mixed_settings():
    model = focuslens.load_demo_model()
    prompts = focuslens.tasks.synthetic_retrieval(10, n_documents=8, seed=3)
    prompts[4] = replace(prompts[4], meta={**prompts[4].meta, "max_new_tokens": 2})
    heads = [(1, 0), (1, 2)]
    options = {"heads": heads, "progress": False}
    alone = evaluate(model, prompts, batch_size=1, **options).to_dataframe()
    batch = evaluate(model, prompts, batch_size=4, **options).to_dataframe()
    pd.testing.assert_frame_equal(alone, batch)
    assert alone["correct"].any() and alone["n_new_tokens"][4] <= 2


def test_batch_size_is_checked():
    model = tiny_model("gpt2")
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        evaluate(model, make_prompts(1), batch_size=0, progress=False)
