"""``alpha="auto"``: the climb search, the recorded tables against the full attention
cache, and calibration on a row the model generates (checked on the full cache too)."""

from __future__ import annotations

import pytest
import torch
from _tiny import random_text, tiny_model

from focuslens import LabeledPrompt
from focuslens.directions import FocusDirections, ModelShape
from focuslens.directions.magnitude import (
    STATISTICS,
    AutoAlpha,
    climb_alpha,
    record_auto_target,
)
from focuslens.directions.steering import steer
from focuslens.prompts.tokens import tokenize_prompt


def _directions(model, seed=0, scale=1.0, heads=None) -> FocusDirections:
    g = torch.Generator().manual_seed(seed)
    shape = ModelShape.of(model)
    size = (shape.n_layers, shape.n_heads, shape.d_head)
    return FocusDirections(
        d_q=torch.randn(size, generator=g) * scale,
        d_k=torch.zeros(size),
        shape=shape,
        heads=heads or [(1, 0), (1, 3), (0, 1), (0, 0)],
    )


def _prompts(n, seed=0):
    rng = torch.Generator().manual_seed(seed)
    return [
        LabeledPrompt.from_documents(
            "w7 w8",
            [("w1", random_text(rng, 2 + (i + d) % 3)) for d in range(3 + i % 2)],
            i % 3,
            ["x"],
            instruction="w9",
            response=random_text(rng, 4),
        )
        for i in range(n)
    ]


def test_climb_stops_where_the_statistic_stops_rising_or_reaches_the_target():
    rule = AutoAlpha(target=0.9, alpha_max=8.0, grid=9, tolerance=0.01)  # grid step 1
    peak = torch.tensor([3.0, 100.0, 100.0, 100.0])
    slope = torch.tensor([0.1, 0.1, 0.05, 0.0])
    start = torch.tensor([0.2, 0.2, 0.95, 0.3])

    def curve(alpha):  # rises up to `peak`, then falls; never past 0.9 for row 0
        return start + slope * torch.minimum(alpha, peak) - 0.2 * (alpha - peak).clamp(min=0)

    alpha, stat = climb_alpha(curve, rule, 4)
    assert alpha.tolist() == [3.0, 7.0, 0.0, 0.0]
    # Row 0: the peak. Row 1: the first grid point at 0.9 - tolerance (0.2 + 0.1 * 7).
    # Row 2: already above the target. Row 3: flat, so the climb stops at once.
    torch.testing.assert_close(stat, curve(alpha))
    alpha, _ = climb_alpha(lambda a: 0.1 * a, AutoAlpha(target=5.0, alpha_max=4.0), 1)
    assert alpha.tolist() == [4.0]  # still rising at the end: alpha_max


def _rows_by_hand(model, tp, rows, sink, point):
    """Relevant mass, half-mass key count, top-window cumulative mass and query norms from
    ``run_with_cache`` (every pattern kept)."""
    _, cache = model.run_with_cache(tp.tokens[None])
    s, e = tp.relevant
    out = {"relevant": [], "half": [], "body": [], "q": []}
    for r in rows:
        pat = torch.stack([cache["pattern", l][0, :, r] for l in range(model.cfg.n_layers)])
        span = pat[..., s:e]
        rel = span.sum(-1)
        half = torch.zeros_like(rel)
        for idx in torch.cartesian_prod(*(torch.arange(n) for n in rel.shape)):
            vals = sorted(span[tuple(idx)].tolist(), reverse=True)
            total, k = 0.0, 0
            while total < 0.5 * float(rel[tuple(idx)]):
                total += vals[k]
                k += 1
            half[tuple(idx)] = max(k, 1)
        out["relevant"].append(rel)
        out["half"].append(half)
        out["body"].append(pat[..., sink:].sort(-1, descending=True).values.cumsum(-1))
        q = torch.stack([cache[point, l][0, r] for l in range(model.cfg.n_layers)])
        out["q"].append(q.norm(dim=-1))
    return out


@pytest.mark.parametrize("kind", ["rotary", "gqa"])
def test_recorded_tables_match_the_full_cache(kind):
    model = tiny_model(kind)
    prompts = _prompts(4)
    fd = _directions(model)
    sink = 1
    rec = record_auto_target(model, fd, prompts, sink=sink).training["auto"]
    n_rows = len(rec["tables"])
    assert n_rows == 4  # the last prompt row and the rows of response tokens 1-3
    point = "rot_q"  # where the directions are added
    gold, full = [], []
    for p in prompts:
        for variant, into in ((p.gold_only(), gold), (p, full)):
            tp = tokenize_prompt(model, variant)
            into.append(
                _rows_by_hand(model, tp, [tp.n_prompt - 1 + o for o in range(n_rows)], sink, point)
            )
    found = torch.stack([torch.stack(x["relevant"]) for x in full]).mean(0)
    torch.testing.assert_close(torch.tensor(rec["relevant"]), found, atol=1e-5, rtol=0)
    top = [(1, 0)]  # 10 % of 8 heads, rounded up: the first ranked head
    best = int(found[:, 1, 0].argmax())
    halves = torch.stack([torch.stack(x["half"]) for x in gold])[:, best, 1, 0]
    window = int(halves.median())
    assert rec["window"] == window and top == fd.heads[:1]
    body = torch.stack(
        [torch.stack([b[..., min(window, b.shape[-1]) - 1] for b in x["body"]]) for x in gold]
    )
    torch.testing.assert_close(torch.tensor(rec["tables"]), body.mean(0), atol=1e-5, rtol=0)
    q = torch.stack([torch.stack(x["q"]) for x in gold]).mean(0)
    torch.testing.assert_close(torch.tensor(rec["query_norm"]), q, atol=1e-4, rtol=1e-5)
    # The rule for a head set calibrates where those heads find the document.
    heads = [(1, 0), (1, 2)]
    rule = AutoAlpha.from_directions(record_auto_target(model, fd, prompts, sink=sink), _set(heads))
    assert rule.offset == int(found[:, 1, [0, 2]].mean(-1).argmax()) and rule.search == "climb"
    ratio = q[rule.offset, 1, [0, 2]] / fd.d_q[1, [0, 2]].norm(dim=-1)
    assert rule.alpha_max == pytest.approx(float(ratio.median()), rel=1e-5)
    assert rule.target == pytest.approx(
        float(body.mean(0)[rule.offset, 1, [0, 2]].mean()), abs=1e-5
    )


def _set(heads):
    from focuslens.heads import HeadSet

    return HeadSet(heads)


def _statistic_by_hand(model, fd, heads, tokens, alpha, rule):
    layer = heads[0][0]
    with steer(fd, model, heads, float(alpha)):
        _, cache = model.run_with_cache(tokens[None])
    rows = cache["pattern", layer][0, [h for _, h in heads], -1]
    return float(STATISTICS[rule.statistic](rows[None], rule).mean())


@pytest.mark.parametrize("kind", ["rotary", "gpt2"])
def test_auto_calibrates_on_the_row_of_the_generated_token(kind):
    model = tiny_model(kind)
    fd = _directions(model, scale=2.0)
    heads = [(1, 0), (1, 3)]
    rule = AutoAlpha(target=0.95, window=2, sink=1, alpha_max=4.0, search="climb", grid=9, offset=2)
    prompts = [
        model.to_tokens(random_text(torch.Generator().manual_seed(s), 10))[0] for s in range(4)
    ]
    with steer(fd, model, heads, "auto", prompt_tokens=prompts, auto=rule) as state:
        alphas = state.alpha.clone()
    grid = torch.linspace(0, rule.alpha_max, rule.grid).tolist()
    for tokens, alpha in zip(prompts, alphas.tolist()):
        seq = tokens[None]
        for _ in range(rule.offset):  # the model's own greedy tokens, unsteered
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
        curve = [_statistic_by_hand(model, fd, heads, seq[0], a, rule) for a in grid]
        i = 0  # climb by hand on the full cache
        while (
            i + 1 < len(grid)
            and curve[i] < rule.target - rule.tolerance
            and curve[i + 1] > curve[i]
        ):
            i += 1
        assert alpha == pytest.approx(grid[i], abs=1e-6)
    assert alphas.unique().numel() >= 2 and 0 < float(alphas.max())
    # Lazy calibration, from the residual stream entering block 0, picks the same alphas.
    with steer(fd, model, heads, "auto", auto=rule) as state:
        for tokens, alpha in zip(prompts, alphas):
            model(tokens[None])
            torch.testing.assert_close(state.alpha, alpha[None], atol=1e-6, rtol=0)


def test_auto_rule_settings_are_checked():
    with pytest.raises(ValueError, match="search must be one of"):
        AutoAlpha(target=0.5, search="golden")
    with pytest.raises(ValueError, match="offset >= 0"):
        AutoAlpha(target=0.5, offset=-1)
