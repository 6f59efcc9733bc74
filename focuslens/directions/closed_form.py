"""Focus directions in closed form: the gradient of the relevant-span mass at zero.

The learned method (:mod:`focuslens.directions.learn`) climbs the relevant-span mass of the
response rows with AdamW; its first step from ``d_q = 0`` follows the gradient, which has a
closed form (the learn module's docstring derives it). ``method="closed_form"`` takes that
gradient, from one pass over the prompts with hooks that sum it in place, scaled to a query's
norm: a fast approximation of the learned direction (cosine about 0.9 on the demo model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from focuslens.directions.inputs import batch_rows
from focuslens.model.hooks import (
    attention_scale,
    attn_hook,
    hooks,
    key_hook_name,
    n_kv_heads,
    query_hook_name,
)
from focuslens.prompts.batch import batches, pad_token_id
from focuslens.prompts.tokens import TokenizedPrompt
from focuslens.typing import Model, QueryRows


# ---------------------------------------------------------------------------- closed form
def closed_form_gradient(
    model: Model,
    tps: Sequence[TokenizedPrompt],
    layers: Sequence[int],
    *,
    query: QueryRows = "response",
    batch_size: int = 8,
) -> tuple[Tensor, Tensor]:
    """Gradient of the layer loss's mass with respect to ``d_q`` at zero, and the mean
    query norms.

    Returns:
        ``(grad [n_layers, n_heads, d_head], query_norm [n_layers, n_heads])``: per head,
        the mean over examples of the mean over response rows of
        ``(sum_{j in S} A_ij k_j - m_i sum_j A_ij k_j) / attn_scale``, divided by
        ``n_heads`` (the layer loss averages over heads), so it equals autograd's
        gradient of the mean relevant-span mass. Layers not requested are zero.
    """
    acc = _GradientSums(model, query)
    device = next(model.parameters()).device
    for _, prompts in batches(list(tps), batch_size, pad_token_id(model)):
        tokens = prompts.tokens
        acc.batch = batch_rows(prompts.prompts, query, tokens.shape[1])
        fwd = []
        for layer in layers:
            fwd += [
                (key_hook_name(model, layer), _bind(acc.on_k, layer)),
                (query_hook_name(model, layer), _bind(acc.on_q, layer)),
                (attn_hook(layer, "hook_pattern"), _bind(acc.on_pattern, layer)),
            ]
        with torch.no_grad(), hooks(model, fwd):
            model(tokens.to(device), stop_at_layer=max(layers) + 1, return_type=None)
    return acc.grad / len(tps), acc.qnorm / len(tps)


class _GradientSums:
    """Hook callbacks that sum the closed-form gradient and query norms over examples."""

    def __init__(self, model: Model, query: QueryRows) -> None:
        cfg = model.cfg
        self.model = model
        self.grad = torch.zeros(cfg.n_layers, cfg.n_heads, cfg.d_head)
        self.qnorm = torch.zeros(cfg.n_layers, cfg.n_heads)
        self.group = cfg.n_heads // n_kv_heads(model)
        self.batch: tuple[Tensor, Tensor, Tensor] | None = None
        self.keys: dict[int, Tensor] = {}
        self.norms: dict[int, Tensor] = {}

    def on_k(self, k: Tensor, hook: Any, layer: int) -> None:
        self.keys[layer] = k.repeat_interleave(self.group, dim=2).float()  # b k h d

    def on_q(self, q: Tensor, hook: Any, layer: int) -> None:
        rows = self.batch[0].to(q.device)  # type: ignore[index]
        idx = rows[:, :, None, None].expand(-1, -1, q.shape[2], q.shape[3])
        self.norms[layer] = q.gather(1, idx).float().norm(dim=-1)  # b r h

    def on_pattern(self, pattern: Tensor, hook: Any, layer: int) -> None:
        rows, row_mask, masks = (t.to(pattern.device) for t in self.batch)  # type: ignore[union-attr]
        b, h, _, k = pattern.shape
        a = pattern.gather(2, rows[:, None, :, None].expand(b, h, rows.shape[1], k)).float()
        rel = masks[:, 0]  # b k
        keys = self.keys.pop(layer)
        m = torch.einsum("bhrk,bk->bhr", a, rel)
        k_s = torch.einsum("bhrk,bk,bkhd->bhrd", a, rel, keys)
        k_all = torch.einsum("bhrk,bkhd->bhrd", a, keys)
        g = (k_s - m[..., None] * k_all) / attention_scale(self.model, layer)
        w = row_mask
        per_ex = (g * w[:, None, :, None]).sum(2) / w.sum(1)[:, None, None]  # b h d
        self.grad[layer] += per_ex.sum(0).cpu() / h
        qn = (self.norms.pop(layer) * w[:, :, None]).sum(1) / w.sum(1)[:, None]  # b h
        self.qnorm[layer] += qn.sum(0).cpu()


def _bind(fn: Callable, layer: int) -> Callable:
    return lambda act, hook: fn(act, hook, layer)


def closed_form_method(
    model: Model, tps: list[TokenizedPrompt], layers: list[int], settings: dict[str, Any]
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    grad, qnorm = closed_form_gradient(
        model, tps, layers, query=settings["query"], batch_size=settings["batch_size"]
    )
    unit = grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-30)
    d_q = unit * qnorm[..., None]
    return d_q, torch.zeros_like(d_q), {"gradient_norm": grad.norm(dim=-1).tolist()}


__all__ = [
    "closed_form_gradient",
]
