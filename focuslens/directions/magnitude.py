"""Automatic magnitude control for focus-direction steering (``alpha="auto"``).

The paper's revised version controls alpha automatically but did not publish the rule
(METHOD.md section 5). **This rule is focuslens's own**, and is measured against the
best fixed alpha in ``docs/directions.md``.

The idea: a contextual head that reads the right document when it is the only one
there puts a certain mass ``M(h)`` on it. With many distractors the head spreads its
attention, and steering should bring its *focus* back to that level, no further (too
large an alpha makes heads attend to irrelevant context too). Relevance labels are not
available at inference, so the rule uses a label-free proxy of that mass.

Per prompt, on the query row of the last prompt token (the one that predicts the first
answer token) and for the steered heads:

* the statistic ``s(alpha)`` is the mean over the steered heads of their
  ``statistic`` (see :data:`STATISTICS`): by default ``"focus"``, the attention mass
  on the ``window`` most-attended keys outside the sink, with ``window`` the median
  token length of a relevant document in the learning prompts;
* the target ``t`` is the mean over the same heads of a table recorded while learning
  (:func:`record_auto_target`): the relevant-span mass of that row on the *gold-only*
  prompts, unsteered;
* alpha is found by bisection on ``[0, alpha_max]`` so that ``s(alpha)`` reaches ``t``
  (within ``tolerance``); alpha is 0 when ``s(0) >= t`` already (the head is focused,
  nothing to fix) and ``alpha_max`` when even that does not reach ``t``.

Cost: ``2 + max_iter`` forward passes of the prompt that stop after the last steered
layer, once per prompt; cached generation steps reuse the alpha.

Example:
    >>> rule = AutoAlpha(target=0.6, alpha_max=1.0)
    >>> rule.statistic, rule.window
    ('focus', 5)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
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
    """

    target: float
    statistic: str = "focus"
    window: int = 5
    sink: int = 2
    alpha_max: float = 1.0
    tolerance: float = 0.01
    max_iter: int = 6

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ValueError(
                f"statistic must be one of {sorted(STATISTICS)}, got {self.statistic!r}"
            )
        if self.alpha_max <= 0 or self.window < 1 or self.sink < 0 or self.max_iter < 0:
            raise ValueError(
                f"need alpha_max > 0, window >= 1, sink >= 0, max_iter >= 0; got {self}"
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
        table = torch.tensor(info["table"], dtype=torch.float32)
        layers = torch.tensor([layer for layer, _ in heads])
        idx = torch.tensor([head for _, head in heads])
        settings = {k: info[k] for k in ("statistic", "window", "sink") if k in info}
        settings.update(dict(override or {}))
        return cls(target=float(table[layers, idx].mean()), **settings)


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


def _calibrate(
    model: Model, rule: AutoAlpha, state: Any, heads: HeadSet, tokens: Tensor, **kw: Any
) -> Tensor:
    """Alphas for a batch of sequences, with the steering hooks already in place."""
    saved = (state.alpha, state.positions)
    state.positions = "all"

    def measure(alpha: Tensor) -> Tensor:
        state.alpha = alpha
        return _statistic(model, rule, heads, tokens, **kw)

    try:
        alpha, stat = bisect_alpha(measure, rule, tokens.shape[0])
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


def record_auto_target(
    model: Model,
    directions: Any,
    prompts: Sequence[Any],
    *,
    statistic: str = "focus",
    sink: int = 2,
    window: int | None = None,
) -> Any:
    """A copy of ``directions`` carrying the target table for ``alpha="auto"``.

    The table ``[n_layers, n_heads]`` is, per head, the mean over the *gold-only*
    variants of ``prompts`` (unsteered) of the last prompt token's attention mass on the
    relevant document (``statistic="focus"``) or off the sink (``"context"``).

    Args:
        model: The model.
        directions: The :class:`~focuslens.directions.FocusDirections`.
        prompts: Labelled prompts built from documents (``gold_only()`` must work).
        statistic: A name in :data:`STATISTICS`.
        sink: Leading positions treated as the sink.
        window: Keys counted by ``"focus"``; default the median relevant-span length.
    """
    from focuslens.prompts.tokens import tokenize_prompt
    from focuslens.scores.contextual import contextual_scores

    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {sorted(STATISTICS)}, got {statistic!r}")
    gold = [p.gold_only().with_response(None) for p in prompts]
    scores = contextual_scores(model, gold, query="last", sink=sink)
    table = scores.relevant if statistic == "focus" else 1 - scores.sink
    if window is None:
        lengths = []
        for p in prompts:
            tp = tokenize_prompt(model, p)
            lengths.append(tp.relevant[1] - tp.relevant[0])
        window = int(torch.tensor(lengths, dtype=torch.float32).median())
    training = dict(directions.training)
    training["auto"] = {
        "statistic": statistic,
        "window": int(window),
        "sink": int(sink),
        "table": table.tolist(),
        "n_prompts": len(gold),
    }
    return replace(directions, training=training)


__all__ = [
    "AutoAlpha",
]
