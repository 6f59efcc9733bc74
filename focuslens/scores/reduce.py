"""Span masks and the in-hook reduction behind every contextual score.

A prompt's 0/1 key masks (relevant, sink, other, each distractor: :func:`span_masks`;
then one per named span, :func:`named_masks`, which may overlap anything), and
:func:`span_mass`, which reduces an attention pattern to the mass of the query rows
(:func:`focuslens.prompts.batch.query_rows`) on those masks inside a hook.
"""

from __future__ import annotations

from typing import Any

import torch

from focuslens.prompts.batch import PromptBatch, check_query, tokenized_prompts
from focuslens.prompts.tokens import TokenizedPrompt
from focuslens.typing import Model, QueryRows

# Rows of the span-mask tensor built per example: fixed kinds first, then distractors.
REL, SINK, OTHER, FIRST_DISTRACTOR = 0, 1, 2, 3


def span_masks(tp: TokenizedPrompt, n_sink: int, length: int, n_distractors: int) -> torch.Tensor:
    """``[3 + n_distractors, length]`` 0/1 key masks: relevant, sink, other, distractors."""
    masks = torch.zeros(FIRST_DISTRACTOR + n_distractors, length)
    if tp.relevant is not None:
        masks[REL, tp.relevant[0] : tp.relevant[1]] = 1
    masks[SINK, :n_sink] = 1
    for i, (s, e) in enumerate(tp.distractors):
        masks[FIRST_DISTRACTOR + i, s:e] = 1
    if (masks.sum(0) > 1).any():
        labelled = [("relevant", tp.relevant)] + [
            (f"distractor {i}", s) for i, s in enumerate(tp.distractors)
        ]
        clash = [n for n, s in labelled if s is not None and s[0] < n_sink]
        raise ValueError(
            f"the sink positions [0, {n_sink}) overlap the {', '.join(clash)} span(s) of prompt "
            f"{tp.source.text[:60]!r}; pass a smaller sink (sink=0 disables it) or prepend BOS"
        )
    masks[OTHER] = 1 - masks.sum(0)
    return masks


def span_names(tps: list[TokenizedPrompt]) -> list[str]:
    """The named spans of the prompts, in order of first appearance."""
    return list(dict.fromkeys(name for tp in tps for name in tp.spans))


def named_masks(tp: TokenizedPrompt, names: list[str], length: int) -> torch.Tensor:
    """``[len(names), length]`` 0/1 key masks of the named spans (0 for a name the prompt
    lacks; several spans of one name are one mask, each token counted once)."""
    masks = torch.zeros(len(names), length)
    for i, name in enumerate(names):
        for s, e in tp.spans.get(name, ()):
            masks[i, s:e] = 1
    return masks


def prepare(
    model: Model,
    prompts: Any,
    *,
    query: QueryRows,
    sink: int,
    prepend_bos: bool | None = None,
    require_relevant: bool = True,
) -> list[TokenizedPrompt]:
    """Tokenise and check prompts for scoring (:func:`~focuslens.prompts.batch.tokenized_prompts`),
    and check that the sink positions overlap no labelled span."""
    check_query(query)
    if isinstance(sink, bool) or not isinstance(sink, int) or sink < 0:
        raise ValueError(f"sink must be a non-negative int, got {sink!r}")
    reason = (
        "contextual scores need one (pass require_relevant=False to score its other spans only)"
    )
    tps = tokenized_prompts(
        model,
        prompts,
        query=query,
        require_relevant=reason if require_relevant else None,
        prepend_bos=prepend_bos,
    )
    for idx, tp in enumerate(tps):
        try:
            span_masks(tp, sink, len(tp), len(tp.distractors))
        except ValueError as exc:
            raise ValueError(f"prompt {idx}: {exc}") from None
    return tps


def span_mask_batch(
    batch: PromptBatch, sink: int, n_distractors: int | None = None, names: list[str] = ()
) -> torch.Tensor:
    """``[batch, 3 + n_distractors + len(names), pos]`` key masks of a padded batch (0 on
    padding): the partition (:func:`span_masks`, ``n_distractors`` rows of distractors,
    default the batch's most), then the named spans (:func:`named_masks`)."""
    n_dis = n_distractors
    if n_dis is None:
        n_dis = max((len(tp.distractors) for tp in batch.prompts), default=0)
    masks = torch.zeros(batch.size, FIRST_DISTRACTOR + n_dis + len(names), batch.length)
    for b, tp in enumerate(batch.prompts):
        masks[b, : FIRST_DISTRACTOR + n_dis] = span_masks(tp, sink, batch.length, n_dis)
        masks[b, FIRST_DISTRACTOR + n_dis :] = named_masks(tp, list(names), batch.length)
    return masks * batch.real[:, None, :]


def span_mass(
    pattern: torch.Tensor, rows: torch.Tensor, row_mask: torch.Tensor, masks: torch.Tensor
) -> torch.Tensor:
    """Mean over query rows of the attention mass on each key mask.

    Args:
        pattern: ``[batch, head_index, query_pos, key_pos]`` attention probabilities.
        rows: ``[batch, n_rows]`` query positions to read (padded rows are masked).
        row_mask: ``[batch, n_rows]`` 1 for real rows.
        masks: ``[batch, n_masks, key_pos]`` 0/1 key masks.

    Returns:
        ``[batch, head_index, n_masks]`` float32.
    """
    b, h, _, k = pattern.shape
    index = rows[:, None, :, None].to(pattern.device).expand(b, h, rows.shape[1], k)
    selected = pattern.gather(2, index).float()
    mass = torch.einsum("bhrk,bsk->bhrs", selected, masks.to(selected.device))
    weights = row_mask.to(selected.device, selected.dtype)
    return (mass * weights[:, None, :, None]).sum(2) / weights.sum(1)[:, None, None]


def reduce_masses(
    raw: torch.Tensor, tps: list[TokenizedPrompt], names: list[str] = ()
) -> dict[str, torch.Tensor]:
    """``[n_examples, n_layers, n_heads, n_masks]`` masses -> per-example kind tables.

    The last ``len(names)`` masks are the named spans (NaN for a prompt without the name).
    """
    named = {}
    if names:
        for i, name in enumerate(names):
            has = torch.tensor([name in tp.spans for tp in tps])[:, None, None]
            named[name] = torch.where(has, raw[..., raw.shape[-1] - len(names) + i], torch.nan)
        raw = raw[..., : raw.shape[-1] - len(names)]
    n_dis = raw.shape[-1] - FIRST_DISTRACTOR
    dis = raw[..., FIRST_DISTRACTOR:]
    has_rel = torch.tensor([tp.relevant is not None for tp in tps])[:, None, None]
    return {
        "relevant": torch.where(has_rel, raw[..., REL], torch.nan),
        "distractors": dis.sum(-1) if n_dis else torch.zeros_like(raw[..., REL]),
        "distractor_max": dis.amax(-1) if n_dis else torch.zeros_like(raw[..., REL]),
        "sink": raw[..., SINK],
        "other": raw[..., OTHER],
        **named,
    }


def reduce_hook(pattern: torch.Tensor, hook: Any, *, out: dict, layer: int, args: tuple) -> None:
    out[layer] = span_mass(pattern, *args).cpu()


__all__: list[str] = []  # building blocks of the scores; the API is contextual_scores
