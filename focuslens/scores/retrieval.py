"""Retrieval-head scores (Wu et al. 2024), to compare with contextual scores.

A *retrieval head* copies: while the model writes a token that also occurs in the
relevant document, the head's top-1 attended key is that token in the document. For one
example with a teacher-forced response ``y_1 .. y_T``, the row ``p_t`` that predicts
``y_t`` (the position just before it) and attention pattern ``A[l, h, p_t, :]``::

    hit(l, h, t) = [ j* in S  and  x_{j*} = y_t ],   j* = argmax_j A[l, h, p_t, j]

    score(l, h) = sum over t of hit(l, h, t)  /  #{t : y_t occurs in S}

with ``S`` the relevant span. Wu et al. divide by the needle's length, with a response
that repeats the needle; here the denominator is the number of response tokens that
*could* be copied from the relevant span (tokens absent from it, such as an end
marker, can never score), so the score lies in [0, 1]. Examples with no copyable
response token have no score (NaN) and are skipped by the mean.

How it differs from the contextual score (:func:`focuslens.contextual_scores`): that
one measures *how much* attention the response rows give to the whole relevant span;
this one counts *whether* the single most attended key is the very token being written.
A head can read a document without copying from it, and a copying head can spread little
mass. Compare the two tables with :func:`focuslens.heads.rank_correlation`.

Memory: like the contextual scores, the reduction happens inside each layer's
``hook_pattern`` hook (an argmax over keys of the response rows), never a full cache.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

import torch

from focuslens.heads import HeadScores
from focuslens.model import hooks as hooking
from focuslens.model.hooks import layer_hooks
from focuslens.prompts.batch import PromptBatch, batches, pad_token_id
from focuslens.prompts.spans import LabeledPrompt
from focuslens.scores.reduce import prepare
from focuslens.typing import Model


def _copyable(batch: PromptBatch, targets: torch.Tensor) -> torch.Tensor:
    """``[batch, n_rows]`` True where the answer token also occurs in the relevant span."""
    out = torch.zeros(targets.shape, dtype=torch.bool)
    for b, tp in enumerate(batch.prompts):
        s, e = tp.relevant
        in_span = set(tp.tokens[s:e].tolist())
        n = tp.n_response
        out[b, :n] = torch.tensor([t in in_span for t in targets[b, :n].tolist()])
    return out


def _count_hits(
    pattern: torch.Tensor,
    hook: Any,
    *,
    out: dict,
    layer: int,
    tokens: torch.Tensor,
    rows: torch.Tensor,
    targets: torch.Tensor,
    span: torch.Tensor,
) -> None:
    """Per head, the number of response rows whose top-1 key is the token being written."""
    device = pattern.device
    b, h, _, k = pattern.shape
    index = rows.to(device)[:, None, :, None].expand(b, h, rows.shape[1], k)
    top = pattern.gather(2, index).argmax(-1)  # [batch, head, n_rows]
    flat = top.reshape(b, -1)
    in_span = span.to(device).gather(1, flat).reshape(top.shape)
    copied = tokens.to(device).gather(1, flat).reshape(top.shape)
    hit = in_span & (copied == targets.to(device)[:, None, :])  # padded targets are -1
    out[layer] = hit.sum(-1).cpu()


def retrieval_scores(
    model: Model,
    prompts: Iterable[LabeledPrompt],
    *,
    batch_size: int = 8,
    prepend_bos: bool | None = None,
    progress: bool = False,
) -> HeadScores:
    """Retrieval-head score of every head (see the module docstring).

    Args:
        model: A ``HookedTransformer``.
        prompts: Labelled prompts, each with a relevant span and a ``response``
            (the gold answer, or the model's own generation as in Wu et al.).
        batch_size: Prompts per forward pass (right padded; results do not depend on it).
        prepend_bos: Override the model's ``default_prepend_bos``.
        progress: Show a progress bar over batches.

    Returns:
        :class:`~focuslens.heads.HeadScores` named ``"retrieval"``: ``values``
        ``[n_layers, n_heads]`` (mean over examples with a copyable token) and
        ``per_example``; ``meta["n_copyable"]`` holds each example's denominator.

    Example:
        >>> import focuslens
        >>> model = focuslens.load_demo_model()
        >>> prompts = focuslens.tasks.synthetic_retrieval(8, n_documents=8, seed=0)
        >>> retrieval = retrieval_scores(model, prompts)
        >>> tuple(retrieval.values.shape) == (model.cfg.n_layers, model.cfg.n_heads)
        True
        >>> bool(((retrieval.values >= 0) & (retrieval.values <= 1)).all())
        True
    """
    tps = prepare(model, prompts, query="predict", sink=0, prepend_bos=prepend_bos)
    n_layers = model.cfg.n_layers
    device = next(model.parameters()).device
    results, n_copyable = [], []
    chunks = batches(tps, batch_size, pad_token_id(model))
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(
            chunks, desc="retrieval scores", unit="batch", total=-(-len(tps) // batch_size)
        )
    for _, batch in chunks:
        tokens, (rows, _) = batch.tokens, batch.rows("predict")
        targets, span = batch.targets(fill=-1), batch.relevant_mask()
        copyable = _copyable(batch, targets)
        per_layer: dict[int, torch.Tensor] = {}
        count = partial(
            _count_hits,
            out=per_layer,
            tokens=tokens,
            rows=rows,
            targets=torch.where(copyable, targets, -1),
            span=span,
        )
        fwd = layer_hooks(range(n_layers), "hook_pattern", count)
        with torch.no_grad(), hooking.hooks(model, fwd):
            model(tokens.to(device), return_type=None)
        results.append(torch.stack([per_layer[l] for l in range(n_layers)], dim=1))
        n_copyable.append(copyable.sum(1))
    hits = torch.cat(results).float()
    denom = torch.cat(n_copyable).float()
    per_example = hits / denom[:, None, None]
    per_example[denom == 0] = float("nan")
    values = torch.nanmean(per_example, dim=0)
    meta = {
        "model": getattr(model.cfg, "model_name", None),
        "n_examples": len(tps),
        "n_copyable": denom.long().tolist(),
    }
    return HeadScores(values=values, per_example=per_example, name="retrieval", meta=meta)


__all__ = [
    "retrieval_scores",
]
