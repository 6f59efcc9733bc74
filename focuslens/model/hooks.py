"""Shared plumbing for hooks that act on chosen heads at chosen query positions.

Interventions (split-softmax, PASTA, ablation) and steering act on some heads and on
some query positions: ``"all"`` (as in the paper), ``"prompt"`` (positions before the
response) or ``"generated"`` (the response, teacher-forced or generated). During
generation with TransformerLens's KV cache a forward pass sees only the new positions,
so the absolute position of a query row is ``offset + row`` where ``offset`` is the
number of cached positions:

* in ``hook_attn_scores`` / ``hook_pattern`` hooks, ``offset = key_pos - query_pos``
  (:func:`absolute_query_positions`);
* in ``hook_q`` / ``hook_rot_q`` hooks the key length is not visible, so
  :class:`PositionTracker` records each layer's cache length just before the
  attention module runs.

Every hook lives inside a context manager that removes it in ``finally``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch

Positions = Literal["all", "prompt", "generated"]
POSITIONS = ("all", "prompt", "generated")


def check_positions(positions: str) -> None:
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")


def absolute_query_positions(n_query: int, n_key: int, device: Any = None) -> torch.Tensor:
    """Absolute positions of the query rows of an attention-score tensor: ``[n_query]``."""
    return torch.arange(n_key - n_query, n_key, device=device)


def query_row_mask(
    positions: Positions, absolute: torch.Tensor, n_prompt: torch.Tensor | int | None
) -> torch.Tensor:
    """Which query rows an intervention acts on: ``[batch, n_query]`` bool.

    Args:
        positions: ``"all"``, ``"prompt"`` or ``"generated"``.
        absolute: ``[n_query]`` absolute positions of the rows.
        n_prompt: ``[batch]`` (or one int) prompt lengths; positions ``>= n_prompt`` are
            generated. Needed unless ``positions == "all"``.
    """
    check_positions(positions)
    if positions == "all":
        return torch.ones(1, absolute.shape[0], dtype=torch.bool, device=absolute.device)
    if n_prompt is None:
        raise ValueError(f"positions={positions!r} needs the prompt length of each example")
    n = torch.as_tensor(n_prompt, device=absolute.device).reshape(-1, 1)
    generated = absolute[None, :] >= n
    return generated if positions == "generated" else ~generated


class PositionTracker:
    """Records, per layer, how many positions the KV cache held before this forward pass.

    Use as a context manager; read :meth:`offset` from hooks of the same layer.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self._offsets: dict[int, int] = {}
        self._handles: list[Any] = []

    def _pre_hook(self, module: Any, args: tuple, kwargs: dict, layer: int) -> None:
        entry = kwargs.get("past_kv_cache_entry")
        self._offsets[layer] = 0 if entry is None else int(entry.past_keys.shape[1])

    def offset(self, layer: int) -> int:
        return self._offsets.get(layer, 0)

    def __enter__(self) -> PositionTracker:
        for layer, block in enumerate(self.model.blocks):
            handle = block.attn.register_forward_pre_hook(
                lambda m, a, k, layer=layer: self._pre_hook(m, a, k, layer), with_kwargs=True
            )
            self._handles.append(handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@contextmanager
def hooks(model: Any, fwd_hooks: list[tuple[str, Any]]) -> Iterator[Any]:
    """``model.hooks(...)`` with a check that every hook point exists, naming the missing one."""
    names = set(model.hook_dict)
    missing = [name for name, _ in fwd_hooks if isinstance(name, str) and name not in names]
    if missing:
        raise ValueError(
            f"the model has no hook point {missing[0]!r} (backend {type(model).__name__}); "
            "focuslens needs TransformerLens's attention hook names"
        )
    with model.hooks(fwd_hooks=fwd_hooks) as m:
        yield m


def rotary(model: Any) -> bool:
    """Whether the model uses rotary position embeddings (steer after rotation)."""
    return getattr(model.cfg, "positional_embedding_type", None) == "rotary"


def query_hook_name(model: Any, layer: int) -> str:
    """``hook_rot_q`` for rotary models, ``hook_q`` otherwise (METHOD.md section 4)."""
    return f"blocks.{layer}.attn.hook_rot_q" if rotary(model) else f"blocks.{layer}.attn.hook_q"


def key_hook_name(model: Any, layer: int) -> str:
    """``hook_rot_k`` for rotary models, ``hook_k`` otherwise."""
    return f"blocks.{layer}.attn.hook_rot_k" if rotary(model) else f"blocks.{layer}.attn.hook_k"


def n_kv_heads(model: Any) -> int:
    """Number of key/value heads (``n_heads`` without grouped-query attention)."""
    return int(getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads)


def kv_head_of(model: Any, head: int) -> int:
    """The key/value head that query head ``head`` reads under grouped-query attention."""
    return head // (model.cfg.n_heads // n_kv_heads(model))


def attention_scale(model: Any, layer: int) -> float:
    """What layer ``layer`` divides ``q . k`` by before the softmax.

    ``attn_scale`` on a ``HookedTransformer``; on a ``TransformerBridge`` the wrapped
    Hugging Face module's ``scaling`` (a multiplier, inverted here).
    """
    attn = model.blocks[layer].attn
    scale = getattr(attn, "attn_scale", None)
    if scale is not None:
        return float(scale)
    hf_attn = getattr(attn, "original_component", None)
    scaling = getattr(hf_attn, "scaling", None)
    if scaling:
        return 1.0 / float(scaling)
    raise ValueError(
        f"cannot tell the attention scale of layer {layer} ({type(attn).__name__} has neither "
        "attn_scale nor a wrapped module with scaling)"
    )


__all__ = [
    "POSITIONS",
    "absolute_query_positions",
    "attention_scale",
    "check_positions",
    "hooks",
    "key_hook_name",
    "kv_head_of",
    "n_kv_heads",
    "Positions",
    "PositionTracker",
    "query_hook_name",
    "query_row_mask",
    "rotary",
]
