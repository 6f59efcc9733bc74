"""Contextual scores: how much attention each head gives to the relevant document, and to
every other labelled part of the prompt.

For one example with attention pattern ``A[l, h, i, j]`` (query ``i``, key ``j``)::

    score(l, h) = mean over query rows i in R of ( sum over keys j in S of A[l, h, i, j] )

with ``S`` the relevant document's tokens (METHOD.md section 2). From the same pass
come the mass on all distractors (summed), on the largest single distractor, on the
attention sink (the first ``sink`` positions), on everything else, and on each named
span of the prompts (``LabeledPrompt(spans=...)``: the question, the instructions, ...);
each is averaged over examples.

Which query rows? (``query=``)
    * ``"response"`` (default, as the authors' code): the response tokens' own
      positions. Excludes the last prompt token, includes the last response token.
    * ``"predict"``: the positions that *predict* the response tokens, one to the left
      (the last prompt token up to the second-to-last response token).
    * ``"last"``: the final prompt token only (no response needed).

Memory and time (``scores_from=``): by default (``"auto"``) the pass runs under
:func:`focuslens.model.fused.fused_attention`, so no layer builds its ``n x n`` pattern,
and the masses come from the scored rows' (rotated) queries and the keys
(:func:`focuslens.scores.spanmass.span_mass_from_keys`): the cost of a fused forward
pass. A layer with a hook on its attention scores or pattern (split-softmax, PASTA)
runs TransformerLens's attention and is read from ``hook_pattern`` instead, and so is
every layer of a model whose attention the fused path does not reproduce, or of a
``TransformerBridge``. ``"pattern"`` reads every layer's pattern (TransformerLens's own
attention). Either way only ``[batch, n_heads, n_query_rows, n_spans]`` is kept per
layer, never a cache of full patterns, and the numbers agree to 1e-5. Prompts are
padded on the right, which leaves every real token's attention exactly as in an
unbatched pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import ExitStack
from functools import partial

import torch

from focuslens.model.fused import fused_attention
from focuslens.model.hooks import hooks, layer_hooks
from focuslens.model.loading import ensure_backend, qk_points
from focuslens.model.prefill import ScoresFrom
from focuslens.prompts.batch import PromptBatch, batches, pad_token_id, query_rows
from focuslens.prompts.spans import LabeledPrompt
from focuslens.prompts.tokens import TokenizedPrompt
from focuslens.scores.reduce import (
    FIRST_DISTRACTOR,
    named_masks,
    prepare,
    reduce_hook,
    reduce_masses,
    span_mask_batch,
    span_names,
)
from focuslens.scores.result import ContextualScores
from focuslens.scores.spanmass import (
    BatchKeysCollector,
    resolve_routes,
    route_name,
    span_labels,
)
from focuslens.typing import Model, QueryRows


def _batch_masses(
    model: Model,
    batch: PromptBatch,
    routes: list[str],
    query: QueryRows,
    sink: int,
    n_dis: int,
    names: list[str],
) -> torch.Tensor:
    """``[batch, n_layers, n_heads, 3 + n_dis + len(names)]`` masses of one padded batch,
    averaged over each prompt's rows; each layer read the way ``routes`` says."""
    n_layers = model.cfg.n_layers
    per_layer: dict[int, torch.Tensor] = {}
    pattern_layers = [layer for layer in range(n_layers) if routes[layer] == "pattern"]
    keys_layers = [layer for layer in range(n_layers) if routes[layer] == "keys"]
    rows, row_mask = batch.rows(query)
    masks = span_mask_batch(batch, sink, n_dis, names)
    fwd_hooks = layer_hooks(
        pattern_layers,
        "hook_pattern",
        partial(reduce_hook, out=per_layer, args=(rows, row_mask, masks)),
    )
    keys = None
    if keys_layers:
        keys = BatchKeysCollector(
            model=model,
            layers=keys_layers,
            rows=[torch.tensor(query_rows(tp, query), dtype=torch.long) for tp in batch.prompts],
            labels=[span_labels(tp, sink) for tp in batch.prompts],
            n_masks=FIRST_DISTRACTOR + n_dis,
            extra=[named_masks(tp, names, len(tp)) for tp in batch.prompts] if names else None,
        )
        fwd_hooks += keys.fwd_hooks()
    device = next(model.parameters()).device
    with torch.no_grad(), ExitStack() as stack:
        if keys_layers:
            stack.enter_context(fused_attention(model))
        stack.enter_context(hooks(model, fwd_hooks))
        model(batch.tokens.to(device), return_type=None)
    if keys is not None:
        per_layer.update(keys.out)
    if sorted(per_layer) != list(range(n_layers)):
        raise RuntimeError(
            f"the attention hooks fired for layers {sorted(per_layer)}, expected "
            f"0..{n_layers - 1}; this backend does not expose attention the way focuslens expects"
        )
    return torch.stack([per_layer[layer] for layer in range(n_layers)], dim=1)


def contextual_scores(
    model: Model,
    prompts: Iterable[LabeledPrompt | TokenizedPrompt],
    *,
    query: QueryRows = "response",
    sink: int = 2,
    batch_size: int = 8,
    prepend_bos: bool | None = None,
    require_relevant: bool = True,
    progress: bool = False,
    chunk_size: int | None = None,
    max_memory: int | float | str | None = None,
    scores_from: ScoresFrom = "auto",
) -> ContextualScores:
    """Attention mass of each head on the relevant span, distractors and sink.

    Args:
        model: A ``HookedTransformer`` (or a ``TransformerBridge`` in compatibility mode).
        prompts: Labelled prompts; with ``query="response"`` or ``"predict"`` each needs a
            ``response``. A :class:`~focuslens.prompts.tokens.TokenizedPrompt` is scored on its
            own token ids (e.g. a prompt followed by the exact tokens a model generated,
            which re-tokenising the decoded text need not reproduce).
        query: Which query rows to average over (see the module docstring).
        sink: Number of leading positions counted as the attention sink.
        batch_size: Prompts per forward pass (right-padded; results do not depend on it).
        prepend_bos: Override the model's ``default_prepend_bos``.
        require_relevant: Refuse prompts without a relevant span (default). When False,
            their ``relevant`` score is NaN and means skip them.
        progress: Show a progress bar over batches.
        chunk_size: For long prompts: run each prompt alone in chunks of this many tokens
            through the KV cache (:func:`focuslens.scores.chunked.chunked_contextual_scores`), so
            no layer holds more than ``chunk_size x n`` attention scores. Same numbers;
            ``batch_size`` does not apply. ``None`` (default): one pass per batch.
        max_memory: Instead of ``chunk_size``: a memory budget (bytes or ``"8GiB"``) from
            which the chunk size is picked.
        scores_from: ``"auto"`` (default: fused attention, masses from queries and keys,
            patterns only where a hook needs them), ``"keys"`` (refused where it would not
            match) or ``"pattern"`` (every layer's pattern); see the module docstring.

    Returns:
        :class:`ContextualScores`, each table ``[n_layers, n_heads]``.

    Example:
        >>> import focuslens
        >>> model = focuslens.load_demo_model()
        >>> prompts = focuslens.tasks.synthetic_retrieval(8, n_documents=8, seed=0)
        >>> scores = focuslens.contextual_scores(model, prompts)
        >>> scores.relevant.shape == (model.cfg.n_layers, model.cfg.n_heads)
        True
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    ensure_backend(model, (*qk_points(model), "hook_pattern", "hook_attn_scores"))
    if chunk_size is not None or max_memory is not None:
        from focuslens.scores.chunked import chunked_contextual_scores

        return chunked_contextual_scores(
            model,
            prompts,
            chunk_size=chunk_size,
            max_memory=max_memory,
            scores_from=scores_from,
            query=query,
            sink=sink,
            prepend_bos=prepend_bos,
            require_relevant=require_relevant,
            progress=progress,
        )
    tps = prepare(
        model,
        prompts,
        query=query,
        sink=sink,
        prepend_bos=prepend_bos,
        require_relevant=require_relevant,
    )
    routes = resolve_routes(model, scores_from, one_pass=True)
    n_dis_all = max((len(tp.distractors) for tp in tps), default=0)
    names = span_names(tps)
    chunks = batches(tps, batch_size, pad_token_id(model))
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(
            chunks, desc="contextual scores", unit="batch", total=-(-len(tps) // batch_size)
        )
    results = [
        _batch_masses(model, batch, routes, query, sink, n_dis_all, names) for _, batch in chunks
    ]
    per_example = reduce_masses(torch.cat(results), tps, names)
    meta = {
        "model": getattr(model.cfg, "model_name", None),
        "n_examples": len(tps),
        "scores_from": route_name(routes),
    }
    return ContextualScores.from_per_example(
        per_example, query=query, n_sink=sink, meta=meta, span_names=tuple(names)
    )


__all__ = [
    "contextual_scores",
]
