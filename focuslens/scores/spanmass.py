"""Attention mass of a few query rows on labelled key spans, without a full pattern.

Contextual scores need the attention of a few query rows (the response) on a partition
of the keys (relevant span, distractors, sink, other). This module computes those
masses chunk by chunk, for :mod:`focuslens.model.prefill`, in two ways:

* from queries and keys (:func:`span_mass_from_keys`): the logits of the rows are
  recomputed from their (rotated) queries and all (rotated) keys, in key blocks; a
  first sweep gets each row's log-sum-exp with a running maximum, a second sums
  ``exp(logit - lse)`` over each span. At most ``head x row x block`` logits exist at
  once, and no pattern is built or read;
* from each chunk's ``hook_pattern`` rows, when an intervention changes the attention
  scores or patterns after the queries and keys (the first way would not see it).

The key partition is one label per key (:func:`span_labels`), so prompts with
thousands of distractor spans stay ``O(n)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from focuslens.model.hooks import (
    active_hook_points,
    attention_scale,
    attn_hook,
    key_hook_name,
    query_hook_name,
    rotary,
)
from focuslens.prompts.tokens import TokenizedPrompt
from focuslens.scores.reduce import FIRST_DISTRACTOR, OTHER, REL, SINK
from focuslens.typing import Model

KEY_BLOCK_ELEMENTS = 1 << 22
"""Most ``head x row x key`` logits the ``"keys"`` route holds at once (16 MiB in float32)."""


# ------------------------------------------------------------------------ span labels
def span_labels(tp: TokenizedPrompt, n_sink: int) -> Int[Tensor, " key_pos"]:
    """The mask row of each key position: relevant, sink, other or distractor ``i``.

    The same partition as :func:`focuslens.scores.reduce.span_masks` (row ``3 + i`` is
    distractor ``i``) as one label per key, so it stays ``O(n)`` with thousands of spans.
    """
    n = len(tp)
    labels = torch.full((n,), OTHER, dtype=torch.long)
    labels[:n_sink] = SINK
    spans = [("relevant", tp.relevant, REL)] + [
        (f"distractor {i}", s, FIRST_DISTRACTOR + i) for i, s in enumerate(tp.distractors)
    ]
    clash = [name for name, s, _ in spans if s is not None and s[0] < n_sink]
    if clash:
        raise ValueError(
            f"the sink positions [0, {n_sink}) overlap the {', '.join(clash)} span(s) of prompt "
            f"{tp.source.text[:60]!r}; pass a smaller sink (sink=0 disables it) or prepend BOS"
        )
    for _, span, label in spans:
        if span is not None:
            labels[span[0] : span[1]] = label
    return labels


# --------------------------------------------------------------------- scores from keys
def row_log_sum_exp(
    q: Float[Tensor, "head_index n_rows d_head"],
    rows: Int[Tensor, " n_rows"],
    k: Float[Tensor, "key_pos head_index d_head"],
    scale: float,
    block: int,
) -> Float[Tensor, "head_index n_rows"]:
    """Log-sum-exp of each row's causal attention logits, over key blocks, with a
    running maximum (never more than ``head x row x block`` logits at once)."""
    h, r, _ = q.shape
    run_max = torch.full((h, r), -torch.inf, device=q.device)
    run_sum = torch.zeros(h, r, device=q.device)
    for start in range(0, int(rows.max()) + 1, block):
        logits = _block_logits(q, rows, k, scale, start, block)
        new_max = torch.maximum(run_max, logits.amax(-1))
        safe = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
        run_sum = run_sum * torch.exp(run_max - safe) + torch.exp(logits - safe[..., None]).sum(-1)
        run_max = new_max
    return run_max + torch.log(run_sum)


def _block_logits(
    q: Tensor, rows: Tensor, k: Tensor, scale: float, start: int, block: int
) -> Tensor:
    """``[head, row, block]`` causal logits of keys ``start : start + block``."""
    kb = k[start : start + block].to(device=q.device, dtype=q.dtype)
    logits = torch.einsum("hrd,bhd->hrb", q, kb) / scale
    keys = torch.arange(start, start + kb.shape[0], device=q.device)
    causal = keys[None, :] <= rows[:, None].to(q.device)
    return logits.masked_fill(~causal[None], -torch.inf)


def span_mass_from_keys(
    q: Float[Tensor, "n_rows head_index d_head"],
    rows: Int[Tensor, " n_rows"],
    k: Float[Tensor, "key_pos kv_head_index d_head"],
    labels: Int[Tensor, " key_pos"],
    n_masks: int,
    scale: float,
    block_elements: int = KEY_BLOCK_ELEMENTS,
    extra: Float[Tensor, "n_extra key_pos"] | None = None,
) -> Float[Tensor, "head_index n_out"]:
    """Attention mass of query rows on labelled key spans, without building a pattern.

    ``mass[h, m] = sum over rows i of sum over keys j <= i with labels[j] == m of
    softmax_j(q[i, h] . k[j, kv(h)] / scale)``: summed over the rows, not averaged.

    Args:
        q: The rows' (rotated) queries.
        rows: Their absolute positions (each attends to keys ``0 .. rows[i]``).
        k: All (rotated) keys of the layer; grouped heads are repeated as in
            TransformerLens (query head ``h`` reads key head ``h // (n_heads / n_kv)``).
        labels: Mask index of each key (:func:`span_labels`).
        n_masks: Number of masks (rows of the result).
        scale: The layer's ``attn_scale``.
        block_elements: Most ``head x row x key`` logits held at once.
        extra: ``[n_extra, key_pos]`` 0/1 masks that may overlap (named spans); their
            masses follow the ``n_masks`` columns of the result.
    """
    n_heads = q.shape[1]
    if n_heads % k.shape[1]:
        raise ValueError(f"{n_heads} query heads cannot share {k.shape[1]} key heads evenly")
    k = k.repeat_interleave(n_heads // k.shape[1], dim=1) if k.shape[1] != n_heads else k
    qf = q.float().permute(1, 0, 2)
    block = max(1, block_elements // (n_heads * q.shape[0]))
    lse = row_log_sum_exp(qf, rows, k, scale, block)
    mass = torch.zeros(n_heads, n_masks, device=q.device)
    n_extra = 0 if extra is None else extra.shape[0]
    named = torch.zeros(n_heads, n_extra, device=q.device)
    for start in range(0, int(rows.max()) + 1, block):
        logits = _block_logits(qf, rows, k, scale, start, block)
        p = torch.exp(logits - lse[..., None]).sum(1)
        mass.index_add_(1, labels[start : start + p.shape[-1]].to(q.device), p)
        if n_extra:
            named += p @ extra[:, start : start + p.shape[-1]].to(p.device, p.dtype).T
    return torch.cat([mass, named], dim=1)


# ------------------------------------------------------------------ collectors per route
@dataclass
class _Collector:
    """Hooks that reduce one prompt's scored rows to ``{layer: [n_heads, n_masks]}`` sums
    over rows, chunk by chunk, on ``layers``. ``span`` is the current chunk ``(start, end)``."""

    model: Model
    rows: Tensor
    labels: Tensor
    n_masks: int
    cache: Any
    n_total: int
    extra: Tensor | None = None  # [n_named, n_total] masks of the named spans
    layers: list[int] = field(default_factory=list)
    span: tuple[int, int] = (0, 0)
    out: dict[int, Tensor] = field(default_factory=dict)

    def set_chunk(self, start: int, end: int) -> None:
        self.span = (start, end)

    def local_rows(self) -> Tensor:
        start, end = self.span
        inside = (self.rows >= start) & (self.rows < end)
        return self.rows[inside] - start


def _query_key_hooks(collector: Any) -> list[tuple[str, Callable]]:
    """A keys collector's hooks: its query hook and its key hook on each of its layers."""
    out = []
    for layer in collector.layers:
        out.append((query_hook_name(collector.model, layer), collector._query_hook(layer)))
        out.append((key_hook_name(collector.model, layer), collector._key_hook(layer)))
    return out


class _PatternCollector(_Collector):
    """Sums each chunk's ``hook_pattern`` rows over the spans."""

    def fwd_hooks(self) -> list[tuple[str, Callable]]:
        return [(attn_hook(layer, "hook_pattern"), self._hook(layer)) for layer in self.layers]

    def _hook(self, layer: int) -> Callable:
        def hook(pattern: Tensor, hook: Any) -> None:
            local = self.local_rows().to(pattern.device)
            if local.numel() == 0:
                return
            per_key = pattern[0][:, local, :].float().sum(1)  # head key_pos
            mass = torch.zeros(per_key.shape[0], self.n_masks, device=pattern.device)
            labels = self.labels[: per_key.shape[-1]].to(pattern.device)
            mass.index_add_(1, labels, per_key)
            if self.extra is not None:
                named = per_key @ self.extra[:, : per_key.shape[-1]].to(per_key.device).T
                mass = torch.cat([mass, named], dim=1)
            self.out[layer] = self.out.get(layer, 0) + mass

        return hook


class _KeysCollector(_Collector):
    """Keeps the scored rows' queries; in the last chunk, reads the keys and computes the
    span masses blockwise (:func:`span_mass_from_keys`)."""

    queries: dict[int, list[Tensor]]

    def fwd_hooks(self) -> list[tuple[str, Callable]]:
        self.queries = {}
        return _query_key_hooks(self)

    def _query_hook(self, layer: int) -> Callable:
        def hook(q: Tensor, hook: Any) -> None:
            local = self.local_rows().to(q.device)
            if local.numel():
                self.queries.setdefault(layer, []).append(q[0, local].detach().clone())

        return hook

    def _key_hook(self, layer: int) -> Callable:
        def hook(k: Tensor, hook: Any) -> None:
            if self.span[1] != self.n_total:
                return
            keys = k[0]
            if keys.shape[0] != self.n_total:  # hook_k: this chunk only; the rest is cached
                past = self.cache[layer].past_keys[0].to(keys.device, keys.dtype)
                keys = torch.cat([past, keys])
            q = torch.cat(self.queries.pop(layer))
            scale = attention_scale(self.model, layer)
            self.out[layer] = span_mass_from_keys(
                q, self.rows.to(q.device), keys, self.labels, self.n_masks, scale, extra=self.extra
            )

        return hook


COLLECTORS: dict[str, type[_Collector]] = {"keys": _KeysCollector, "pattern": _PatternCollector}


def collectors(routes: list[str], **fields: Any) -> list[_Collector]:
    """One collector per route in use, each on the layers ``routes`` gives it."""
    out = []
    for route, kind in COLLECTORS.items():
        layers = [layer for layer, r in enumerate(routes) if r == route]
        if layers:
            out.append(kind(layers=layers, **fields))
    return out


def collected(model: Model, parts: list[_Collector]) -> Tensor:
    """``[n_layers, n_heads, n_out]`` from the collectors' per-layer sums."""
    out = {layer: mass for part in parts for layer, mass in part.out.items()}
    n_layers = model.cfg.n_layers
    if sorted(out) != list(range(n_layers)):
        raise RuntimeError(
            f"scores were computed for layers {sorted(out)}, expected 0..{n_layers - 1};"
            " this backend does not fire the attention hooks focuslens expects"
        )
    return torch.stack([out[layer].cpu() for layer in range(n_layers)])


@dataclass
class BatchKeysCollector:
    """The ``"keys"`` route of a one-pass batch (right-padded, no KV cache): keeps each
    prompt's scored queries at ``hook_rot_q``/``hook_q`` and, at ``hook_rot_k``/``hook_k``
    of the same layer, computes ``[batch, n_heads, n_out]`` masses, averaged over rows."""

    model: Model
    layers: list[int]
    rows: list[Tensor]  # per prompt, its query rows
    labels: list[Tensor]  # per prompt, the label of each of its keys
    n_masks: int
    extra: list[Tensor] | None = None  # per prompt, [n_named, len] named-span masks
    out: dict[int, Tensor] = field(default_factory=dict)
    queries: dict[int, list[Tensor]] = field(default_factory=dict)

    def fwd_hooks(self) -> list[tuple[str, Callable]]:
        return _query_key_hooks(self)

    def _query_hook(self, layer: int) -> Callable:
        def hook(q: Tensor, hook: Any) -> None:
            self.queries[layer] = [
                q[b, rows.to(q.device)].detach().clone() for b, rows in enumerate(self.rows)
            ]

        return hook

    def _key_hook(self, layer: int) -> Callable:
        def hook(k: Tensor, hook: Any) -> None:
            queries = self.queries.pop(layer)
            scale = attention_scale(self.model, layer)
            masses = []
            for b, (q, rows, labels) in enumerate(zip(queries, self.rows, self.labels)):
                extra = None if self.extra is None else self.extra[b]
                keys = k[b, : labels.shape[0]]
                mass = span_mass_from_keys(
                    q, rows.to(q.device), keys, labels, self.n_masks, scale, extra=extra
                )
                masses.append(mass.cpu() / len(rows))
            self.out[layer] = torch.stack(masses)

        return hook


def keys_route_unsupported(model: Model, layers: Sequence[int] | None = None) -> str | None:
    """Why the ``"keys"`` route cannot reproduce this model's attention (in ``layers``,
    default all), or None."""
    from focuslens.model.fused import attention_features, named_features

    clipped = getattr(model.cfg, "clip_qkv", None) is not None and not rotary(model)
    return named_features(
        {**attention_features(model, layers), "q/k clipping after hook_q": clipped}
    )


def attention_hooks_active(model: Model) -> list[str]:
    """Hook points on attention scores or patterns that have hooks registered."""
    return active_hook_points(model, ("hook_attn_scores", "hook_pattern"))


def pattern_hooked_layers(model: Model) -> list[int]:
    """Layers with a hook registered on ``hook_attn_scores`` or ``hook_pattern``."""
    names = set(attention_hooks_active(model))
    return [
        layer
        for layer in range(model.cfg.n_layers)
        if {attn_hook(layer, "hook_attn_scores"), attn_hook(layer, "hook_pattern")} & names
    ]


def resolve_routes(model: Model, scores_from: str, *, one_pass: bool = False) -> list[str]:
    """The route of each layer, ``"keys"`` or ``"pattern"``, for ``scores_from``.

    ``"auto"`` reads keys wherever it can: a layer with a hook on its scores or pattern
    (an intervention the keys cannot see) or a local attention window is read from its
    pattern, and so is every layer of a model whose attention the keys route does not
    reproduce, or (one pass) of a backend other than ``HookedTransformer`` or a model
    the fused forward does not run.
    """
    from focuslens.model.fused import local_attention_layers

    if scores_from not in ("auto", *COLLECTORS):
        raise ValueError(f"scores_from must be 'auto', 'keys' or 'pattern', got {scores_from!r}")
    n_layers = model.cfg.n_layers
    if scores_from == "pattern":
        return ["pattern"] * n_layers
    local = local_attention_layers(model)
    why = keys_route_unsupported(model, [layer for layer in range(n_layers) if layer not in local])
    if why is None and one_pass:
        from focuslens.model.fused import fused_unavailable

        why = fused_unavailable(model)
    hooked = pattern_hooked_layers(model)
    if scores_from == "keys":
        if why or hooked or local:
            problem = (
                why
                or (local and f"local attention windows in layers {local}")
                or f"hooks are registered on {attention_hooks_active(model)[:3]}"
            )
            raise ValueError(
                f"scores_from='keys' would not match this model's attention ({problem}); "
                "use scores_from='pattern' or 'auto'"
            )
        return ["keys"] * n_layers
    if why:
        return ["pattern"] * n_layers
    return ["pattern" if layer in hooked or layer in local else "keys" for layer in range(n_layers)]


def route_name(routes: list[str]) -> str:
    """``"keys"``, ``"pattern"`` or ``"mixed"`` (some layers each way)."""
    kinds = set(routes)
    return kinds.pop() if len(kinds) == 1 else "mixed"


__all__ = [
    "span_mass_from_keys",
]
