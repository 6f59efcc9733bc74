"""Put another run's head outputs into a forward pass: the building block of activation
patching and resample ablation.

:func:`record_z` keeps the head outputs (``hook_z``) of chosen rows of a run;
:func:`patching` is a context manager whose hooks write them, for chosen heads, into the
same rows of later forward passes (each example's rows may sit at other positions than
in the recorded run: the rows are paired in order). Rows not patched keep the values the
pass computes, so a patch at an early layer still changes later layers as it should.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from focuslens.model import hooks as hooking
from focuslens.model.hooks import layer_hooks
from focuslens.typing import Model


def record_z(
    model: Model,
    tokens: Int[Tensor, "batch pos"],
    rows: Int[Tensor, "batch n_rows"],
    layers: Iterable[int],
) -> dict[int, Float[Tensor, "batch n_rows head_index d_head"]]:
    """Each layer's ``hook_z`` at ``rows`` (per example) in a clean forward of ``tokens``."""
    out: dict[int, Tensor] = {}
    index = rows.to(next(model.parameters()).device)

    def keep(z: Tensor, hook: Any, *, layer: int) -> None:
        gather = index[:, :, None, None].expand(-1, -1, *z.shape[2:])
        out[layer] = z.gather(1, gather).detach()

    device = next(model.parameters()).device
    with torch.no_grad(), hooking.hooks(model, layer_hooks(sorted(set(layers)), "hook_z", keep)):
        model(tokens.to(device), return_type=None)
    return out


@contextmanager
def patching(
    model: Model,
    heads: Iterable[tuple[int, int]],
    source: dict[int, Float[Tensor, "batch n_rows head_index d_head"]],
    rows: Int[Tensor, "batch n_rows"],
    row_mask: Bool[Tensor, "batch n_rows"],
) -> Iterator[Model]:
    """Within the context, ``hook_z`` of each head in ``heads`` at row ``rows[b, r]`` of
    example ``b`` is ``source[layer][b, r, head]``, wherever ``row_mask[b, r]``."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    fwd = [
        (
            hooking.attn_hook(layer, "hook_z"),
            partial(
                _write,
                heads=torch.tensor(hs),
                source=source[layer],
                rows=rows,
                row_mask=row_mask,
            ),
        )
        for layer, hs in by_layer.items()
    ]
    with hooking.hooks(model, fwd):
        yield model


def _write(
    z: Tensor, hook: Any, *, heads: Tensor, source: Tensor, rows: Tensor, row_mask: Tensor
) -> Tensor:
    device = z.device
    heads = heads.to(device)
    if source.shape[0] != z.shape[0]:
        raise ValueError(
            f"patched values of {source.shape[0]} example(s) for a forward pass of batch "
            f"size {z.shape[0]}"
        )
    mask = row_mask.to(device).bool()
    b = torch.arange(z.shape[0], device=device)[:, None].expand_as(mask)[mask]
    p = rows.to(device)[mask]
    sub = z.index_select(2, heads).clone()
    sub[b, p] = source.to(device, z.dtype).index_select(2, heads)[mask]
    return z.index_copy(2, heads, sub)


__all__ = ["patching", "record_z"]
