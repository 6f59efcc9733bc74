"""Automatic magnitude control for focus-direction steering (``alpha="auto"``).

The paper's revised version controls alpha automatically but did not publish the rule
(METHOD.md section 5). **This rule is focuslens's own**, and is measured against the
best fixed alpha in ``docs/directions.md``.

The idea: a contextual head that reads the right document when it is the only one
there puts a certain mass ``M(h)`` on it. With many distractors the head spreads its
attention, and steering should bring its *focus* back to that level, no further (too
large an alpha makes heads attend to irrelevant context too). Relevance labels are not
available at inference, so the rule uses a label-free proxy of that mass.

Per prompt, for the steered heads:

* the **calibration row** is the row where those heads read the relevant document: the
  last prompt token (``offset`` 0), or the row of the model's ``offset``-th own answer
  token, generated greedily and unsteered first (a model that repeats the question or
  starts with a fixed prefix, as chat models do, decides its answer a few tokens in);
* the statistic ``s(alpha)`` is the mean over the steered heads, on that row, of their
  ``statistic`` (see :data:`STATISTICS`): by default ``"focus"``, the attention mass
  on the ``window`` most-attended keys outside the sink;
* the target ``t`` is the mean over the same heads of a table recorded while learning
  (:func:`record_auto_target`), on the *gold-only* prompts, unsteered;
* ``search="bisect"``: alpha is found by bisection on ``[0, alpha_max]`` so that
  ``s(alpha)`` reaches ``t`` (within ``tolerance``); alpha is 0 when ``s(0) >= t``
  already (the heads are focused, nothing to fix) and ``alpha_max`` when even that does
  not reach ``t``. ``search="climb"``: alpha walks up ``grid`` evenly spaced points
  from 0 to ``alpha_max`` while ``s`` rises, and stops where it stops rising or
  reaches ``t``: steer while it makes the heads more focused, no further (past some
  alpha they lose focus again, and accuracy falls).

Directions learned by :func:`focuslens.learn_focus_directions` record everything the
rule needs (:func:`record_auto_target`), measured on the gold-only variants of the
learning prompts with their responses teacher-forced:

* per response row (``offset`` 0 to 8), the relevant-span mass of each head on the
  learning prompts themselves, distractors and all; the rule calibrates at the row
  where the steered heads' mean mass is largest (where they find the document);
* ``window``: the median number of keys that hold half of the top heads' relevant mass
  (a head that reads a document from one delimiter token gets window 1);
* per row, the ``focus`` statistic of each head with that window: the target;
* per row, each head's mean query norm; ``alpha_max`` is the median over the steered
  heads of query norm / ``|d_q|``: at most, steering adds a vector about as long as
  the query;
* ``search="climb"``.

Rules built by hand (``AutoAlpha(target=...)``) and directions recorded before this
table existed keep the last prompt row, ``window`` 5, ``alpha_max`` 1 and bisection.

Cost, once per prompt: ``offset`` greedy forward passes, then ``2 + max_iter``
(bisection) or at most ``grid`` (climb) forward passes of the prompt that stop after
the last steered layer; cached generation steps reuse the alpha.

Example:
    >>> rule = AutoAlpha(target=0.6, alpha_max=1.0)
    >>> rule.statistic, rule.window
    ('focus', 5)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from torch import Tensor

from focuslens.heads import HeadSet
from focuslens.model.hooks import attn_hook, hooks, pre_hooks
from focuslens.typing import Model

STATISTICS: dict[str, Callable[[Tensor, AutoAlpha], Tensor]] = {}
"""Name -> ``f(rows [batch, heads, key_pos], rule) -> [batch, heads]`` label-free statistic."""


def _focus(rows: Tensor, rule: AutoAlpha) -> Tensor:
    body = rows[..., rule.sink :]
    k = min(rule.window, body.shape[-1])
    return body.topk(k, dim=-1).values.sum(-1)


def _context(rows: Tensor, rule: AutoAlpha) -> Tensor:
    return 1 - rows[..., : rule.sink].sum(-1)


STATISTICS["focus"] = _focus
STATISTICS["context"] = _context


@dataclass(frozen=True)
class AutoAlpha:
    """Settings of the ``alpha="auto"`` rule (see the module docstring).

    Attributes:
        target: The statistic value to reach (mean over the steered heads).
        statistic: A name in :data:`STATISTICS`.
        window: Keys counted by the ``"focus"`` statistic.
        sink: Leading positions excluded from ``"focus"`` (and counted by ``"context"``).
        alpha_max: Largest alpha tried.
        tolerance: Stop bisecting within this distance of the target.
        max_iter: Most bisection steps.
        offset: Calibration row: 0 for the last prompt token, ``n`` for the row of the
            ``n``-th token the model generates (greedily, unsteered) after it.
        search: ``"bisect"`` or ``"climb"`` (module docstring).
        grid: Points of ``search="climb"``, 0 and ``alpha_max`` included.
    """

    target: float
    statistic: str = "focus"
    window: int = 5
    sink: int = 2
    alpha_max: float = 1.0
    tolerance: float = 0.01
    max_iter: int = 6
    offset: int = 0
    search: str = "bisect"
    grid: int = 9

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ValueError(
                f"statistic must be one of {sorted(STATISTICS)}, got {self.statistic!r}"
            )
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {sorted(SEARCHES)}, got {self.search!r}")
        if (
            self.alpha_max <= 0
            or self.window < 1
            or self.sink < 0
            or self.max_iter < 0
            or self.offset < 0
            or self.grid < 2
        ):
            raise ValueError(
                "need alpha_max > 0, window >= 1, sink >= 0, max_iter >= 0, offset >= 0, "
                f"grid >= 2; got {self}"
            )

    @classmethod
    def from_directions(cls, directions: Any, heads: HeadSet, override: Any = None) -> AutoAlpha:
        """The rule for ``heads``: target from the table recorded in ``directions``.

        ``override`` may be an :class:`AutoAlpha` (used as is) or a dict of settings.
        """
        if isinstance(override, AutoAlpha):
            return override
        info = directions.training.get("auto")
        if info is None:
            raise ValueError(
                "alpha='auto' needs a target, and these focus directions carry none; record "
                "one with focuslens.directions.magnitude.record_auto_target(model, directions, prompts) "
                "or pass auto=AutoAlpha(target=...)"
            )
        layers = torch.tensor([layer for layer, _ in heads])
        idx = torch.tensor([head for _, head in heads])
        settings: dict[str, Any] = {
            k: info[k] for k in ("statistic", "window", "sink", "search") if k in info
        }
        if "tables" in info:  # per response row: calibrate where the heads read
            relevant = torch.tensor(info["relevant"], dtype=torch.float32)[:, layers, idx]
            offset = int(relevant.mean(1).argmax())
            table = torch.tensor(info["tables"][offset], dtype=torch.float32)
            settings["offset"] = offset
            settings["alpha_max"] = _alpha_max(directions, info, offset, layers, idx)
        else:
            table = torch.tensor(info["table"], dtype=torch.float32)
        settings.update(dict(override or {}))
        return cls(target=float(table[layers, idx].mean()), **settings)


def _alpha_max(directions: Any, info: dict, offset: int, layers: Tensor, idx: Tensor) -> float:
    """Median over the heads of (their mean query norm on the row) / ``|d_q|``."""
    norms = torch.tensor(info["query_norm"][offset], dtype=torch.float32)[layers, idx]
    dq = directions.d_q[layers, idx].float().norm(dim=-1)
    ratio = norms[dq > 0] / dq[dq > 0]
    return float(ratio.median()) if ratio.numel() else 1.0


def _statistic(model: Model, rule: AutoAlpha, heads: HeadSet, tokens: Tensor, **kw: Any) -> Tensor:
    """``[batch]`` mean statistic of the steered heads at the last query row."""
    rows: dict[int, Tensor] = {}
    by_layer = heads.by_layer()

    def grab(pattern: Tensor, hook: Any, layer: int) -> None:
        rows[layer] = pattern[:, by_layer[layer], -1, :].float()

    fwd = [
        (attn_hook(layer, "hook_pattern"), lambda p, hook, layer=layer: grab(p, hook, layer))
        for layer in by_layer
    ]
    with torch.no_grad(), hooks(model, fwd):
        model(tokens, stop_at_layer=max(by_layer) + 1, **kw)
    values = torch.cat([STATISTICS[rule.statistic](rows[layer], rule) for layer in by_layer], 1)
    return values.mean(1).cpu()


def bisect_alpha(
    measure: Callable[[Tensor], Tensor], rule: AutoAlpha, batch: int
) -> tuple[Tensor, Tensor]:
    """Per-sequence alpha in ``[0, alpha_max]`` with ``measure(alpha)`` near the target.

    Args:
        measure: ``[batch]`` alphas -> ``[batch]`` statistic values.
        rule: The settings.
        batch: Number of sequences.

    Returns:
        ``(alpha [batch], statistic at that alpha [batch])``.
    """
    lo, hi = torch.zeros(batch), torch.full((batch,), float(rule.alpha_max))
    s_lo, s_hi = measure(lo), measure(hi)
    done_lo = s_lo >= rule.target - rule.tolerance
    done_hi = s_hi < rule.target - rule.tolerance
    best, s_best = hi.clone(), s_hi.clone()
    for _ in range(rule.max_iter):
        mid = (lo + hi) / 2
        s_mid = measure(mid)
        below = s_mid < rule.target
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
        # The closest point seen so far wins (the statistic need not be monotone).
        closer = (s_mid - rule.target).abs() < (s_best - rule.target).abs()
        best, s_best = torch.where(closer, mid, best), torch.where(closer, s_mid, s_best)
        if bool(((s_mid - rule.target).abs() <= rule.tolerance).all()):
            break
    alpha = torch.where(
        done_lo,
        torch.zeros(batch),
        torch.where(done_hi, hi.new_full((batch,), rule.alpha_max), best),
    )
    stat = torch.where(done_lo, s_lo, torch.where(done_hi, s_hi, s_best))
    return alpha, stat


def climb_alpha(
    measure: Callable[[Tensor], Tensor], rule: AutoAlpha, batch: int
) -> tuple[Tensor, Tensor]:
    """Per-sequence alpha walking up ``rule.grid`` evenly spaced points of
    ``[0, alpha_max]`` while the statistic increases: a sequence stops at the last point
    before the statistic stops rising, or at the first point that reaches the target
    (within ``tolerance``). Same signature as :func:`bisect_alpha`."""
    alphas = torch.linspace(0.0, float(rule.alpha_max), rule.grid)
    alpha = torch.zeros(batch)
    stat = measure(alpha)
    active = stat < rule.target - rule.tolerance
    for a in alphas[1:]:
        if not bool(active.any()):
            break
        s = measure(torch.where(active, a, alpha))
        up = active & (s > stat)
        alpha, stat = torch.where(up, a, alpha), torch.where(up, s, stat)
        active = up & (s < rule.target - rule.tolerance)
    return alpha, stat


SEARCHES: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "bisect": bisect_alpha,
    "climb": climb_alpha,
}
"""Name -> ``f(measure, rule, batch) -> (alpha [batch], statistic [batch])``."""


def _append(model: Model, inputs: Tensor, token: Tensor, kw: dict[str, Any]) -> Tensor:
    """``inputs`` (token ids, or the residual entering block 0) with one token appended."""
    if not torch.is_floating_point(inputs):
        return torch.cat([inputs, token[:, None].to(inputs)], 1)
    kind = model.cfg.positional_embedding_type
    new = model.embed(token[:, None])
    if kind == "standard":
        new = new + model.pos_embed(
            token[:, None], inputs.shape[1], attention_mask=kw.get("attention_mask")
        )
    elif kind not in ("rotary", "alibi"):
        raise ValueError(
            f"alpha='auto' with offset > 0 cannot extend a residual stream under "
            f"positional_embedding_type={kind!r}; pass prompt_tokens to steer(...)"
        )
    return torch.cat([inputs, new.to(inputs.dtype)], 1)


def _lookahead(model: Model, inputs: Tensor, n: int, kw: dict[str, Any]) -> Tensor:
    """``inputs`` followed by the model's ``n`` next greedy tokens (hooks as they are;
    the caller sets alpha to 0). ``kw['attention_mask']`` is extended in place."""
    for _ in range(n):
        with torch.no_grad():
            logits = model(inputs, **kw)
        token = logits[:, -1].argmax(-1)
        if kw.get("attention_mask") is not None:
            mask = kw["attention_mask"]
            kw["attention_mask"] = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
        inputs = _append(model, inputs, token, kw)
    return inputs


def _calibrate(
    model: Model, rule: AutoAlpha, state: Any, heads: HeadSet, tokens: Tensor, **kw: Any
) -> Tensor:
    """Alphas for a batch of sequences, with the steering hooks already in place."""
    saved = (state.alpha, state.positions)
    state.positions = "all"
    kw = dict(kw)

    def measure(alpha: Tensor) -> Tensor:
        state.alpha = alpha
        return _statistic(model, rule, heads, tokens, **kw)

    try:
        if rule.offset:
            state.alpha = 0.0
            tokens = _lookahead(model, tokens, rule.offset, kw)
        alpha, stat = SEARCHES[rule.search](measure, rule, tokens.shape[0])
    finally:
        state.alpha, state.positions = saved
    state.chosen["statistic"] = stat
    return alpha


def calibrate_state(
    model: Model, rule: AutoAlpha, state: Any, heads: HeadSet, prompt_tokens: Sequence[Tensor]
) -> Tensor:
    """One alpha per prompt (``[n]``), each calibrated on its own prompt tokens."""
    device = next(model.parameters()).device
    alphas = [
        _calibrate(model, rule, state, heads, t.reshape(1, -1).to(device)) for t in prompt_tokens
    ]
    return torch.cat(alphas)


@contextlib.contextmanager
def lazy_calibration(model: Model, rule: AutoAlpha, state: Any, heads: HeadSet) -> Iterator[None]:
    """Calibrate alpha on every forward pass that starts a new sequence.

    A forward pre-hook on the first block sees the residual stream entering it. A pass
    without a KV cache, or with an empty one, starts a sequence: it is calibrated on
    that residual (``model(resid, start_at_layer=0, ...)``), which works for
    ``model(tokens)``, ``model.generate`` and :func:`focuslens.model.generation.generate_greedy`
    alike. Sequences are assumed unpadded or left-padded (the last position is real).
    Later cached steps reuse the alpha.
    """
    busy = {"on": False}

    def pre_hook(layer: int, module: Any, args: tuple, kwargs: dict) -> None:
        entry = kwargs.get("past_kv_cache_entry")
        if busy["on"] or (entry is not None and int(entry.past_keys.shape[1]) > 0):
            return
        resid = args[0] if args else kwargs["resid_pre"]
        busy["on"] = True
        try:
            state.alpha = _calibrate(
                model,
                rule,
                state,
                heads,
                resid,
                start_at_layer=0,
                attention_mask=kwargs.get("attention_mask"),
            )
        finally:
            busy["on"] = False

    with pre_hooks(model, pre_hook, layers=[0], on="block"):
        yield


MAX_OFFSET = 8
"""Largest calibration row recorded (the row of the 8th answer token)."""

MAX_WINDOW = 64
"""Largest ``focus`` window recorded."""


def _reduced_pass(model: Model, tokens: Tensor, reducers: dict[str, Callable]) -> dict:
    """One forward pass of ``tokens`` (``[pos]``); at each layer's attention hook point
    ``point``, keeps only ``reducers[point](activation of the one sequence)``. Returns
    ``{point: [n_layers, ...]}``."""
    n_layers = model.cfg.n_layers
    out: dict[str, dict[int, Tensor]] = {point: {} for point in reducers}

    def keep(act: Tensor, hook: Any, layer: int, point: str) -> None:
        out[point][layer] = reducers[point](act[0]).float().cpu()

    fwd = [
        (attn_hook(layer, point), partial(keep, layer=layer, point=point))
        for point in reducers
        for layer in range(n_layers)
    ]
    device = next(model.parameters()).device
    with torch.no_grad(), hooks(model, fwd):
        model(tokens[None].to(device), stop_at_layer=n_layers)
    return {
        point: torch.stack([got[layer] for layer in range(n_layers)]) for point, got in out.items()
    }


def _relevant_rows(model: Model, tp: Any, rows: list[int]) -> Tensor:
    """``[row, layer, head]`` relevant-span mass of ``rows``, summed inside the hook."""
    idx, (s, e) = torch.tensor(rows), tp.relevant
    reduce = {"hook_pattern": lambda pattern: pattern[:, idx, s:e].sum(-1)}
    return _reduced_pass(model, tp.tokens, reduce)["hook_pattern"].permute(2, 0, 1)


def _gold_rows(
    model: Model, tp: Any, rows: list[int], sink: int, query_point: str
) -> tuple[Tensor, ...]:
    """For one (short, gold-only) tokenised prompt and its query ``rows``, per ``[row,
    layer, head]``: the number of keys holding half of the relevant-span mass, the
    cumulative mass of the most-attended keys outside the sink (``[..., MAX_WINDOW]``),
    the mass off the sink and the query norm. Only the rows are kept from each pattern."""
    idx, (s, e) = torch.tensor(rows), tp.relevant
    got = _reduced_pass(
        model,
        tp.tokens,
        {
            "hook_pattern": lambda pattern: pattern[:, idx],
            query_point: lambda q: q[idx].norm(dim=-1).T,  # [head, row]
        },
    )
    pattern = got["hook_pattern"].permute(2, 0, 1, 3)  # [row, layer, head, key]
    span = pattern[..., s:e].sort(-1, descending=True).values
    relevant = span.sum(-1)
    half = (span.cumsum(-1) < 0.5 * relevant[..., None]).sum(-1) + 1
    body = pattern[..., sink:].sort(-1, descending=True).values[..., :MAX_WINDOW].cumsum(-1)
    if body.shape[-1] < MAX_WINDOW:  # short prompts: the window holds every key
        body = torch.cat(
            [body, body[..., -1:].expand(*body.shape[:-1], MAX_WINDOW - body.shape[-1])], -1
        )
    off_sink = 1 - pattern[..., :sink].sum(-1)
    return half.float(), body, off_sink, got[query_point].permute(2, 0, 1)


def record_auto_target(
    model: Model,
    directions: Any,
    prompts: Sequence[Any],
    *,
    statistic: str = "focus",
    sink: int = 2,
    window: int | None = None,
) -> Any:
    """A copy of ``directions`` carrying what ``alpha="auto"`` needs (module docstring).

    Measured on the *gold-only* variants of ``prompts`` with their responses
    teacher-forced, unsteered, at the last prompt token and the rows of the first
    response tokens (up to :data:`MAX_OFFSET`, as many as every prompt has), per head:
    the target statistic (``tables``) and the query norm (``query_norm``); and on the
    prompts themselves, with their distractors, the relevant-span mass (``relevant``):
    the rule calibrates at the row where the steered heads find the relevant document.
    Each is ``[offset][layer][head]``; ``table`` is the last prompt row's target (the
    rule of directions recorded before the tables).

    Args:
        model: The model.
        directions: The :class:`~focuslens.directions.FocusDirections`.
        prompts: Labelled prompts built from documents (``gold_only()`` must work).
        statistic: A name in :data:`STATISTICS`.
        sink: Leading positions treated as the sink.
        window: Keys counted by ``"focus"``; default the median number of keys holding
            half of the relevant mass of the directions' top heads (10 % of the heads).
    """
    import math

    from focuslens.model.loading import qk_points
    from focuslens.prompts.tokens import tokenize_prompt

    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {sorted(STATISTICS)}, got {statistic!r}")
    full = [tokenize_prompt(model, p) for p in prompts]
    gold = [tokenize_prompt(model, p.gold_only()) for p in prompts]
    if not gold:
        raise ValueError("record_auto_target needs at least one prompt")
    n_rows = 1 + min(MAX_OFFSET, *(max(0, tp.n_response - 1) for tp in gold + full))
    query_point = qk_points(model)[0]

    def rows(tp: Any) -> list[int]:
        return [tp.n_prompt - 1 + o for o in range(n_rows)]

    gold_rows = [_gold_rows(model, tp, rows(tp), sink, query_point) for tp in gold]
    half, body, off_sink, qnorm = (torch.stack(x) for x in zip(*gold_rows))
    # The relevant mass among the distractors, [row, layer, head].
    found = torch.stack([_relevant_rows(model, tp, rows(tp)) for tp in full]).mean(0)
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    k = max(1, math.ceil(0.1 * n_heads))
    ranked = list(directions.heads)[:k] if directions.heads else None
    top = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool)
    for layer, head in ranked or [
        (l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)
    ]:
        top[layer, head] = True
    best = int(found[:, top].mean(-1).argmax())
    if window is None:
        window = int(half[:, best][:, top].median())
    window = min(int(window), MAX_WINDOW)
    tables = (body[..., window - 1] if statistic == "focus" else off_sink).mean(0)
    training = dict(directions.training)
    training["auto"] = {
        "statistic": statistic,
        "window": int(window),
        "sink": int(sink),
        "search": "climb",
        "table": tables[0].tolist(),
        "tables": tables.tolist(),
        "relevant": found.tolist(),
        "query_norm": qnorm.mean(0).tolist(),
        "n_prompts": len(gold),
    }
    return replace(directions, training=training)


__all__ = [
    "AutoAlpha",
]
