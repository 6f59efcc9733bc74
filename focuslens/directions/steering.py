"""Steering with focus directions: add ``alpha * d_q`` to the queries of chosen heads.

``with directions.steer(model, heads, alpha): ...`` changes, for each chosen head
``(layer, h)``, the query ``q <- q + alpha * d_q[layer, h]`` and the key
``k <- k + alpha * d_k[layer, h]`` (METHOD.md section 4). The vectors are added **after
the rotary embedding** (``hook_rot_q`` / ``hook_rot_k``) on rotary models and at
``hook_q`` / ``hook_k`` on models without one, at every key position and at the query
positions you choose. Other heads are left exactly as they are. It works in a single
forward pass and in generation with the KV cache: on a rotary HookedTransformer the
cache holds unrotated, unsteered keys and ``hook_rot_k`` sees all keys at every step,
so the key vector is re-added each step, as in the authors' code; on a
``TransformerBridge`` the (Hugging Face) cache holds rotated keys, steered once when
they were added. Negative ``alpha``
is a *negative* focus direction. The context removes every hook on exit, also when the
body raises or a generation is interrupted.

The key direction changes nothing. For query row ``i`` of head ``h``::

    (q_i + a d_q) . (k_j + a d_k) = q_i . k_j  +  a d_q . k_j  +  [a q_i . d_k + a^2 d_q . d_k]

The bracket does not depend on the key ``j``, so it cancels in the softmax: adding
``d_k`` to every key leaves every attention pattern as it was. The whole effect is the
logit bias ``a d_q . k_j / sqrt(d_head)``, which depends on the (rotated) key content.
``form="scores"`` applies exactly that bias at ``hook_attn_scores`` (reading the keys
from ``hook_rot_k``, or ``hook_k`` and the KV cache) and touches no query or key;
``form="qk"`` (default) is the paper's form. They give the same logits (tested). Where
the bracket would *not* cancel: attention-score soft-capping (Gemma 2) and log-n query
scaling, for which ``form="scores"`` is refused.

Grouped-query attention. The authors repeat the KV heads to one key per query head and
add each query head's own ``d_k`` there. TransformerLens keeps one key per KV head
(``hook_rot_k`` is ``[batch, pos, kv_head_index, d_head]``), shared by the
``n_heads / n_key_value_heads`` query heads of its group, so one vector per query head
cannot be added. focuslens adds to KV head ``g`` the **mean** of ``d_k`` over the
steered query heads of group ``g`` (without GQA this is the head's own ``d_k``). Since
any vector added to all keys cancels in the softmax of every head that reads them,
this gives the same attention patterns as the authors' per-query-head form, for the
steered heads and for the unsteered heads sharing the KV head (tested against a hand
computation with repeated keys). On models without rotary embeddings ``hook_k`` fires
before the KV cache, so the cache stores steered keys: the same keys, added once.

Which query positions (``positions=``): ``"all"`` (the paper), ``"prompt"`` or
``"generated"``; the last two need the prompt length (``n_prompt=``), which
:meth:`Steering.apply` takes from the prompts. The key vector is always added at every
key position (where it is a no-op).

How strong (``alpha=``): a number, a ``[batch]`` tensor (one per sequence), or
``"auto"``: see :mod:`focuslens.directions.magnitude` (our rule, not the paper's).

Example:
    >>> import torch
    >>> from focuslens.directions import FocusDirections, ModelShape
    >>> from focuslens.directions.steering import head_tables
    >>> shape = ModelShape(n_layers=1, n_heads=4, n_key_value_heads=2, d_head=2, rotary=True)
    >>> fd = FocusDirections(torch.ones(1, 4, 2), torch.arange(8.0).reshape(1, 4, 2), shape)
    >>> dq, dk = head_tables(fd, [(0, 1), (0, 2)])
    >>> dq[0].tolist()
    [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
    >>> dk[0].tolist()  # KV head 0 <- d_k of head 1, KV head 1 <- d_k of head 2
    [[2.0, 3.0], [4.0, 5.0]]
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from focuslens.heads import HeadSet, str_head
from focuslens.model.hooks import (
    PositionTracker,
    absolute_query_positions,
    attention_scale,
    attn_hook,
    check_positions,
    hooks,
    key_hook_name,
    kv_head_of,
    query_row_mask,
)
from focuslens.model.kvcache import all_keys
from focuslens.model.loading import ensure_backend, qk_points
from focuslens.prompts.batch import tokenized_prompts
from focuslens.prompts.spans import LabeledPrompt
from focuslens.typing import Model

if TYPE_CHECKING:  # the directions own their steering (FocusDirections.steer); no cycle
    from focuslens.directions.core import FocusDirections

DEFAULT_K = 20
"""Heads steered when none are given: the top 20 ranked heads, as in the release."""

FORMS = ("qk", "scores")
"""Steering forms: the paper's query/key addition, or the equivalent logit bias."""


def resolve_heads(directions: FocusDirections, heads: Any) -> HeadSet:
    """``None`` -> the top :data:`DEFAULT_K` ranked heads; an int ``k`` -> the top ``k``;
    anything else -> ``HeadSet(heads)``. Refuses heads in layers without directions."""
    if heads is None:
        head_set = directions.top_heads(min(DEFAULT_K, len(directions.heads) or 1))
    elif isinstance(heads, int) and not isinstance(heads, bool):
        head_set = directions.top_heads(heads)
    else:
        head_set = HeadSet(heads)
    if not len(head_set):
        raise ValueError("the head set is empty; give at least one (layer, head)")
    shape = directions.shape
    for layer, head in head_set:
        if not (0 <= layer < shape.n_layers and 0 <= head < shape.n_heads):
            raise ValueError(f"head {str_head((layer, head))} does not exist in a model of {shape}")
    missing = [str_head(h) for h in head_set if h[0] not in (directions.layers or [])]
    if missing:
        raise ValueError(
            f"heads {missing} lie in layers without focus directions "
            f"(these directions cover layers {directions.layers})"
        )
    return head_set


def head_tables(
    directions: FocusDirections, heads: Iterable[tuple[int, int]]
) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
    """Per steered layer: ``d_q`` with unsteered heads zeroed ``[n_heads, d_head]``, and
    the key vector of each KV head ``[n_kv_heads, d_head]`` (mean ``d_k`` of the steered
    query heads of its group, zero for a group with none)."""
    shape = directions.shape
    group = shape.n_heads // shape.n_key_value_heads
    dq: dict[int, Tensor] = {}
    dk: dict[int, Tensor] = {}
    for layer, idx in HeadSet(heads).by_layer().items():
        chosen = torch.tensor(idx)
        dq[layer] = torch.zeros(shape.n_heads, shape.d_head)  # float32, cast in the hooks
        dq[layer][chosen] = directions.d_q[layer, chosen].float()
        sums = torch.zeros(shape.n_key_value_heads, shape.d_head)
        counts = torch.zeros(shape.n_key_value_heads, 1)
        sums.index_add_(0, chosen // group, directions.d_k[layer, chosen].float())
        counts.index_add_(0, chosen // group, torch.ones(len(idx), 1))
        dk[layer] = sums / counts.clamp(min=1)
    return dq, dk


@dataclass
class SteerState:
    """What the hooks read at call time: lets ``alpha="auto"`` change alpha per sequence.

    Attributes:
        alpha: A float or a ``[batch]`` tensor.
        positions: ``"all"``, ``"prompt"`` or ``"generated"``.
        n_prompt: Prompt length(s) for ``positions`` other than ``"all"``.
        hook_point: Where the directions act, ``"query hook/key hook"``
            (:attr:`FocusDirections.hook_point`).
    """

    alpha: float | Tensor
    positions: str = "all"
    n_prompt: Tensor | int | None = None
    hook_point: str = "hook_rot_q/hook_rot_k"
    chosen: dict[str, Any] = field(default_factory=dict)


def _alpha_like(alpha: float | Tensor, act: Tensor, name: str) -> Tensor | float:
    """``alpha`` shaped ``[batch, 1, 1, 1]`` to broadcast over an activation (or a float)."""
    if not isinstance(alpha, Tensor):
        return float(alpha)
    a = alpha.to(device=act.device, dtype=torch.float32).reshape(-1)
    if a.numel() not in (1, act.shape[0]):
        raise ValueError(
            f"alpha has {a.numel()} values but the {name} activation has batch {act.shape[0]}"
        )
    return a.reshape(-1, 1, 1, 1)


def _row_mask(state: SteerState, absolute: Tensor) -> Tensor | None:
    """``[batch or 1, n_query]`` float mask of steered query rows, None for all rows."""
    if state.positions == "all":
        return None
    return query_row_mask(state.positions, absolute, state.n_prompt).float()  # type: ignore[arg-type]


def _qk_hooks(
    model: Model, dq: dict, dk: dict, state: SteerState, tracker: PositionTracker
) -> list[tuple[str, Callable]]:
    """Hooks adding ``alpha d_q`` to queries and ``alpha d_k`` (per KV head) to keys."""

    tables: dict[tuple, Tensor] = {}

    def vector(kind: str, layer: int, act: Tensor) -> Tensor:
        """The layer's table on the activation's device and dtype (converted once)."""
        key = (kind, layer, act.device, act.dtype)
        if key not in tables:
            tables[key] = (dq if kind == "q" else dk)[layer].to(device=act.device, dtype=act.dtype)
        return tables[key]

    def scaled(kind: str, layer: int, act: Tensor) -> Tensor:
        alpha = _alpha_like(state.alpha, act, kind)
        vec = vector(kind, layer, act)
        return alpha * vec if isinstance(alpha, float) else (alpha * vec).to(act.dtype)

    def q_hook(q: Tensor, hook: Any, layer: int) -> Tensor:
        delta = scaled("q", layer, q)  # [head, d_head] or [batch, 1, head, d_head]
        if state.positions != "all":
            absolute = absolute_query_positions(
                q.shape[1], tracker.offset(layer) + q.shape[1], q.device
            )
            rows = _row_mask(state, absolute)
            delta = delta * rows[:, :, None, None].to(q.dtype)  # type: ignore[index]
        return q + delta

    def k_hook(k: Tensor, hook: Any, layer: int) -> Tensor:
        return k + scaled("k", layer, k)

    query_point, key_point = state.hook_point.split("/")
    out = []
    for layer in dq:
        out.append((attn_hook(layer, query_point), _bind(q_hook, layer)))
        out.append((attn_hook(layer, key_point), _bind(k_hook, layer)))
    return out


def _score_hooks(
    model: Model, dq: dict, by_layer: dict, state: SteerState, tracker: PositionTracker
) -> list[tuple[str, Callable]]:
    """Hooks adding ``alpha d_q . k_j / attn_scale`` to the attention logits."""
    keys: dict[int, Tensor] = {}

    def k_hook(k: Tensor, hook: Any, layer: int) -> None:
        keys[layer] = k

    tables: dict[tuple, tuple[Tensor, Tensor, Tensor, int]] = {}

    def table(layer: int, device: Any) -> tuple[Tensor, Tensor, Tensor, int]:
        """KV-head index, head index, ``d_q / scale`` rows: built once per layer/device."""
        key = (layer, device)
        if key not in tables:
            heads = by_layer[layer]
            kv = torch.tensor([kv_head_of(model, h) for h in heads], device=device)
            vec = dq[layer][heads].to(device=device, dtype=torch.float32)
            index = torch.tensor(heads, device=device)
            tables[key] = (kv, index, vec / attention_scale(model, layer), len(heads))
        return tables[key]

    def score_hook(scores: Tensor, hook: Any, layer: int) -> Tensor:
        k = keys.pop(layer)
        if k.shape[1] != scores.shape[-1]:
            # the key hook saw only the new keys (TransformerLens's hook_k, any bridge key
            # hook): the cache, already extended, holds all of them
            k = all_keys(tracker.entry(layer), layer)
        kv, index, vec, n_heads = table(layer, k.device)
        bias = torch.einsum("bkhd,hd->bhk", k[:, :, kv].float(), vec)  # [b, h, key]
        alpha = _alpha_like(state.alpha, scores, "attention score")
        add = alpha * bias[:, :, None, :]  # [b, h, 1, key]
        absolute = absolute_query_positions(scores.shape[2], scores.shape[3], scores.device)
        rows = _row_mask(state, absolute)
        if rows is not None:
            add = add * rows[:, None, :, None]
        add = add.expand(scores.shape[0], n_heads, scores.shape[2], scores.shape[3])
        return scores.index_add(1, index.to(scores.device), add.to(scores.dtype))

    out = []
    for layer in dq:
        out.append((key_hook_name(model, layer), _bind(k_hook, layer)))
        out.append((attn_hook(layer, "hook_attn_scores"), _bind(score_hook, layer)))
    return out


def _bind(fn: Callable, layer: int) -> Callable:
    def hook(act: Tensor, hook: Any) -> Any:
        return fn(act, hook, layer)

    return hook


def _check_form(model: Model, form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    cap = getattr(model.cfg, "attn_scores_soft_cap", -1.0) or -1.0
    if form == "scores" and (cap > 0 or getattr(model.cfg, "use_logn_attn", False)):
        raise ValueError(
            "form='scores' equals the query/key form only without attention soft-capping and "
            f"log-n scaling (attn_scores_soft_cap={cap}, use_logn_attn="
            f"{getattr(model.cfg, 'use_logn_attn', False)}); use form='qk'"
        )


def _as_alpha(alpha: Any) -> float | Tensor:
    """A finite number or ``[batch]`` tensor; NaN or infinity would zero the steered heads'
    attention (every score NaN) and give plausible-looking wrong answers, so they are refused."""
    if isinstance(alpha, Tensor):
        if alpha.is_floating_point() and not bool(torch.isfinite(alpha).all()):
            raise ValueError(f"alpha must be finite, got a tensor with NaN or infinity: {alpha}")
        return alpha.detach()
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ValueError(f"alpha must be a number, a [batch] tensor or 'auto', got {alpha!r}")
    if not math.isfinite(alpha) or abs(alpha) > torch.finfo(torch.float32).max:
        raise ValueError(f"alpha must be a finite number (in float32), got {alpha!r}")
    return float(alpha)


@contextlib.contextmanager
def steer(
    directions: FocusDirections,
    model: Model,
    heads: Any = None,
    alpha: float | str | Tensor = 1.0,
    *,
    positions: str = "all",
    n_prompt: Tensor | Sequence[int] | int | None = None,
    form: str = "qk",
    prompt_tokens: Sequence[Tensor] | None = None,
    auto: Any = None,
) -> Iterator[SteerState]:
    """Steer ``model`` with focus directions while the context is open.

    Args:
        directions: The :class:`~focuslens.directions.FocusDirections`; their shape must
            match the model's.
        model: A ``HookedTransformer``.
        heads: The heads to steer: a HeadSet or ``(layer, head)`` pairs, an int ``k``
            (top ``k`` ranked heads of ``directions``), or None (top 20).
        alpha: Strength: a number, a ``[batch]`` tensor, or ``"auto"`` (see
            :mod:`focuslens.directions.magnitude`).
        positions: Query positions steered: ``"all"``, ``"prompt"`` or ``"generated"``.
        n_prompt: Prompt length (int, or one per sequence); needed unless
            ``positions == "all"``.
        form: ``"qk"`` (add to queries and keys, the paper's) or ``"scores"`` (the
            equivalent logit bias at ``hook_attn_scores``).
        prompt_tokens: With ``alpha="auto"``: the prompts' tokens (one 1-D tensor per
            sequence) to calibrate on. Without them, every forward pass that starts a new
            sequence is calibrated on its own input.
        auto: A :class:`~focuslens.directions.magnitude.AutoAlpha` overriding the rule's settings.

    Yields:
        The :class:`SteerState` (``state.alpha`` holds the alpha in use).

    Example:
        >>> import focuslens
        >>> model = focuslens.load_demo_model()
        >>> prompt = focuslens.tasks.synthetic_retrieval(1, n_documents=8, seed=0)[0]
        >>> directions = focuslens.learn_focus_directions(model, [prompt], method="closed_form")
        >>> tokens = focuslens.tokenize_prompt(model, prompt).tokens[None]
        >>> plain = model(tokens)
        >>> with directions.steer(model, heads=[(1, 0)], alpha=2.0) as state:
        ...     steered = model(tokens)
        >>> state.alpha, bool((steered - plain).abs().max() > 0)
        (2.0, True)
        >>> torch.equal(model(tokens), plain)  # every hook is gone after the context
        True
    """
    directions.check_model(model)
    head_set = resolve_heads(directions, heads).validate(model)
    check_positions(positions)
    _check_form(model, form)
    query_point, key_point = qk_points(model)
    ensure_backend(
        model, (query_point, key_point) if form == "qk" else (key_point, "hook_attn_scores")
    )
    if positions != "all" and n_prompt is None:
        raise ValueError(f"positions={positions!r} needs n_prompt (the prompt length)")
    n_prompt_t = None if n_prompt is None else torch.as_tensor(n_prompt).reshape(-1)
    dq, dk = head_tables(directions, head_set)
    state = SteerState(
        alpha=0.0, positions=positions, n_prompt=n_prompt_t, hook_point=directions.hook_point
    )
    tracker = PositionTracker(model)
    if form == "qk":
        fwd = _qk_hooks(model, dq, dk, state, tracker)
    else:
        fwd = _score_hooks(model, dq, head_set.by_layer(), state, tracker)
    with contextlib.ExitStack() as stack:
        if positions != "all" or form == "scores":
            stack.enter_context(tracker)
        stack.enter_context(hooks(model, fwd))
        if isinstance(alpha, str):
            if alpha != "auto":
                raise ValueError(f"alpha must be a number, a tensor or 'auto', got {alpha!r}")
            from focuslens.directions.magnitude import AutoAlpha, calibrate_state, lazy_calibration

            rule = AutoAlpha.from_directions(directions, head_set, auto)
            if prompt_tokens is not None:
                state.alpha = calibrate_state(model, rule, state, head_set, prompt_tokens)
            else:
                stack.enter_context(lazy_calibration(model, rule, state, head_set))
            state.chosen["auto"] = rule
        else:
            state.alpha = _as_alpha(alpha)
        yield state


@dataclass
class Steering:
    """Focus-direction steering as an intervention for ``focuslens.evaluate``.

    ``apply(model, prompts)`` returns the :func:`steer` context for those prompts: it
    reads each prompt's length (for ``positions``) and, with ``alpha="auto"``,
    calibrates one alpha per prompt on its prompt tokens (never on a response).

    Attributes:
        directions: The focus directions.
        heads: Heads to steer (see :func:`steer`).
        alpha: A number or ``"auto"``.
        positions: ``"all"``, ``"prompt"`` or ``"generated"``.
        form: ``"qk"`` or ``"scores"``.
        auto: Optional :class:`~focuslens.directions.magnitude.AutoAlpha` settings.
        last_alpha: The alphas used by the last ``apply`` (one per prompt), for reports.
        history: Every alpha used, appended on each ``apply`` (``evaluate`` with ``heads``
            applies twice per prompt, with the same alpha); the mean alpha of a run.
    """

    directions: FocusDirections
    heads: Any = None
    alpha: float | str = 1.0
    positions: str = "all"
    form: str = "qk"
    auto: Any = None
    last_alpha: list[float] = field(default_factory=list)
    history: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (isinstance(self.alpha, str) and self.alpha == "auto"):
            _as_alpha(self.alpha)  # a finite number: refused here, before any generation

    def apply(self, model: Model, prompts: Sequence[LabeledPrompt]) -> Any:
        """The steering context for a batch of ``prompts`` (as ``evaluate`` passes them)."""
        if isinstance(prompts, LabeledPrompt):
            prompts = [prompts]
        tps = tokenized_prompts(model, prompts)
        n_prompt = [tp.n_prompt for tp in tps]
        tokens = [tp.tokens[: tp.n_prompt] for tp in tps] if self.alpha == "auto" else None
        return self._context(model, n_prompt, tokens)

    @contextlib.contextmanager
    def _context(self, model: Model, n_prompt: list[int], tokens: Any) -> Iterator[SteerState]:
        with steer(
            self.directions,
            model,
            self.heads,
            self.alpha,
            positions=self.positions,
            n_prompt=n_prompt,
            form=self.form,
            prompt_tokens=tokens,
            auto=self.auto,
        ) as state:
            a = state.alpha
            self.last_alpha = a.tolist() if isinstance(a, Tensor) else [float(a)] * len(n_prompt)
            self.history.extend(self.last_alpha)
            yield state

    def __repr__(self) -> str:
        return f"Steering(alpha={self.alpha!r}, heads={self.heads!r}, positions={self.positions!r})"


__all__ = [
    "DEFAULT_K",
    "FORMS",
    "steer",
    "Steering",
]
