"""Fused attention: TransformerLens's attention without the n x n pattern.

Why: a ``HookedTransformer`` attention layer builds the full ``[batch, n_heads, n, n]``
scores, masks them, applies the softmax and multiplies by the values: at 8k tokens
that is 3 GiB per layer on a GPT-2-small shape, and most of the time of a forward pass.
PyTorch's :func:`torch.nn.functional.scaled_dot_product_attention` (SDPA) computes the
same output in blocks, never holding the pattern, several times faster on a CPU.

What :func:`fused_attention` does: while the context is open, each attention module of
the model runs a forward that computes ``q``, ``k``, ``v`` with TransformerLens's own
methods (so ``hook_q``, ``hook_k``, ``hook_v`` fire and take writes), appends to the KV
cache, applies the rotary embedding (``hook_rot_q``, ``hook_rot_k``), repeats grouped
key/value heads, and calls SDPA with the layer's scale and the causal and padding masks
(and a local layer's window, as in GPT-Neo); then ``hook_z`` and the output projection,
as TransformerLens does them. Steering on queries and keys, head ablation on ``hook_z``
and reading queries and keys work unchanged.

What it does not do: ``hook_attn_scores`` and ``hook_pattern`` never fire on a fused
layer. A layer that has a hook on either (split-softmax, PASTA, score-form steering,
``run_with_cache``) runs TransformerLens's own forward, decided at each call, so only the
layers an intervention touches build a pattern. Models whose attention has a feature the
fused forward does not reproduce (ALiBi, soft-capping, attention sinks, log-n scaling,
QK-norm after the hooks, ...: :func:`fused_unsupported`) keep
TransformerLens's forward everywhere (or raise, with ``strict=True``).

Exactness: the output equals the pattern path to float rounding (1e-6 in float32). A
``TransformerBridge`` is left as it is (its Hugging Face attention decides).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from focuslens.typing import Model

_QK_NORM_AFTER_HOOKS = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")


def local_attention_layers(model: Model) -> list[int]:
    """The layers whose attention is local (a sliding window, ``cfg.attn_types``), as
    in GPT-Neo: TransformerLens applies the window only when ``cfg.use_local_attn``."""
    cfg = model.cfg
    if getattr(cfg, "use_local_attn", None) is False:
        return []
    return [i for i, kind in enumerate(getattr(cfg, "attn_types", None) or ()) if kind == "local"]


def attention_features(model: Model, layers: Sequence[int] | None = None) -> dict[str, bool]:
    """Which attention features beyond a causal softmax of ``q.k / scale`` the model's
    config turns on, by name: what a computation from queries and keys (fused attention,
    scores from keys, learning) cannot reproduce. ``layers``: only these layers matter
    (local windows are set per layer; the other features are model-wide). The fused
    forward applies local windows itself (:func:`fused_unsupported`)."""
    cfg = model.cfg
    local = set(local_attention_layers(model))
    if layers is not None:
        local &= set(layers)
    return {
        "ALiBi or relative position biases": cfg.positional_embedding_type
        in ("alibi", "relative_positional_bias"),
        "attention-score soft-capping": (getattr(cfg, "attn_scores_soft_cap", -1) or -1) > 0,
        "learned attention sinks": bool(getattr(cfg, "use_attention_sinks", False)),
        "log-n attention scaling": bool(getattr(cfg, "use_logn_attn", False)),
        "local attention windows": bool(local),
        "non-causal attention": getattr(cfg, "attention_dir", "causal") != "causal",
    }


def named_features(features: dict[str, bool]) -> str | None:
    """The names of the features that are on (comma-separated), or None."""
    found = [name for name, hit in features.items() if hit]
    return ", ".join(found) if found else None


def fused_unsupported(model: Model) -> str | None:
    """The attention features of ``model`` that the fused forward does not reproduce
    (comma-separated), or None when every layer can run fused. Local windows are not
    among them: the fused forward applies a local layer's window itself."""
    cfg = model.cfg
    return named_features(
        {
            **attention_features(model, layers=()),
            "QK-norm after hook_q": getattr(cfg, "original_architecture", None)
            in _QK_NORM_AFTER_HOOKS,
            "per-head attention results (use_attn_result)": bool(
                getattr(cfg, "use_attn_result", 0)
            ),
            "4-bit weights": bool(getattr(cfg, "load_in_4bit", False)),
        }
    )


def _pattern_hooked(attn: Any) -> bool:
    """Whether a hook reads or writes this layer's scores or pattern right now."""
    return bool(attn.hook_attn_scores.fwd_hooks or attn.hook_pattern.fwd_hooks)


def _mask(
    n_query: int,
    n_key: int,
    offset: int,
    attention_mask: Tensor | None,
    device: Any,
    window: int | None = None,
) -> Tensor | None:
    """``[batch or 1, 1, query_pos, key_pos]`` bool mask (True: attend), or None when
    plain causal attention over a square block is meant. ``window``: a local layer's
    window (a query at position ``i`` reads keys ``i - window < j <= i``)."""
    if attention_mask is None and offset == 0 and n_query == n_key and window is None:
        return None
    keys = torch.arange(n_key, device=device)
    queries = torch.arange(offset, offset + n_query, device=device)
    allowed = keys[None, :] <= queries[:, None]
    if window is not None:
        allowed = allowed & (keys[None, :] > queries[:, None] - window)
    mask = allowed[None, None]
    if attention_mask is not None:
        mask = mask & attention_mask.to(device).bool()[:, None, None, :n_key]
    return mask


def _attend(attn: Any, q: Tensor, k: Tensor, v: Tensor, offset: int, attention_mask: Any) -> Tensor:
    """``z``: ``[batch, query_pos, head_index, d_head]`` by SDPA, TransformerLens's layout."""
    n_heads = q.shape[2]
    if k.shape[2] != n_heads:  # grouped keys and values, repeated as TransformerLens does
        k = torch.repeat_interleave(k, dim=2, repeats=n_heads // k.shape[2])
        v = torch.repeat_interleave(v, dim=2, repeats=n_heads // v.shape[2])
    q_, k_, v_ = (t.transpose(1, 2) for t in (q, k.to(q.dtype), v.to(q.dtype)))
    window = attn.cfg.window_size if getattr(attn, "attn_type", "global") == "local" else None
    mask = _mask(q.shape[1], k.shape[1], offset, attention_mask, q.device, window)
    z = F.scaled_dot_product_attention(
        q_, k_, v_, attn_mask=mask, is_causal=mask is None, scale=1.0 / float(attn.attn_scale)
    )
    if mask is not None:  # a row with no key to read: zeros, as TransformerLens's NaN clean-up
        z = torch.where(mask.any(-1, keepdim=True), z, torch.zeros_like(z))
    return z.transpose(1, 2).to(v.dtype)


def _project(attn: Any, z: Tensor) -> Tensor:
    """The output projection of TransformerLens's attention (``use_attn_result`` off)."""
    w = attn.W_O.reshape(-1, attn.W_O.shape[-1]).T.contiguous().to(z.device)  # d_model (h d)
    z = z.to(w.dtype).reshape(z.shape[0], z.shape[1], -1)
    return F.linear(z, w, attn.b_O.to(z.device))


def fused_forward(
    attn: Any,
    query_input: Tensor,
    key_input: Tensor,
    value_input: Tensor,
    past_kv_cache_entry: Any = None,
    additive_attention_mask: Tensor | None = None,
    attention_mask: Tensor | None = None,
    position_bias: Tensor | None = None,
    *,
    state: FusedAttention,
    layer: int,
) -> Tensor:
    """The forward of one attention module under :func:`fused_attention`."""
    if _pattern_hooked(attn) or additive_attention_mask is not None or position_bias is not None:
        state.pattern_calls[layer] = state.pattern_calls.get(layer, 0) + 1
        return type(attn).forward(
            attn,
            query_input,
            key_input,
            value_input,
            past_kv_cache_entry=past_kv_cache_entry,
            additive_attention_mask=additive_attention_mask,
            attention_mask=attention_mask,
            position_bias=position_bias,
        )
    state.fused_calls[layer] = state.fused_calls.get(layer, 0) + 1
    q, k, v = attn.calculate_qkv_matrices(query_input, key_input, value_input)
    clip = attn.cfg.clip_qkv
    if clip is not None:
        q, k, v = (t.clamp(min=-clip, max=clip) for t in (q, k, v))
    offset = 0
    if past_kv_cache_entry is not None:
        offset = int(past_kv_cache_entry.past_keys.size(1))
        k, v = past_kv_cache_entry.append(k, v)
    if attn.cfg.positional_embedding_type == "rotary":
        q = attn.hook_rot_q(attn.apply_rotary(q, offset, attention_mask))
        k = attn.hook_rot_k(attn.apply_rotary(k, 0, attention_mask))
    z = attn.hook_z(_attend(attn, q, k, v, offset, attention_mask))
    return _project(attn, z)


@dataclass
class FusedAttention:
    """What a :func:`fused_attention` context did.

    Attributes:
        layers: The layers whose attention module was swapped (empty when none could be).
        reason: Why none was (an unsupported feature or backend), else None.
        fused_calls: Per layer, forward calls that ran fused.
        pattern_calls: Per layer, calls that ran TransformerLens's forward because a hook
            was on ``hook_attn_scores``/``hook_pattern`` (or an extra mask was given).
    """

    layers: list[int] = field(default_factory=list)
    reason: str | None = None
    fused_calls: dict[int, int] = field(default_factory=dict)
    pattern_calls: dict[int, int] = field(default_factory=dict)


def fused_unavailable(model: Model) -> str | None:
    """Why :func:`fused_attention` would leave ``model`` unchanged, or None."""
    from focuslens.model.kvcache import kv_cache_kind

    blocks = getattr(model, "blocks", ())
    if kv_cache_kind(model) != "transformer_lens" or not all(
        hasattr(b.attn, "calculate_qkv_matrices") for b in blocks
    ):
        return f"{type(model).__name__} is not a HookedTransformer"
    return fused_unsupported(model)


@contextmanager
def fused_attention(model: Model, *, strict: bool = False) -> Iterator[FusedAttention]:
    """Run ``model``'s attention with SDPA while the context is open (module docstring).

    Hooks on queries, keys, values and ``hook_z`` fire and take writes as usual; layers
    with a hook on ``hook_attn_scores``/``hook_pattern`` run TransformerLens's forward.
    Nested contexts are fine (the outer one keeps the modules); on exit, also after an
    exception, every attention module is exactly as before.

    Args:
        model: A ``HookedTransformer``; anything else is left unchanged.
        strict: Raise instead of leaving the model unchanged when it cannot run fused.

    Yields:
        A :class:`FusedAttention` record (which layers were swapped, how often each ran
        fused).

    Example:
        >>> import focuslens
        >>> model = focuslens.load_demo_model()
        >>> tokens = model.to_tokens("[DOC k1 k2 v3 v4 ] [Q k1 k2")
        >>> with fused_attention(model) as fused:
        ...     logits = model(tokens)
        >>> bool((logits - model(tokens)).abs().max() < 1e-4), len(fused.layers) == model.cfg.n_layers
        (True, True)
    """
    state = FusedAttention(reason=fused_unavailable(model))
    if state.reason is not None:
        if strict:
            raise ValueError(f"fused attention cannot run on this model: {state.reason}")
        yield state
        return
    swapped = []
    try:
        for layer, block in enumerate(model.blocks):
            attn = block.attn
            if "forward" in attn.__dict__:  # an outer context (or the user) swapped it
                continue
            attn.forward = partial(fused_forward, attn, state=state, layer=layer)
            swapped.append(attn)
            state.layers.append(layer)
        yield state
    finally:
        for attn in swapped:
            del attn.forward


__all__ = [
    "FusedAttention",
    "attention_features",
    "named_features",
    "fused_attention",
    "fused_unavailable",
    "fused_unsupported",
    "local_attention_layers",
]
