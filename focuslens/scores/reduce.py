"""Span masks and the in-hook reduction behind every contextual score.

The query rows of a prompt (:func:`query_rows`), its 0/1 key masks (relevant, sink,
other, each distractor: :func:`span_masks`), and :func:`span_mass`, which reduces an
attention pattern to the mass of those rows on those masks inside a hook.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from focuslens.prompts.spans import LabeledPrompt, TokenizedPrompt, tokenize_prompt
from focuslens.typing import QueryRows

# Rows of the span-mask tensor built per example: fixed kinds first, then distractors.
REL, SINK, OTHER, FIRST_DISTRACTOR = 0, 1, 2, 3


def query_rows(tp: TokenizedPrompt, query: QueryRows) -> list[int]:
    """Token positions of the query rows of one tokenised prompt."""
    if query == "last":
        return [tp.n_prompt - 1]
    if tp.n_response == 0:
        raise ValueError(
            f"prompt {tp.source.text[:60]!r} has no response tokens; query={query!r} needs a "
            "response (or use query='last')"
        )
    if query == "response":
        return list(range(tp.n_prompt, len(tp)))
    if query == "predict":
        return list(range(tp.n_prompt - 1, len(tp) - 1))
    raise ValueError(f"query must be 'response', 'predict' or 'last', got {query!r}")


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


def prepare(
    model: Any,
    prompts: Sequence[LabeledPrompt | TokenizedPrompt],
    *,
    query: QueryRows,
    sink: int,
    prepend_bos: bool | None = None,
    require_relevant: bool = True,
) -> list[TokenizedPrompt]:
    """Tokenise and validate prompts for scoring, with errors that name the prompt."""
    if query not in ("response", "predict", "last"):
        raise ValueError(f"query must be 'response', 'predict' or 'last', got {query!r}")
    if isinstance(sink, bool) or not isinstance(sink, int) or sink < 0:
        raise ValueError(f"sink must be a non-negative int, got {sink!r}")
    if isinstance(prompts, LabeledPrompt):
        prompts = [prompts]
    if len(prompts) == 0:
        raise ValueError("no prompts given")
    n_ctx = model.cfg.n_ctx
    out = []
    for idx, prompt in enumerate(prompts):
        if not isinstance(prompt, (LabeledPrompt, TokenizedPrompt)):
            raise TypeError(
                f"prompt {idx} is a {type(prompt).__name__}, expected a LabeledPrompt "
                "(or a TokenizedPrompt)"
            )
        try:
            if require_relevant and prompt.relevant is None:
                raise ValueError(
                    "it has no relevant span (relevant=None); contextual scores need one "
                    "(pass require_relevant=False to score its other spans only)"
                )
            if isinstance(prompt, TokenizedPrompt):
                tp = prompt  # exact token ids, e.g. a generated answer
                if query != "last" and tp.n_response == 0:
                    raise ValueError(f"query={query!r} needs response tokens; it has none")
            else:
                tp = tokenize_prompt(
                    model, prompt, prepend_bos=prepend_bos, require_response=query != "last"
                )
            if len(tp) > n_ctx:
                raise ValueError(
                    f"it has {len(tp)} tokens, more than the model's context n_ctx={n_ctx}"
                )
            query_rows(tp, query)
            span_masks(tp, sink, len(tp), len(tp.distractors))  # the sink must not overlap a span
        except ValueError as exc:
            raise ValueError(f"prompt {idx}: {exc}") from None
        out.append(tp)
    return out


def batch_inputs(batch: list[TokenizedPrompt], query: QueryRows, sink: int, pad_id: int):
    length = max(len(tp) for tp in batch)
    n_dis = max((len(tp.distractors) for tp in batch), default=0)
    tokens = torch.full((len(batch), length), pad_id, dtype=torch.long)
    rows_list = [query_rows(tp, query) for tp in batch]
    n_rows = max(len(r) for r in rows_list)
    rows = torch.zeros(len(batch), n_rows, dtype=torch.long)
    row_mask = torch.zeros(len(batch), n_rows)
    masks = torch.zeros(len(batch), FIRST_DISTRACTOR + n_dis, length)
    for b, tp in enumerate(batch):
        tokens[b, : len(tp)] = tp.tokens
        rows[b, : len(rows_list[b])] = torch.tensor(rows_list[b])
        row_mask[b, : len(rows_list[b])] = 1
        masks[b] = span_masks(tp, sink, length, n_dis)
        masks[b, :, len(tp) :] = 0
    return tokens, rows, row_mask, masks


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
    weights = row_mask.to(selected.device)
    return (mass * weights[:, None, :, None]).sum(2) / weights.sum(1)[:, None, None]


def reduce_masses(raw: torch.Tensor, tps: list[TokenizedPrompt]) -> dict[str, torch.Tensor]:
    """``[n_examples, n_layers, n_heads, n_masks]`` masses -> per-example kind tables."""
    n_dis = raw.shape[-1] - FIRST_DISTRACTOR
    dis = raw[..., FIRST_DISTRACTOR:]
    has_rel = torch.tensor([tp.relevant is not None for tp in tps])[:, None, None]
    return {
        "relevant": torch.where(has_rel, raw[..., REL], torch.nan),
        "distractors": dis.sum(-1) if n_dis else torch.zeros_like(raw[..., REL]),
        "distractor_max": dis.amax(-1) if n_dis else torch.zeros_like(raw[..., REL]),
        "sink": raw[..., SINK],
        "other": raw[..., OTHER],
    }


def reduce_hook(pattern: torch.Tensor, hook: Any, *, out: dict, layer: int, args: tuple) -> None:
    out[layer] = span_mass(pattern, *args).cpu()


__all__ = [
    "query_rows",
]
