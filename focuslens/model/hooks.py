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

Hook names are built in one place (:func:`attn_hook`); hooks on hook points go through
:func:`hooks` (TransformerLens's ``model.hooks``, with a check that each point exists), and
hooks on a module's inputs through :func:`pre_hooks`. Every hook lives inside a context
manager that removes it in ``finally``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Any, Literal

import torch

from focuslens.typing import HasConfig, Model

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


def _cache_argument(kwargs: dict) -> Any:
    """The KV cache an attention module is called with: TransformerLens's per-layer entry,
    or the Hugging Face cache a bridge passes (``past_key_values``, or ``cache`` in recent
    ``transformers``); None without a cache."""
    for name in ("past_kv_cache_entry", "past_key_values", "cache"):
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def entry_length(entry: Any, layer: int) -> int:
    """Positions a layer's cache entry held when a pre-hook saw it (0 for None)."""
    if entry is None:
        return 0
    if hasattr(entry, "past_keys"):
        return int(entry.past_keys.shape[1])
    return int(entry.get_seq_length(layer))


class PositionTracker:
    """Records, per layer, the KV-cache entry and how many positions it held before this pass.

    Use as a context manager (:func:`pre_hooks` on every attention module); read
    :meth:`offset` or :meth:`entry` from hooks of the same layer. The offset is taken
    before the attention module appends the new keys to the cache.
    """

    def __init__(self, model: Model) -> None:
        self.model = model
        self._offsets: dict[int, int] = {}
        self._entries: dict[int, Any] = {}
        self._stack: ExitStack | None = None

    def _record(self, layer: int, module: Any, args: tuple, kwargs: dict) -> None:
        entry = _cache_argument(kwargs)
        self._entries[layer] = entry
        self._offsets[layer] = entry_length(entry, layer)

    def offset(self, layer: int) -> int:
        return self._offsets.get(layer, 0)

    def entry(self, layer: int) -> Any:
        """The layer's KV-cache entry in the current pass (``None`` without a cache)."""
        return self._entries.get(layer)

    def __enter__(self) -> PositionTracker:
        self._stack = ExitStack()
        self._stack.enter_context(pre_hooks(self.model, self._record))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None


@contextmanager
def hooks(model: Model, fwd_hooks: list[tuple[str, Any]]) -> Iterator[Any]:
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


PreHook = Callable[[int, Any, tuple, dict], Any]
"""``hook(layer, module, args, kwargs)``: a forward pre-hook told which layer it is on."""


def _on_layer(hook: PreHook, layer: int, module: Any, args: tuple, kwargs: dict) -> Any:
    return hook(layer, module, args, kwargs)


@contextmanager
def pre_hooks(
    model: Model,
    hook: PreHook,
    *,
    layers: Iterable[int] | None = None,
    on: Literal["attn", "block"] = "attn",
) -> Iterator[None]:
    """Forward pre-hooks (with keyword arguments) on each layer's attention module or block.

    The one way focuslens hooks a module's inputs: ``hook(layer, module, args, kwargs)``
    sees what the module is called with (the KV-cache entry, the attention inputs); what
    it returns replaces ``(args, kwargs)`` as in PyTorch. Removed in ``finally``.
    """
    handles = []
    try:
        for layer in range(model.cfg.n_layers) if layers is None else layers:
            block = model.blocks[layer]
            module = block.attn if on == "attn" else block
            handles.append(
                module.register_forward_pre_hook(partial(_on_layer, hook, layer), with_kwargs=True)
            )
        yield
    finally:
        for handle in handles:
            handle.remove()


ATTENTION_HOOKS = (
    "hook_q",
    "hook_k",
    "hook_v",
    "hook_rot_q",
    "hook_rot_k",
    "hook_attn_scores",
    "hook_pattern",
    "hook_z",
)
"""The attention hook points focuslens reads or writes, under both backends."""


def attn_hook(layer: int, point: str) -> str:
    """The name of an attention hook point: ``attn_hook(3, "hook_pattern")`` is
    ``"blocks.3.attn.hook_pattern"``. The one place focuslens builds hook names."""
    if point not in ATTENTION_HOOKS:
        raise ValueError(f"unknown attention hook point {point!r}; one of {ATTENTION_HOOKS}")
    return f"blocks.{int(layer)}.attn.{point}"


def layer_hooks(
    layers: Iterable[int], point: str, hook: Callable[..., Any]
) -> list[tuple[str, Any]]:
    """``[(attn_hook(l, point), hook bound to layer=l), ...]``: one hook per layer that is
    told its layer (``hook(act, hook=..., layer=l)``), never parsed back from the name."""
    return [(attn_hook(layer, point), partial(hook, layer=layer)) for layer in layers]


def active_hook_points(model: Model, points: tuple[str, ...]) -> list[str]:
    """Hook points whose name ends with one of ``points`` that have hooks registered."""
    return [
        name
        for name, point in model.hook_dict.items()
        if name.endswith(points) and len(getattr(point, "fwd_hooks", ()))
    ]


def rotary(model: HasConfig) -> bool:
    """Whether the model uses rotary position embeddings (steer after rotation)."""
    return getattr(model.cfg, "positional_embedding_type", None) == "rotary"


def query_hook_name(model: HasConfig, layer: int) -> str:
    """``hook_rot_q`` for rotary models, ``hook_q`` otherwise (METHOD.md section 4)."""
    return attn_hook(layer, "hook_rot_q" if rotary(model) else "hook_q")


def key_hook_name(model: HasConfig, layer: int) -> str:
    """``hook_rot_k`` for rotary models, ``hook_k`` otherwise."""
    return attn_hook(layer, "hook_rot_k" if rotary(model) else "hook_k")


def n_kv_heads(model: HasConfig) -> int:
    """Number of key/value heads (``n_heads`` without grouped-query attention)."""
    return int(getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads)


def kv_head_of(model: HasConfig, head: int) -> int:
    """The key/value head that query head ``head`` reads under grouped-query attention."""
    return head // (model.cfg.n_heads // n_kv_heads(model))


def attention_scale(model: Model, layer: int) -> float:
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
    "ATTENTION_HOOKS",
    "active_hook_points",
    "attn_hook",
    "layer_hooks",
    "pre_hooks",
    "POSITIONS",
    "absolute_query_positions",
    "attention_scale",
    "entry_length",
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
