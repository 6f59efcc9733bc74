"""One KV cache interface over both backends, chosen by what the model can do.

A ``HookedTransformer`` takes TransformerLens's own cache (``past_kv_cache=``, a
``TransformerLensKeyValueCache`` of per-layer entries holding unrotated keys); a
``TransformerBridge`` runs the wrapped Hugging Face model, whose cache
(``past_key_values=``, a ``DynamicCache`` holding rotated keys) comes back from each
call (``return_type="logits_and_cache"``). :func:`new_cache` makes the right one,
:func:`cached_forward` feeds new tokens through it, :func:`cache_length` says how many
positions it holds, and :func:`all_keys` reads a layer's keys from the entry a forward
pre-hook saw (:class:`focuslens.model.hooks.PositionTracker`).

Which kind a model takes is read from its forward signature (``past_kv_cache``: the
TransformerLens cache) or from its wrapping a Hugging Face model (``original_model``),
never from its class, so focuslens imports no backend class to decide.

Recent ``transformers`` releases renamed the cache argument of the attention modules
from ``past_key_values`` to ``cache``, while the bridge's attention reads only
``past_key_values``: without help every cached step would attend to itself alone. While
a bridge runs through :func:`cached_forward`, a forward pre-hook on each attention
module passes the cache under both names. The backend self-test
(:func:`focuslens.model.loading.check_backend`) checks that a cached continuation equals
one pass, so a backend where this breaks fails loudly instead of generating from a
forgotten prompt.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from focuslens.model.hooks import pre_hooks
from focuslens.typing import Model

CacheKind = Literal["transformer_lens", "hugging_face"]


def kv_cache_kind(model: Any) -> CacheKind | None:
    """Which KV cache ``model`` takes: ``"transformer_lens"`` (``past_kv_cache=``),
    ``"hugging_face"`` (a bridge around a Hugging Face model), or None (neither)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (AttributeError, TypeError, ValueError):
        return None
    if "past_kv_cache" in params:
        return "transformer_lens"
    if getattr(model, "original_model", None) is not None:
        return "hugging_face"
    return None


def require_kv_cache(model: Any, what: str) -> CacheKind:
    """The model's cache kind, or a ValueError saying that ``what`` needs one."""
    kind = kv_cache_kind(model)
    if kind is None:
        raise ValueError(
            f"{what} needs a KV cache: a HookedTransformer (TransformerLens's cache) or a "
            f"TransformerBridge around a Hugging Face model; got {type(model).__name__}"
        )
    return kind


@dataclass
class HFCache:
    """A bridge's Hugging Face cache: ``None`` until the first cached call fills it."""

    cache: Any = None


def new_cache(model: Model) -> Any:
    """An empty cache for one sequence, of the kind the model takes."""
    if require_kv_cache(model, "a cached forward pass") == "transformer_lens":
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        return TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
    return HFCache()


def cache_length(cache: Any) -> int:
    """Positions held by a cache made by :func:`new_cache`."""
    if isinstance(cache, HFCache):
        return 0 if cache.cache is None else int(cache.cache.get_seq_length())
    return int(cache[0].past_keys.shape[1])


def _pass_cache(layer: int, module: Any, args: tuple, kwargs: dict) -> Any:
    if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
        return args, {**kwargs, "past_key_values": kwargs["cache"]}
    return None


@contextmanager
def bridge_cache_arguments(model: Model) -> Iterator[None]:
    """Pass the Hugging Face cache to each attention module under both of its names."""
    with pre_hooks(model, _pass_cache):
        yield


def cached_forward(
    model: Model, tokens: Tensor, cache: Any, *, logits: bool = True
) -> Tensor | None:
    """Feed ``tokens`` (``[1, n_new]``) after the positions in ``cache``, extending it.

    Returns the ``[1, n_new, d_vocab]`` logits, or None with ``logits=False`` (a
    HookedTransformer then skips the unembedding).
    """
    ones = torch.ones_like(tokens)
    if not isinstance(cache, HFCache):
        # An explicit all-ones mask: without it TransformerLens masks tokens equal to
        # the pad token (often EOS) when a cache is used.
        return model(
            tokens,
            past_kv_cache=cache,
            attention_mask=ones,
            return_type="logits" if logits else None,
        )
    with bridge_cache_arguments(model):
        out, cache.cache = model(
            tokens,
            past_key_values=cache.cache,
            use_cache=True,
            attention_mask=torch.ones(1, cache_length(cache) + tokens.shape[1], dtype=ones.dtype),
            return_type="logits_and_cache",
        )
    return out if logits else None


def all_keys(entry: Any, layer: int) -> Tensor:
    """``[batch, pos, kv_head, d_head]`` keys of every position so far, read from the
    entry after the attention module extended it (TransformerLens: unrotated keys;
    Hugging Face: rotated keys)."""
    if hasattr(entry, "past_keys"):
        return entry.past_keys
    layers = getattr(entry, "layers", None)
    keys = layers[layer].keys if layers is not None else entry.key_cache[layer]
    return keys.transpose(1, 2)


__all__ = [
    "CacheKind",
    "HFCache",
    "all_keys",
    "cache_length",
    "cached_forward",
    "kv_cache_kind",
    "new_cache",
    "require_kv_cache",
]
